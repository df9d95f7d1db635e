//! Keeping the derived state in line with the items: post-processing
//! refreshes, the index they feed, graph (re)builds, and the gallery's
//! maintenance worker, the one thread that runs them in the background.
//!
//! Every graph build starts the same way (`begin_rebuild`, under the
//! writer lock, so each later insert lands in the index's pending list)
//! and ends in `AnnIndex::install_graph`. A refresh that re-indexes most
//! vectors builds inline, still under the writer lock, because its new
//! vectors (and a new projection) must switch together with the graph;
//! every other build (first graph past the exact limit, tombstones) runs
//! on the worker, which shutdown joins (`Galleries::shutdown`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::post::Snapshot;
use super::state::State;
use super::{persist, projection, same_space, Gallery, GalleryError, Writing};
use crate::index::{AnnIndex, Vector};
use crate::rerank::RerankError;

enum Job {
    /// Refresh the post-processing state, after the debounce.
    Refresh,
    /// Build a graph over these live points and swap it in; the rebuild
    /// was begun (`begin_rebuild`) by whoever sent it.
    Build(Vec<(u64, Vector)>),
}

/// The gallery's maintenance thread, once started.
#[derive(Default)]
pub(super) struct Worker {
    /// Dropping the sender stops the thread once the jobs sent are done.
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Hands `job` to the thread; gives it back when there is none.
    fn send(&self, job: Job) -> Result<(), Job> {
        match self.tx.lock().as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

/// The worker's loop: refreshes wait `debounce` after the first request
/// so that a burst of writes shares one; builds run as they come.
fn run(
    rx: mpsc::Receiver<Job>,
    gallery: Weak<Gallery>,
    index: Arc<AnnIndex>,
    name: String,
    debounce: Duration,
) {
    let mut refresh_due: Option<Instant> = None;
    loop {
        let job = match refresh_due {
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    refresh_due = None;
                    let Some(g) = gallery.upgrade() else { return };
                    if let Err(e) = g.refresh_post() {
                        tracing::warn!(gallery = %name, error = %e, "post-processing refresh failed");
                    }
                    continue;
                }
                // Stopped: whoever stopped it refreshes if it needs to.
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        match job {
            Job::Refresh => {
                refresh_due.get_or_insert_with(|| Instant::now() + debounce);
            }
            Job::Build(live) => build(&index, &live, &name),
        }
    }
}

/// The second half of a rebuild begun elsewhere.
fn build(index: &AnnIndex, live: &[(u64, Vector)], gallery: &str) {
    let t = Instant::now();
    index.finish_rebuild(live);
    tracing::info!(
        gallery,
        points = live.len(),
        ms = t.elapsed().as_millis() as u64,
        "index built"
    );
}

impl Gallery {
    /// Starts the maintenance worker.
    pub(super) fn start_worker(self: &Arc<Self>) {
        let (tx, rx) = mpsc::channel::<Job>();
        let weak: Weak<Self> = Arc::downgrade(self);
        let (index, name) = (self.index.clone(), self.name.clone());
        let debounce = self.post_cfg.debounce;
        let spawned = std::thread::Builder::new()
            .name(format!("maintain-{name}"))
            .spawn(move || run(rx, weak, index, name, debounce));
        match spawned {
            Ok(handle) => {
                *self.worker.tx.lock() = Some(tx);
                *self.worker.thread.lock() = Some(handle);
            }
            Err(e) => tracing::warn!(gallery = %self.name, error = %e, "no maintenance thread"),
        }
    }

    /// Stops the worker: it finishes the jobs already sent (a graph build
    /// included) but not a pending refresh. Join the handle to wait for
    /// it, holding none of the gallery's locks.
    pub(super) fn stop_worker(&self) -> Option<JoinHandle<()>> {
        drop(self.worker.tx.lock().take());
        self.worker.thread.lock().take()
    }

    /// Asks the worker for a refresh (none without a worker).
    pub(super) fn request_refresh(&self) {
        let _ = self.worker.send(Job::Refresh);
    }

    /// Brings neighbour lists and DBA vectors up to date with the live
    /// gallery (incrementally from the previous snapshot where it can),
    /// re-indexes the changed DBA vectors and publishes the snapshot.
    /// Blocking; the worker calls it, tests may too.
    pub fn refresh_post(&self) -> Result<(), RerankError> {
        let _one = self.refreshing.lock();
        let t = Instant::now();
        let (items, writes_at) = {
            let state = self.state.read();
            let items: Vec<(u64, Vector)> =
                state.entries().map(|e| (e.seq, e.vector.clone())).collect();
            (items, state.writes())
        };
        let prev = self.post.read().clone();
        let generation = prev.as_ref().map_or(0, |s| s.generation) + 1;
        let (snap, changed) = match &prev {
            Some(p) => p.update(&items, self.dims(), &self.post_cfg, generation)?,
            None => Snapshot::compute_all(&items, self.dims(), &self.post_cfg, generation)?,
        };
        let reindexed = self.install(Arc::new(snap), &changed, writes_at)?;
        crate::telemetry::metrics()
            .refresh_seconds
            .observe(t.elapsed().as_secs_f64());
        tracing::info!(gallery = %self.name, items = items.len(), generation,
            reindexed, ms = t.elapsed().as_millis() as u64,
            "post-processing refreshed");
        Ok(())
    }

    /// `refresh_post` unless the snapshot is current; whether it ran.
    pub(super) fn refresh_if_stale(&self) -> Result<bool, RerankError> {
        let stale = self.state.read().stale();
        if stale == 0 && self.post_snapshot().is_some() {
            return Ok(false);
        }
        self.refresh_post().map(|()| true)
    }

    /// Publishes `snap` (taken when the state had seen `writes_at`
    /// changes) and makes the index hold what it says: the DBA vectors of
    /// the `changed` rows, or, when the snapshot brings a new projection,
    /// every live item in the new space (items added since the snapshot
    /// was taken projected now). Each new vector gets a fresh point:
    /// inserted into the graph before the state switches to it, so
    /// searches see the old or the new vector, never neither. When most
    /// vectors change the graph is rebuilt instead (blocking writers, not
    /// searches). Items removed since the snapshot are skipped. Returns
    /// how many vectors were re-indexed.
    fn install(
        &self,
        snap: Arc<Snapshot>,
        changed: &[usize],
        writes_at: u64,
    ) -> Result<usize, RerankError> {
        let w = self.writing();
        let dims = self.dims();
        let row_vector = |r: usize| -> Option<Vector> {
            let ix = snap.indexed()?;
            Some(projection::pad(ix.row(r).iter().copied(), dims).into())
        };
        let new_space = !same_space(self.state.read().projection(), snap.projection.as_ref());
        let updates: Vec<(u64, Vector)> = if new_space {
            let state = self.state.read();
            state
                .entries()
                .map(|e| {
                    let v = match (snap.row_of.get(&e.seq), &snap.projection) {
                        (Some(&r), _) if snap.indexed().is_some() => row_vector(r),
                        (_, Some(p)) => Some(p.apply(&e.vector)?.into()),
                        _ => None,
                    };
                    Ok((e.seq, v.unwrap_or_else(|| e.vector.clone())))
                })
                .collect::<Result<_, RerankError>>()?
        } else if snap.dba.is_some() {
            changed
                .iter()
                .filter_map(|&r| Some((snap.seqs[r], row_vector(r)?)))
                .collect()
        } else {
            Vec::new()
        };
        let publish = |state: &mut State| {
            state.publish(snap.projection.clone(), writes_at);
            *self.post.write() = Some(snap.clone());
        };
        if updates.is_empty() {
            publish(&mut self.state.write());
            return Ok(0);
        }
        let reindexed = updates.len();
        let first = self.state.write().reserve_points(updates.len());
        // (seq, its fresh point, vector)
        let updates: Vec<(u64, u64, Vector)> = updates
            .into_iter()
            .zip(first..)
            .map(|((seq, v), point)| (seq, point, v))
            .collect();
        let count = self.len();
        let want_graph = count > self.index.params().exact_limit;
        let live = (want_graph && (!self.index.has_graph() || reindexed * 4 > count))
            .then(|| {
                let new = updates
                    .iter()
                    .map(|(seq, point, v)| (*seq, (*point, v.clone())))
                    .collect();
                self.begin_rebuild(&w, &new)
            })
            .flatten();
        let built = match live {
            Some(live) => Some(self.index.build_graph(&live)),
            None => {
                let points: Vec<(u64, Vector)> = updates
                    .iter()
                    .map(|(_, point, v)| (*point, v.clone()))
                    .collect();
                self.index.insert_many(&points);
                None
            }
        };
        let mut state = self.state.write();
        for (seq, point, v) in updates {
            state.repoint(seq, point, v);
        }
        if new_space {
            state.compact_scan();
        }
        if let Some(built) = built {
            self.index.install_graph(built);
        }
        publish(&mut state);
        drop(state);
        self.maintain_index(&w);
        Ok(reindexed)
    }

    /// Starts a graph rebuild: marks it begun and returns the points to
    /// build from (the live items, `new` (seq -> point, vector) standing
    /// in for the items it names); None when one is already running.
    /// Under the writer lock, so that every later insert lands in the
    /// index's pending list, which the build's install replays.
    fn begin_rebuild(
        &self,
        _w: &Writing<'_>,
        new: &HashMap<u64, (u64, Vector)>,
    ) -> Option<Vec<(u64, Vector)>> {
        let state = self.state.read();
        self.index.begin_rebuild().then(|| state.live_points(new))
    }

    pub(super) fn maintain_index_now(&self) {
        let w = self.writing();
        self.maintain_index(&w);
    }

    /// Keeps the graph in line with the gallery: builds one on the worker
    /// once the gallery passes the exact limit (searches stay exact
    /// meanwhile), rebuilds it once tombstones pass the threshold, drops it
    /// when the gallery shrinks well below the limit.
    pub(super) fn maintain_index(&self, w: &Writing<'_>) {
        let stats = self.stats();
        let p = self.index.params();
        if stats.index.rebuilding {
            return;
        }
        if stats.count <= p.exact_limit {
            if stats.index.built && stats.count <= p.exact_limit / 2 {
                self.index.clear();
            }
            return;
        }
        let worn = stats.tombstones >= 64
            && (stats.tombstones as f64) >= p.rebuild_tombstone_ratio * stats.count as f64;
        if stats.index.built && !worn {
            return;
        }
        let derived = self.post_cfg.dba || self.post_cfg.projection.is_some();
        if !stats.index.built && derived && stats.stale_items > 0 {
            // The pending refresh builds it over the DBA or projected
            // vectors (a graph of the raw vectors would be replaced).
            return;
        }
        let Some(live) = self.begin_rebuild(w, &HashMap::new()) else {
            return;
        };
        // Without a worker (stopped), here: a begun rebuild must finish.
        if let Err(Job::Build(live)) = self.worker.send(Job::Build(live)) {
            build(&self.index, &live, &self.name);
        }
    }

    /// Saves the derived state (after catching up with the writes so far)
    /// so that the next start does not recompute it. Blocking.
    pub fn save(&self, dir: &Path) -> Result<(), GalleryError> {
        self.refresh_if_stale()?;
        let _one = self.refreshing.lock();
        let _w = self.writing();
        let Some(snap) = self.post_snapshot() else {
            return Ok(());
        };
        let (points, next_point) = {
            let state = self.state.read();
            (state.points_of(&snap.seqs), state.next_point())
        };
        let graph = self.index.graph();
        persist::save(
            dir,
            &snap,
            &points,
            next_point,
            graph.as_ref().map(|(g, c)| (&**g, c.as_ref())),
            &self.post_cfg,
            self.index.params(),
        )?;
        Ok(())
    }
}
