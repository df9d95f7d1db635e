//! Named galleries: the durable store plus the in-memory state (items,
//! their unit descriptors, the ANN index) derived from it.
//!
//! Writes go to the store first, in one transaction per call; only after
//! it commits is the in-memory state changed and the caller answered. The
//! index is rebuilt from the store at start.
//!
//! Post-processing state (neighbour lists, DBA vectors) lives in `post`
//! and is refreshed in the background after writes; `online` runs the
//! per-request stages.

pub mod online;
pub mod post;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::index::{exact, AnnIndex, HnswParams, IndexStatus, Vector};
use crate::store::{Change, GalleryMeta, ItemRecord, Store, StoreError};

use post::{PostConfig, Snapshot};

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
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// Galleries (or filtered candidate sets) up to this size are searched
/// exactly: measured faster than hnsw_rs's graph walk at 10k items
/// (BENCHMARKS.md), and exact.
const EXACT_LIMIT: usize = 20_000;

#[derive(Default)]
struct State {
    items: BTreeMap<String, Entry>,
    by_seq: HashMap<u64, String>,
    next_seq: u64,
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
}

impl Gallery {
    fn open(
        name: String,
        meta: GalleryMeta,
        store: Arc<Store>,
        params: HnswParams,
        post_cfg: PostConfig,
    ) -> Result<Self, GalleryError> {
        let records = store.load_items(&name)?;
        let mut state = State::default();
        let mut live = Vec::with_capacity(records.len());
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
            live.push((rec.seq, vector.clone()));
            state.items.insert(
                id,
                Entry {
                    seq: rec.seq,
                    metadata: rec.metadata,
                    indexed: vector.clone(),
                    vector,
                },
            );
        }
        let stale = state.items.len() as u64;
        let index = Arc::new(AnnIndex::new(params, &live));
        Ok(Self {
            name,
            meta,
            store,
            state: RwLock::new(state),
            index,
            writer: Mutex::new(()),
            post_cfg,
            post: RwLock::new(None),
            stale: AtomicU64::new(stale),
            refreshing: Mutex::new(()),
            refresh_tx: Mutex::new(None),
        })
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

