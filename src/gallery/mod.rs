//! Named galleries: the durable store plus the in-memory state (items,
//! their unit descriptors, the ANN index) derived from it.
//!
//! Writes go to the store first, in one transaction per call; only after
//! it commits is the in-memory state changed and the caller answered.
//!
//! Post-processing state (neighbour lists, DBA vectors) lives in `post`
//! and is refreshed in the background after writes; `online` runs the
//! per-request stages. The derived state (that and the HNSW graph) is
//! saved at shutdown and reloaded at start where it matches the store
//! (`persist`), else recomputed from the store.

pub mod limits;
pub mod online;
pub mod page;
pub mod persist;
pub mod post;
pub mod projection;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::index::{exact, AnnIndex, HnswParams, IndexStatus, Vector};
use crate::store::{Change, GalleryMeta, ItemRecord, Store, StoreError};

use persist::{PersistError, Saved};
use post::{PostConfig, Snapshot};
use projection::Projection;

pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("gallery {0:?} does not exist")]
    NoGallery(String),
    #[error("gallery {0:?} already exists")]
    Exists(String),
    #[error("item {id:?} is not in gallery {gallery:?}")]
    NoItem { gallery: String, id: String },
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "descriptor has {got} dimensions; gallery {gallery:?} holds {want}-dimensional descriptors"
    )]
    Dims {
        gallery: String,
        got: usize,
        want: usize,
    },
    #[error("descriptor is zero or not finite")]
    Degenerate,
    #[error("page_token {0:?} was not issued by ListItems; pass the previous page's next_page_token, or none for the first page")]
    PageToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("post-processing state: {0}")]
    Post(#[from] crate::rerank::RerankError),
    #[error("saving the derived state: {0}")]
    Persist(#[from] PersistError),
}

/// A stored item as searches see it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub metadata: Metadata,
    /// The raw unit descriptor (what GetItem returns).
    pub vector: Vector,
    /// What the index holds: the DBA vector once a refresh has computed
    /// it, the raw descriptor before that or with DBA off.
    pub indexed: Vector,
    /// The index point holding `indexed` (a new one each time it changes).
    pub point: u64,
}

/// One item to add; `vector` must already be unit length.
pub struct NewItem {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub seq: u64,
    pub distance: f32,
    pub metadata: Metadata,
}

#[derive(Default)]
struct State {
    items: BTreeMap<String, Entry>,
    by_seq: HashMap<u64, String>,
    /// Live index point -> item seq.
    by_point: HashMap<u64, u64>,
    next_seq: u64,
    /// The first point id never issued. Saved at shutdown with the graph
    /// (`persist`), whose dead points may lie above every live one.
    next_point: u64,
    /// The projection every `indexed` vector is in (None: raw space);
    /// switched together with the vectors, under this lock.
    projection: Option<Arc<Projection>>,
}

impl State {
    /// Reserves `n` fresh point ids; returns the first.
    fn reserve_points(&mut self, n: usize) -> u64 {
        let first = self.next_point;
        self.next_point += n as u64;
        first
    }

    /// Gives `seq`'s item (if still live) the indexed vector `v` under
    /// the reserved `point`.
    fn repoint(&mut self, seq: u64, point: u64, v: Vector) {
        let Some(id) = self.by_seq.get(&seq) else {
            return;
        };
        if let Some(e) = self.items.get_mut(id) {
            self.by_point.remove(&e.point);
            e.point = point;
            e.indexed = v;
            self.by_point.insert(point, seq);
        }
    }

    /// Live (point, indexed vector) pairs: what a graph build takes.
    fn live_points(&self) -> Vec<(u64, Vector)> {
        self.items
            .values()
            .map(|e| (e.point, e.indexed.clone()))
            .collect()
    }
}

