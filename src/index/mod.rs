//! Approximate nearest-neighbour index over unit descriptors (hnsw_rs).
//!
//! hnsw_rs 0.3 cannot delete: the owner filters removed and replaced
//! items out at search time (they are "tombstones") and calls
//! [`AnnIndex::rebuild`] off the request path once they pile up. Inserts
//! that arrive during a rebuild are replayed into the new graph before it
//! is swapped in, so nothing is lost and searches never wait for a build.
//!
//! Not yet done: loading a dump at start (today the graph is rebuilt from
//! the store). Plan: dump on graceful shutdown with the highest seq it
//! holds and the gallery's incarnation id; at load, if both match, take the
//! dump and insert the store's items with a higher seq (seqs only grow, so
//! anything added or replaced after the dump has one); removals are already
//! tombstones.

pub mod distance;
pub mod exact;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hnsw_rs::prelude::{FilterT, Hnsw};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use distance::{euclidean_from_cosine, UnitCosine};

/// HNSW parameters. The defaults give recall@10 >= 0.98 on 20k random
/// 512-d unit vectors (see `tests/ann_recall.rs`), a harder case than
/// real descriptors, which cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node (hnsw_rs: at most 255).
    pub m: usize,
    pub ef_construction: usize,
    /// Default search beam width; a request may override it.
    pub ef_search: usize,
    /// Rebuild once tombstones exceed this fraction of live items.
    pub rebuild_tombstone_ratio: f64,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 24,
            ef_construction: 200,
            ef_search: 256,
            rebuild_tombstone_ratio: 0.2,
        }
    }
}

type Graph = Hnsw<'static, f32, UnitCosine>;

/// A unit descriptor shared between the gallery state and the index.
pub type Vector = Arc<[f32]>;

pub struct AnnIndex {
    params: HnswParams,
    graph: RwLock<Arc<Graph>>,
    /// Guards inserts against a concurrent swap; holds the inserts made
    /// while a rebuild is running.
    pending: Mutex<Vec<(u64, Vector)>>,
    rebuilding: AtomicBool,
    generation: AtomicU64,
}

/// What GalleryStats reports about the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStatus {
    pub points: usize,
    pub rebuilding: bool,
    pub generation: u64,
}

impl AnnIndex {
    pub fn new(params: HnswParams, items: &[(u64, Vector)]) -> Self {
        let graph = build(&params, items);
        Self {
            params,
            graph: RwLock::new(Arc::new(graph)),
            pending: Mutex::new(Vec::new()),
            rebuilding: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    pub fn insert(&self, seq: u64, v: Vector) {
        let mut pending = self.pending.lock();
        self.graph.read().insert_slice((&v, seq as usize));
        if self.rebuilding.load(Ordering::Acquire) {
            pending.push((seq, v));
        }
    }

    /// The `k` nearest points accepted by `keep`, as (seq, Euclidean
    /// distance), nearest first.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let graph = self.graph.read().clone();
        if k == 0 || graph.get_nb_point() == 0 {
            return Vec::new();
        }
        let filter = |id: &usize| keep(*id as u64);
        let found = graph.search_filter(q, k, ef.max(k), Some(&filter as &dyn FilterT));
        found
            .into_iter()
            .map(|n| (n.d_id as u64, euclidean_from_cosine(n.distance)))
            .collect()
    }

    pub fn status(&self) -> IndexStatus {
        IndexStatus {
            points: self.graph.read().get_nb_point(),
            rebuilding: self.rebuilding.load(Ordering::Acquire),
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Marks a rebuild as started; returns false if one already runs. The
    /// caller must take its snapshot of live items *after* this returns
    /// true and while no insert can slip between (under its own lock), so
    /// that every insert is either in the snapshot or in `pending`.
    pub fn begin_rebuild(&self) -> bool {
        let _guard = self.pending.lock();
        !self.rebuilding.swap(true, Ordering::AcqRel)
    }

    /// Builds a fresh graph from `live` (slow; call off the request path)
    /// and swaps it in together with the inserts made meanwhile.
    pub fn finish_rebuild(&self, live: &[(u64, Vector)]) {
        let graph = build(&self.params, live);
        let mut pending = self.pending.lock();
        for (seq, v) in pending.drain(..) {
            graph.insert_slice((&v, seq as usize));
        }
        *self.graph.write() = Arc::new(graph);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.rebuilding.store(false, Ordering::Release);
    }
}

fn build(p: &HnswParams, items: &[(u64, Vector)]) -> Graph {
    let graph = Hnsw::new(
        p.m,
        items.len().max(1024),
        16,
        p.ef_construction,
        UnitCosine,
    );
    let data: Vec<(&[f32], usize)> = items.iter().map(|(s, v)| (&v[..], *s as usize)).collect();
    graph.parallel_insert_slice(&data);
    graph
}