    /// Recomputes neighbour lists and DBA vectors over the live gallery,
    /// installs the DBA vectors in the index, and publishes the snapshot.
    /// Blocking and O(N^2 d); the refresher calls it, tests may too.
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
        let generation = self.post.read().as_ref().map_or(0, |s| s.generation) + 1;
        let snap = Snapshot::compute(&items, self.dims(), &self.post_cfg, generation)?;
        if let Some(dba) = &snap.dba {
            self.install_indexed(&snap, dba);
        }
        *self.post.write() = Some(Arc::new(snap));
        self.stale.fetch_sub(stale_at, Ordering::AcqRel);
        tracing::info!(gallery = %self.name, items = items.len(), generation,
            ms = t.elapsed().as_millis() as u64, "post-processing refreshed");
        Ok(())
    }

    /// Sets each snapshot item's indexed vector to its DBA vector (items
    /// replaced since keep theirs) and rebuilds the index from them.
    fn install_indexed(&self, snap: &Snapshot, dba: &ndarray::Array2<f32>) {
        let live = loop {
            let mut state = self.state.write();
            for (row, &seq) in snap.seqs.iter().enumerate() {
                let Some(id) = state.by_seq.get(&seq).cloned() else {
                    continue;
                };
                if let Some(e) = state.items.get_mut(&id) {
                    e.indexed = dba.row(row).to_vec().into();
                }
            }
            let state = parking_lot::RwLockWriteGuard::downgrade(state);
            // As in `maybe_rebuild`: snapshot right after marking, under
            // the state lock; wait out a tombstone rebuild in progress.
            if self.index.begin_rebuild() {
                break state
                    .items
                    .values()
                    .map(|e| (e.seq, e.indexed.clone()))
                    .collect::<Vec<_>>();
            }
            drop(state);
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        self.index.finish_rebuild(&live);
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
        let first_seq = self.state.read().next_seq;
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
        let replaced = self.store.write(&self.name, &changes)?;
        drop(changes);

        let mut state = self.state.write();
        state.next_seq = first_seq + items.len() as u64;
        let n_items = items.len() as u64;
        for (it, rec) in items.into_iter().zip(records) {
            let vector: Vector = rec.descriptor.into();
            if let Some(old) = state.items.insert(
                it.id.clone(),
                Entry {
                    seq: rec.seq,
                    metadata: rec.metadata,
                    vector: vector.clone(),
                    indexed: vector.clone(),
                },
            ) {
                state.by_seq.remove(&old.seq);
            }
            state.by_seq.insert(rec.seq, it.id);
            self.index.insert(rec.seq, vector);
        }
        self.stale.fetch_add(n_items, Ordering::AcqRel);
        drop(state);
        self.mark_stale();
        self.maybe_rebuild();
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
                self.stale.fetch_add(1, Ordering::AcqRel);
            }
        }
        drop(state);
        if missing.len() < ids.len() {
            self.mark_stale();
        }
        self.maybe_rebuild();
        Ok(missing)
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

    /// Nearest items to the unit vector `q`. Blocking (CPU-bound).
    pub fn search(&self, q: &[f32], p: &SearchParams<'_>) -> Vec<Hit> {
        let state = self.state.read();
        let matches = |e: &Entry| p.filter.iter().all(|(k, v)| e.metadata.get(k) == Some(v));
        let wanted = p.k + usize::from(p.exclude.is_some());
        let raw: Vec<(u64, f32)> = if p.exact || state.items.len() <= EXACT_LIMIT {
            let cands = state
                .items
                .values()
                .filter(|e| matches(e))
                .map(|e| (e.seq, &e.indexed[..]));
            exact::top_k(q, cands, wanted)
        } else {
            let keep = |seq: u64| {
                state
                    .by_seq
                    .get(&seq)
                    .and_then(|id| state.items.get(id))
                    .is_some_and(|e| e.seq == seq && matches(e))
            };
            self.index.search(q, wanted, p.ef, &keep)
        };
        raw.into_iter()
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
            .collect()
    }

    pub fn default_ef(&self) -> usize {
        self.index.params().ef_search
    }

    pub fn stats(&self) -> GalleryStats {
        let count = self.len();
        let index = self.index.status();
        GalleryStats {
            name: self.name.clone(),
            count,
            meta: self.meta.clone(),
            tombstones: index.points.saturating_sub(count),
            index,
            stale_items: self.stale.load(Ordering::Acquire),
            post_generation: self.post.read().as_ref().map_or(0, |s| s.generation),
            dba: self.post_cfg.dba,
        }
    }

    /// Starts a background rebuild once tombstones pass the threshold.
    fn maybe_rebuild(&self) {
        let stats = self.stats();
        let ratio = self.index.params().rebuild_tombstone_ratio;
        if stats.index.rebuilding
            || stats.tombstones < 64
            || (stats.tombstones as f64) < ratio * stats.count as f64
        {
            return;
        }
        // Snapshot under the state lock right after marking the rebuild, so
        // every later insert lands in the index's pending list instead.
        let state = self.state.read();
        if !self.index.begin_rebuild() {
            return;
        }
        let live: Vec<(u64, Vector)> = state
            .items
            .values()
            .map(|e| (e.seq, e.indexed.clone()))
            .collect();
        drop(state);
        let index = self.index.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            index.finish_rebuild(&live);
            tracing::info!(gallery = %name, points = live.len(), ms = t.elapsed().as_millis() as u64, "index rebuilt");
        });
    }
}

/// All galleries of one store.
pub struct Galleries {
    store: Arc<Store>,
    params: HnswParams,
    post: PostConfig,
    map: RwLock<BTreeMap<String, Arc<Gallery>>>,
}

impl Galleries {
    /// Opens the store and loads every gallery (index rebuilt from the store).
    pub fn open(path: &Path, params: HnswParams, post: PostConfig) -> Result<Self, GalleryError> {
        let store = Arc::new(Store::open(path)?);
        let mut map = BTreeMap::new();
        for (name, meta) in store.galleries()? {
            let t = std::time::Instant::now();
            let g = Arc::new(Gallery::open(
                name.clone(),
                meta,
                store.clone(),
                params.clone(),
                post.clone(),
            )?);
            // Recomputed, not persisted: computed before serving, so a
            // restarted server answers as the batch definition does.
            if let Err(e) = g.refresh_post() {
                tracing::warn!(gallery = %name, error = %e, "post-processing state not computed");
            }
            g.start_refresher();
            tracing::info!(gallery = %name, items = g.len(), ms = t.elapsed().as_millis() as u64, "gallery loaded");
            map.insert(name, g);
        }
        Ok(Self {
            store,
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
        Ok(n)
    }
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