pub struct Gallery {
    name: String,
    meta: GalleryMeta,
    store: Arc<Store>,
    state: RwLock<State>,
    index: Arc<AnnIndex>,
    /// Serialises writers so store order and memory order agree.
    writer: Mutex<()>,
    post_cfg: PostConfig,
    post: RwLock<Option<Arc<Snapshot>>>,
    /// Items added, replaced or removed since the current snapshot was
    /// taken; changed under the state lock so it matches the snapshot.
    stale: AtomicU64,
    /// One refresh at a time.
    refreshing: Mutex<()>,
    /// Wakes the background refresher; dropping it stops the thread.
    refresh_tx: Mutex<Option<mpsc::Sender<()>>>,
}

/// What a search asks for, besides the query vector.
pub struct SearchParams<'a> {
    pub k: usize,
    pub ef: usize,
    pub exact: bool,
    pub filter: &'a Metadata,
    /// An item to leave out (the query itself, for search-by-id).
    pub exclude: Option<&'a str>,
    /// The projection the query was projected with (None: raw space).
    pub space: Option<&'a Arc<Projection>>,
}

/// The gallery's projection is no longer the one a query was projected
/// with (a refresh refitted it meanwhile): project again and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gallery's projection was refitted during the search")]
pub struct SpaceChanged;

/// Whether two optional projections are the same fit.
pub fn same_space(a: Option<&Arc<Projection>>, b: Option<&Arc<Projection>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct GalleryStats {
    pub name: String,
    pub count: usize,
    pub meta: GalleryMeta,
    pub index: IndexStatus,
    pub tombstones: usize,
    /// Changes not yet reflected in neighbour lists / DBA vectors.
    pub stale_items: u64,
    /// Generation of the current post-processing snapshot (0: none yet).
    pub post_generation: u64,
    pub dba: bool,
    /// Components of the fitted projection in use (0: none).
    pub projection_components: usize,
}

impl Gallery {
    /// Loads the gallery's items from the store. `saved`, the state saved
    /// at the last shutdown, is used where it matches the store (see
    /// `persist`); the caller refreshes what it does not cover.
    fn open(
        name: String,
        meta: GalleryMeta,
        store: Arc<Store>,
        params: HnswParams,
        post_cfg: PostConfig,
        saved: Option<Saved>,
    ) -> Result<Self, GalleryError> {
        let records = store.load_items(&name)?;
        let mut state = State::default();
        for (id, rec) in records {
            if rec.descriptor.len() != meta.dims as usize {
                return Err(StoreError::Corrupt(format!(
                    "item {id:?} of {name:?} has {} dims",
                    rec.descriptor.len()
                ))
                .into());
            }
            let vector: Vector = rec.descriptor.into();
            state.next_seq = state.next_seq.max(rec.seq + 1);
            state.by_seq.insert(rec.seq, id.clone());
            state.items.insert(
                id,
                Entry {
                    seq: rec.seq,
                    metadata: rec.metadata,
                    indexed: vector.clone(),
                    vector,
                    point: u64::MAX,
                },
            );
        }
        let saved = saved.filter(|s| {
            let ok = saved_matches(&s.snapshot, &state);
            if !ok {
                tracing::warn!(gallery = %name, "saved state does not match the store; recomputing");
            }
            ok
        });
        let (snapshot, graph) = match saved {
            Some(s) => {
                let snap = s.snapshot;
                let above_live = s
                    .points
                    .iter()
                    .filter(|&&p| p != u64::MAX)
                    .max()
                    .map_or(0, |m| m + 1);
                state.next_point = s.next_point.max(above_live);
                // Live rows take back their point and indexed vector.
                for (row, (&seq, &point)) in snap.seqs.iter().zip(&s.points).enumerate() {
                    let Some(id) = state.by_seq.get(&seq).cloned() else {
                        continue;
                    };
                    if let (Some(e), true) = (state.items.get_mut(&id), point != u64::MAX) {
                        e.point = point;
                        if let Some(dba) = &snap.dba {
                            e.indexed = dba.row(row).to_vec().into();
                        }
                        state.by_point.insert(point, seq);
                    }
                }
                (Some(Arc::new(snap)), s.graph)
            }
            None => (None, None),
        };
        // Everything else is new to the index.
        let mut unindexed = Vec::new();
        let State {
            items,
            by_point,
            next_point,
            ..
        } = &mut state;
        for e in items.values_mut().filter(|e| e.point == u64::MAX) {
            e.point = *next_point;
            *next_point += 1;
            by_point.insert(e.point, e.seq);
            unindexed.push((e.point, e.indexed.clone()));
        }
        let in_snapshot = snapshot.as_ref().map_or(0, |s| {
            s.seqs
                .iter()
                .filter(|q| state.by_seq.contains_key(q))
                .count()
        });
        let stale = (state.items.len() - in_snapshot
            + snapshot.as_ref().map_or(0, |s| s.len() - in_snapshot)) as u64;
        // Without a saved graph, the first refresh (over the DBA vectors)
        // or `maintain_index` builds one, only past the exact limit.
        let index = Arc::new(match graph {
            Some(g) => AnnIndex::with_graph(params, g),
            None => AnnIndex::empty(params),
        });
        index.insert_many(&unindexed);
        Ok(Self {
            name,
            meta,
            store,
            state: RwLock::new(state),
            index,
            writer: Mutex::new(()),
            post_cfg,
            post: RwLock::new(snapshot),
            stale: AtomicU64::new(stale),
            refreshing: Mutex::new(()),
            refresh_tx: Mutex::new(None),
        })
    }

    /// Saves the derived state (after catching up with the writes so far)
    /// so that the next start does not recompute it. Blocking.
    pub fn save(&self, dir: &Path) -> Result<(), GalleryError> {
        self.refresh_if_stale()?;
        let _one = self.refreshing.lock();
        let _w = self.writer.lock();
        let Some(snap) = self.post_snapshot() else {
            return Ok(());
        };
        let (points, next_point): (Vec<u64>, u64) = {
            let state = self.state.read();
            let points = snap
                .seqs
                .iter()
                .map(|seq| {
                    state
                        .by_seq
                        .get(seq)
                        .and_then(|id| state.items.get(id))
                        .map_or(u64::MAX, |e| e.point)
                })
                .collect();
            (points, state.next_point)
        };
        let graph = self.index.graph();
        persist::save(
            dir,
            &snap,
            &points,
            next_point,
            graph.as_deref(),
            &self.post_cfg,
            self.index.params(),
        )?;
        Ok(())
    }

    /// Starts the background refresher (and a refresh if state is stale).
    fn start_refresher(self: &Arc<Self>) {
        let (tx, rx) = mpsc::channel::<()>();
        let weak: Weak<Self> = Arc::downgrade(self);
        let debounce = self.post_cfg.debounce;
        let name = self.name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("refresh-{name}"))
            .spawn(move || {
                // Ends when the gallery (and so the sender) is dropped.
                while rx.recv().is_ok() {
                    std::thread::sleep(debounce);
                    while rx.try_recv().is_ok() {}
                    let Some(g) = weak.upgrade() else { break };
                    if let Err(e) = g.refresh_post() {
                        tracing::warn!(gallery = %name, error = %e, "post-processing refresh failed");
                    }
                }
            });
        match spawned {
            Ok(_) => {
                if self.stale.load(Ordering::Acquire) > 0 {
                    let _ = tx.send(());
                }
                *self.refresh_tx.lock() = Some(tx);
            }
            Err(e) => tracing::warn!(gallery = %self.name, error = %e, "no refresher thread"),
        }
    }

    fn mark_stale(&self) {
        if let Some(tx) = self.refresh_tx.lock().as_ref() {
            let _ = tx.send(());
        }
    }

    /// The current post-processing snapshot, if one was computed.
    pub fn post_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.post.read().clone()
    }

    pub fn post_config(&self) -> &PostConfig {
        &self.post_cfg
    }

    /// Brings neighbour lists and DBA vectors up to date with the live
    /// gallery (incrementally from the previous snapshot where it can),
    /// re-indexes the changed DBA vectors and publishes the snapshot.
    /// Blocking; the refresher calls it, tests may too.
    pub fn refresh_post(&self) -> Result<(), crate::rerank::RerankError> {
        let _one = self.refreshing.lock();
        let t = std::time::Instant::now();
        let state = self.state.read();
        let items: Vec<(u64, Vector)> = state
            .items
            .values()
            .map(|e| (e.seq, e.vector.clone()))
            .collect();
        let stale_at = self.stale.load(Ordering::Acquire);
        drop(state);
        let prev = self.post.read().clone();
        let generation = prev.as_ref().map_or(0, |s| s.generation) + 1;
        let (snap, changed) = match &prev {
            Some(p) => p.update(&items, self.dims(), &self.post_cfg, generation)?,
            None => Snapshot::compute_all(&items, self.dims(), &self.post_cfg, generation)?,
        };
        let reindexed = self.install(Arc::new(snap), &changed)?;
        self.stale.fetch_sub(stale_at, Ordering::AcqRel);
        crate::telemetry::metrics()
            .refresh_seconds
            .observe(t.elapsed().as_secs_f64());
        tracing::info!(gallery = %self.name, items = items.len(), generation,
            reindexed, ms = t.elapsed().as_millis() as u64,
            "post-processing refreshed");
        Ok(())
    }

    /// `refresh_post` unless the snapshot is current; whether it ran.
    fn refresh_if_stale(&self) -> Result<bool, crate::rerank::RerankError> {
        if self.stale.load(Ordering::Acquire) == 0 && self.post_snapshot().is_some() {
            return Ok(false);
        }
        self.refresh_post().map(|()| true)
    }

    /// Publishes `snap` and makes the index hold what it says: the DBA
    /// vectors of the `changed` rows, or, when the snapshot brings a new
    /// projection, every live item in the new space (items added since
    /// the snapshot was taken projected now). Each new vector gets a fresh
    /// point: inserted into the graph before the state switches to it, so
    /// searches see the old or the new vector, never neither. When most
    /// vectors change the graph is rebuilt instead (blocking writers, not
    /// searches). Items removed since the snapshot are skipped. Returns how
    /// many vectors were re-indexed.
    fn install(
        &self,
        snap: Arc<Snapshot>,
        changed: &[usize],
    ) -> Result<usize, crate::rerank::RerankError> {
        let _w = self.writer.lock();
        let dims = self.dims();
        let row_vector = |r: usize| -> Option<Vector> {
            let ix = snap.indexed()?;
            Some(projection::pad(ix.row(r).iter().copied(), dims).into())
        };
        let new_space = !same_space(
            self.state.read().projection.as_ref(),
            snap.projection.as_ref(),
        );
        let updates: Vec<(u64, Vector)> = if new_space {
            let state = self.state.read();
            state
                .items
                .values()
                .map(|e| {
                    let v = match (snap.row_of.get(&e.seq), &snap.projection) {
                        (Some(&r), _) if snap.indexed().is_some() => row_vector(r),
                        (_, Some(p)) => Some(p.apply(&e.vector)?.into()),
                        _ => None,
                    };
                    Ok((e.seq, v.unwrap_or_else(|| e.vector.clone())))
                })
                .collect::<Result<_, crate::rerank::RerankError>>()?
        } else if snap.dba.is_some() {
            changed
                .iter()
                .filter_map(|&r| Some((snap.seqs[r], row_vector(r)?)))
                .collect()
        } else {
            Vec::new()
        };
        let publish = |state: &mut State| {
            state.projection = snap.projection.clone();
            *self.post.write() = Some(snap.clone());
        };
        if updates.is_empty() {
            publish(&mut self.state.write());
            return Ok(0);
        }
        let reindexed = updates.len();
        let first = self.state.write().reserve_points(updates.len());
        let count = self.len();
        let want_graph = count > self.index.params().exact_limit;
        let rebuild = want_graph
            && (!self.index.has_graph() || updates.len() * 4 > count)
            && self.index.begin_rebuild();
        if rebuild {
            let live: Vec<(u64, Vector)> = {
                let state = self.state.read();
                let new: HashMap<u64, usize> =
                    updates.iter().enumerate().map(|(t, u)| (u.0, t)).collect();
                state
                    .items
                    .values()
                    .map(|e| match new.get(&e.seq) {
                        Some(&t) => (first + t as u64, updates[t].1.clone()),
                        None => (e.point, e.indexed.clone()),
                    })
                    .collect()
            };
            let graph = self.index.build_graph(&live);
            let mut state = self.state.write();
            for (t, (seq, v)) in updates.into_iter().enumerate() {
                state.repoint(seq, first + t as u64, v);
            }
            self.index.install_graph(graph);
            publish(&mut state);
        } else {
            let points: Vec<(u64, Vector)> = updates
                .iter()
                .enumerate()
                .map(|(t, (_, v))| (first + t as u64, v.clone()))
                .collect();
            self.index.insert_many(&points);
            let mut state = self.state.write();
            for (t, (seq, v)) in updates.into_iter().enumerate() {
                state.repoint(seq, first + t as u64, v);
            }
            publish(&mut state);
        }
        self.maintain_index();
        Ok(reindexed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn meta(&self) -> &GalleryMeta {
        &self.meta
    }

    pub fn dims(&self) -> usize {
        self.meta.dims as usize
    }

    /// Checks a descriptor against this gallery and returns it unit length.
    pub fn prepare(&self, v: &[f32]) -> Result<Vec<f32>, GalleryError> {
        if v.len() != self.dims() {
            return Err(GalleryError::Dims {
                gallery: self.name.clone(),
                got: v.len(),
                want: self.dims(),
            });
        }
        crate::index::distance::normalised(v).ok_or(GalleryError::Degenerate)
    }

    /// Adds or replaces items durably (one transaction); returns, per item,
    /// whether it replaced an existing one. Blocking: call off the executor.
    pub fn upsert(&self, items: Vec<NewItem>) -> Result<Vec<bool>, GalleryError> {
        self.upsert_with(items, &[])
    }

    /// `upsert`, storing thumbnails (item id, JPEG) in the same transaction.
    pub fn upsert_with(
        &self,
        items: Vec<NewItem>,
        thumbs: &[(&str, &[u8])],
    ) -> Result<Vec<bool>, GalleryError> {
        for it in &items {
            validate_id(&it.id)?;
            if it.vector.len() != self.dims() {
                return Err(GalleryError::Dims {
                    gallery: self.name.clone(),
                    got: it.vector.len(),
                    want: self.dims(),
                });
            }
        }
        let _w = self.writer.lock();
        let (first_seq, space) = {
            let state = self.state.read();
            (state.next_seq, state.projection.clone())
        };
        // In the index's space (the writer lock keeps it from changing).
        let indexed: Vec<Vector> = items
            .iter()
            .map(|it| match &space {
                Some(p) => p.apply(&it.vector).map(Vector::from),
                None => Ok(it.vector.clone().into()),
            })
            .collect::<Result<_, _>>()?;
        let records: Vec<ItemRecord> = items
            .iter()
            .enumerate()
            .map(|(i, it)| ItemRecord {
                seq: first_seq + i as u64,
                descriptor: it.vector.clone(),
                metadata: it.metadata.clone(),
            })
            .collect();
        let changes: Vec<Change> = items
            .iter()
            .zip(&records)
            .map(|(it, r)| Change::Put(&it.id, r))
            .collect();
        let replaced = self.store.write_with(&self.name, &changes, thumbs)?;
        drop(changes);

        let mut state = self.state.write();
        state.next_seq = first_seq + items.len() as u64;
        let n_items = items.len() as u64;
        let first_point = state.reserve_points(items.len());
        let mut new_points = Vec::with_capacity(items.len());
        for (((it, rec), point), indexed) in items
            .into_iter()
            .zip(records)
            .zip(first_point..)
            .zip(indexed)
        {
            let vector: Vector = rec.descriptor.into();
            if let Some(old) = state.items.insert(
                it.id.clone(),
                Entry {
                    seq: rec.seq,
                    metadata: rec.metadata,
                    vector,
                    indexed: indexed.clone(),
                    point,
                },
            ) {
                state.by_seq.remove(&old.seq);
                state.by_point.remove(&old.point);
            }
            state.by_seq.insert(rec.seq, it.id);
            state.by_point.insert(point, rec.seq);
            new_points.push((point, indexed));
        }
        self.index.insert_many(&new_points);
        self.stale.fetch_add(n_items, Ordering::AcqRel);
        drop(state);
        self.mark_stale();
        self.maintain_index();
        Ok(replaced)
    }

    /// Removes items durably; returns the ids that were not there.
    pub fn remove(&self, ids: &[String]) -> Result<Vec<String>, GalleryError> {
        let _w = self.writer.lock();
        let changes: Vec<Change> = ids.iter().map(|id| Change::Delete(id)).collect();
        let existed = self.store.write(&self.name, &changes)?;
        let mut state = self.state.write();
        let mut missing = Vec::new();
        for (id, was) in ids.iter().zip(existed) {
            if !was {
                missing.push(id.clone());
            } else if let Some(old) = state.items.remove(id) {
                state.by_seq.remove(&old.seq);
                state.by_point.remove(&old.point);
                self.stale.fetch_add(1, Ordering::AcqRel);
            }
        }
        drop(state);
        if missing.len() < ids.len() {
            self.mark_stale();
        }
        self.maintain_index();
        Ok(missing)
    }

    /// The thumbnail stored with item `id`, if any.
    pub fn thumbnail(&self, id: &str) -> Result<Option<Vec<u8>>, GalleryError> {
        Ok(self.store.thumbnail(&self.name, id)?)
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.state.read().items.get(id).cloned()
    }

    /// Items in id order after `after` (exclusive), at most `limit`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> (Vec<(String, Entry)>, bool) {
        use std::ops::Bound;
        let state = self.state.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut it = state.items.range::<str, _>((start, Bound::Unbounded));
        let page: Vec<_> = it
            .by_ref()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = it.next().is_some();
        (page, more)
    }

    pub fn len(&self) -> usize {
        self.state.read().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nearest items to the unit vector `q`, in the space `p.space`
    /// names (Err when the gallery is no longer in it). Blocking.
    pub fn search(&self, q: &[f32], p: &SearchParams<'_>) -> Result<Vec<Hit>, SpaceChanged> {
        let state = self.state.read();
        if !same_space(state.projection.as_ref(), p.space) {
            return Err(SpaceChanged);
        }
        let matches = |e: &Entry| p.filter.iter().all(|(k, v)| e.metadata.get(k) == Some(v));
        let wanted = p.k + usize::from(p.exclude.is_some());
        let use_graph = !p.exact && state.items.len() > self.index.params().exact_limit;
        let keep = |point: u64| {
            state
                .by_point
                .get(&point)
                .and_then(|seq| state.by_seq.get(seq))
                .and_then(|id| state.items.get(id))
                .is_some_and(&matches)
        };
        // Graph hits are points; map them to item seqs.
        let from_graph = use_graph
            .then(|| self.index.search(q, wanted, p.ef, &keep))
            .flatten()
            .map(|hits| {
                hits.into_iter()
                    .filter_map(|(point, d)| Some((*state.by_point.get(&point)?, d)))
                    .collect::<Vec<_>>()
            });
        // Small galleries, exact requests, and a graph still being built.
        let raw = from_graph.unwrap_or_else(|| {
            let cands = state
                .items
                .values()
                .filter(|e| matches(e))
                .map(|e| (e.seq, &e.indexed[..]));
            exact::top_k(q, cands, wanted)
        });
        Ok(raw
            .into_iter()
            .filter_map(|(seq, distance)| {
                let id = state.by_seq.get(&seq)?;
                if Some(id.as_str()) == p.exclude {
                    return None;
                }
                let e = state.items.get(id)?;
                Some(Hit {
                    id: id.clone(),
                    seq,
                    distance,
                    metadata: e.metadata.clone(),
                })
            })
            .take(p.k)
            .collect())
    }

    pub fn default_ef(&self) -> usize {
        self.index.default_ef()
    }

    pub fn stats(&self) -> GalleryStats {
        let count = self.len();
        let index = self.index.status();
        // Each lock taken alone: install holds the state lock while it
        // publishes a snapshot.
        let projection_components =
            (self.state.read().projection.as_ref()).map_or(0, |p| p.components());
        let post_generation = self.post.read().as_ref().map_or(0, |s| s.generation);
        GalleryStats {
            name: self.name.clone(),
            count,
            meta: self.meta.clone(),
            tombstones: index.points.saturating_sub(count),
            index,
            stale_items: self.stale.load(Ordering::Acquire),
            post_generation,
            dba: self.post_cfg.dba,
            projection_components,
        }
    }

    fn maintain_index_now(&self) {
        let _w = self.writer.lock();
        self.maintain_index();
    }

    /// Keeps the graph in line with the gallery: builds one in the
    /// background once the gallery passes the exact limit (searches stay
    /// exact meanwhile), rebuilds it once tombstones pass the threshold,
    /// drops it when the gallery shrinks well below the limit. Callers
    /// hold the writer lock, so no insert slips past the rebuild snapshot.
    fn maintain_index(&self) {
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
        // Snapshot under the state lock right after marking the rebuild, so
        // every later insert lands in the index's pending list instead.
        let state = self.state.read();
        if !self.index.begin_rebuild() {
            return;
        }
        let live = state.live_points();
        drop(state);
        let index = self.index.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            index.finish_rebuild(&live);
            tracing::info!(gallery = %name, points = live.len(), ms = t.elapsed().as_millis() as u64, "index built");
        });
    }
}

/// All galleries of one store.
pub struct Galleries {
    store: Arc<Store>,
    /// Where each gallery's derived state is saved at shutdown.
    index_dir: PathBuf,
    params: HnswParams,
    post: PostConfig,
    map: RwLock<BTreeMap<String, Arc<Gallery>>>,
}

impl Galleries {
    /// Opens the store and loads every gallery, with the derived state
    /// saved at the last shutdown where it matches (`index/` next to the
    /// store), else recomputed.
    pub fn open(path: &Path, params: HnswParams, post: PostConfig) -> Result<Self, GalleryError> {
        let store = Arc::new(Store::open(path)?);
        let index_dir = path.parent().unwrap_or(Path::new(".")).join("index");
        let mut map = BTreeMap::new();
        for (name, meta) in store.galleries()? {
            let t = std::time::Instant::now();
            let dir = index_dir.join(&name);
            let saved = persist::load(&dir, meta.dims as usize, &post, &params)
                .unwrap_or_else(|e| {
                    tracing::warn!(gallery = %name, error = %e, "saved state unusable; recomputing");
                    None
                });
            let g = Arc::new(Gallery::open(
                name.clone(),
                meta,
                store.clone(),
                params.clone(),
                post.clone(),
                saved,
            )?);
            // Before serving, so a restarted server answers as the batch
            // definition does; with a matching saved state only the
            // changes since it are applied.
            let restored = g.post_snapshot().is_some();
            if let Err(e) = g.refresh_if_stale() {
                tracing::warn!(gallery = %name, error = %e, "post-processing state not computed");
            }
            // Without DBA the refresh indexes nothing: build the graph of
            // a large gallery from the raw descriptors.
            g.maintain_index_now();
            g.start_refresher();
            tracing::info!(gallery = %name, items = g.len(), restored,
                ms = t.elapsed().as_millis() as u64, "gallery loaded");
            map.insert(name, g);
        }
        Ok(Self {
            store,
            index_dir,
            params,
            post,
            map: RwLock::new(map),
        })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Gallery>, GalleryError> {
        self.map
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| GalleryError::NoGallery(name.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Gallery>> {
        self.map.read().values().cloned().collect()
    }

    pub fn create(&self, name: &str, meta: GalleryMeta) -> Result<Arc<Gallery>, GalleryError> {
        validate_gallery_name(name)?;
        let mut map = self.map.write();
        if map.contains_key(name) {
            return Err(GalleryError::Exists(name.to_string()));
        }
        self.store
            .create_gallery(name, &meta)
            .map_err(|e| match e {
                StoreError::GalleryExists(n) => GalleryError::Exists(n),
                e => e.into(),
            })?;
        let g = Arc::new(Gallery::open(
            name.to_string(),
            meta,
            self.store.clone(),
            self.params.clone(),
            self.post.clone(),
            None,
        )?);
        g.start_refresher();
        map.insert(name.to_string(), g.clone());
        Ok(g)
    }

    /// Drops a gallery and its items; returns how many items it held.
    pub fn drop_gallery(&self, name: &str) -> Result<u64, GalleryError> {
        let mut map = self.map.write();
        let g = map
            .get(name)
            .cloned()
            .ok_or_else(|| GalleryError::NoGallery(name.to_string()))?;
        let _w = g.writer.lock();
        let n = self.store.drop_gallery(name)?;
        map.remove(name);
        let dir = self.index_dir.join(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "saved state of a dropped gallery left behind");
            }
        }
        Ok(n)
    }

    /// Saves every gallery's derived state for the next start (at
    /// shutdown, after the last request). A failure only costs that
    /// gallery a recomputation at the next start; it is logged and the
    /// others are still saved.
    pub fn save_all(&self) -> usize {
        let mut saved = 0;
        for g in self.list() {
            let t = std::time::Instant::now();
            match g.save(&self.index_dir.join(g.name())) {
                Ok(()) => {
                    saved += 1;
                    tracing::info!(gallery = %g.name(), items = g.len(),
                        ms = t.elapsed().as_millis() as u64, "derived state saved");
                }
                Err(e) => {
                    tracing::warn!(gallery = %g.name(), error = %e, "derived state not saved")
                }
            }
        }
        saved
    }
}

/// Whether a saved snapshot belongs to this gallery's store: every row
/// whose item is still live holds that item's descriptor bit for bit (a
/// gallery dropped and re-created under the same name reuses seqs).
fn saved_matches(snap: &Snapshot, state: &State) -> bool {
    let mut live = 0;
    for (row, seq) in snap.seqs.iter().enumerate() {
        let Some(e) = state.by_seq.get(seq).and_then(|id| state.items.get(id)) else {
            continue;
        };
        if snap.raw.row(row).as_slice() != Some(&e.vector[..]) {
            return false;
        }
        live += 1;
    }
    live > 0 || snap.is_empty()
}

fn validate_gallery_name(name: &str) -> Result<(), GalleryError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if name.is_empty() || name.len() > 64 || !ok_chars {
        return Err(GalleryError::InvalidName {
            what: "gallery name",
            value: name.to_string(),
            why: "use 1-64 characters from A-Z a-z 0-9 . _ -",
        });
    }
    // The name is a folder under data/index/: "." or ".." would be another one.
    if name.chars().all(|c| c == '.') {
        return Err(GalleryError::InvalidName {
            what: "gallery name",
            value: name.to_string(),
            why: "a name needs at least one character other than '.'",
        });
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), GalleryError> {
    if id.is_empty() || id.len() > 512 {
        return Err(GalleryError::InvalidName {
            what: "item id",
            value: id.to_string(),
            why: "ids are 1-512 bytes",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
