//! Approximate nearest-neighbour index over unit descriptors (hnsw_rs).
//!
//! Points are keyed by a caller-chosen point id, not by item: the owner
//! gives an item a new point whenever its indexed vector changes (a
//! replace, or a new DBA vector), because hnsw_rs 0.3 can neither delete
//! nor update. Dead points ("tombstones") are filtered out at search time
//! and [`AnnIndex::finish_rebuild`] replaces the graph off the request
//! path once they pile up. Inserts that arrive during a rebuild are
//! replayed into the new graph before it is swapped in, so nothing is
//! lost and searches never wait for a build.
//!
//! The graph is optional: small galleries are searched exactly (faster
//! than the graph walk there, see BENCHMARKS.md) and keep none; the owner
//! builds one through the same rebuild path once it grows past
//! [`HnswParams::exact_limit`]. Which of the two a search reads is chosen
//! in one place, `read` ([`read::Nearest::choose`]).
//!
//! The graph is saved at shutdown and loaded at start together with the
//! rest of a gallery's derived state (`crate::gallery::persist`).

pub mod calibrate;
pub mod distance;
pub mod exact;
pub mod flat;
pub mod read;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hnsw_rs::prelude::Hnsw;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use calibrate::Calibration;
use distance::{euclidean_from_cosine, UnitCosine};

/// HNSW parameters. The defaults give recall@10 >= 0.98 on 20k uniformly
/// random 512-d unit vectors (`tests/ann_recall.rs`; 0.997 measured), the
/// worst case. Real descriptors cluster and reach that recall with a far
/// smaller ef (64 on the clustered benchmark, 15x faster at 100k), so each
/// build calibrates the default ef on the gallery's own items
/// (`target_recall`, `calibrate`); `ef_search` is the default until then.
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
    /// Galleries up to this many items are searched exactly and keep no
    /// graph: at the default ef a graph walk is slower than brute force
    /// up to about this size (BENCHMARKS.md). Lower it with `ef_search`.
    pub exact_limit: usize,
    /// Largest `ef_search` a request may ask for: the beam is allocated
    /// per search, so an unbounded one is a memory and CPU lever.
    pub max_ef_search: u32,
    /// After each graph build, the default ef becomes the smallest one
    /// whose recall@10 against exact search on a sample of the gallery's
    /// own items reaches this (`calibrate`); 0 keeps `ef_search`.
    pub target_recall: f64,
    /// Items that calibration measures recall on.
    pub calibration_sample: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 24,
            ef_construction: 200,
            ef_search: 1024,
            rebuild_tombstone_ratio: 0.2,
            exact_limit: 200_000,
            max_ef_search: 16384,
            target_recall: 0.98,
            calibration_sample: 200,
        }
    }
}

/// A filtered search gives up on the graph (and the caller searches
/// exactly) once it would need more than this many times `k` candidates.
const MAX_EXPANSION: usize = 64;

/// The hnsw_rs graph over unit vectors.
pub type Graph = Hnsw<'static, f32, UnitCosine>;

/// A unit descriptor shared between the gallery state and the index.
pub type Vector = Arc<[f32]>;

pub struct AnnIndex {
    params: HnswParams,
    /// None until the first build.
    graph: RwLock<Option<Arc<Graph>>>,
    /// Guards inserts against a concurrent swap; holds the inserts made
    /// while a rebuild is running.
    pending: Mutex<Vec<(u64, Vector)>>,
    rebuilding: AtomicBool,
    generation: AtomicU64,
    /// Of the graph in use: measured by its build, or saved with it.
    calibration: RwLock<Option<Calibration>>,
}

/// A graph built off the request path, with what its build measured.
pub struct Built {
    graph: Graph,
    calibration: Option<Calibration>,
}

/// What GalleryStats reports about the index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexStatus {
    /// Whether a graph exists (else searches are exact).
    pub built: bool,
    pub points: usize,
    pub rebuilding: bool,
    pub generation: u64,
    pub calibration: Option<Calibration>,
}

impl AnnIndex {
    /// An index with a graph over `items` (point id, unit vector).
    pub fn new(params: HnswParams, items: &[(u64, Vector)]) -> Self {
        let index = Self::empty(params);
        let built = index.build_graph(items);
        *index.calibration.write() = built.calibration;
        *index.graph.write() = Some(Arc::new(built.graph));
        index
    }

    /// An index over a graph built or loaded elsewhere, with what its
    /// build measured (saved with it), if anything.
    pub fn with_graph(params: HnswParams, graph: Graph, calibration: Option<Calibration>) -> Self {
        let index = Self::empty(params);
        *index.graph.write() = Some(Arc::new(graph));
        *index.calibration.write() = calibration;
        index
    }

    /// The current graph, if any, and its calibration (to save them).
    pub fn graph(&self) -> Option<(Arc<Graph>, Option<Calibration>)> {
        let graph = self.graph.read().clone()?;
        Some((graph, *self.calibration.read()))
    }

    /// An index without a graph; `begin_rebuild` / `finish_rebuild` make one.
    pub fn empty(params: HnswParams) -> Self {
        Self {
            params,
            graph: RwLock::new(None),
            pending: Mutex::new(Vec::new()),
            rebuilding: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            calibration: RwLock::new(None),
        }
    }

    /// The beam width a search uses unless the request sets one: the
    /// calibrated one once a build here measured it, else `ef_search`.
    pub fn default_ef(&self) -> usize {
        (*self.calibration.read()).map_or(self.params.ef_search, |c| c.ef)
    }

    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    /// Adds a point (to the graph if there is one, and to the rebuild in
    /// progress if there is one).
    pub fn insert(&self, point: u64, v: Vector) {
        self.insert_many(&[(point, v)]);
    }

    /// `insert` for many points, in parallel (an insert into a large graph
    /// costs milliseconds: a refresh re-indexes hundreds of DBA vectors).
    pub fn insert_many(&self, points: &[(u64, Vector)]) {
        let mut pending = self.pending.lock();
        if let Some(g) = self.graph.read().as_ref() {
            let data: Vec<(&[f32], usize)> =
                points.iter().map(|(p, v)| (&v[..], *p as usize)).collect();
            g.parallel_insert_slice(&data);
        }
        if self.rebuilding.load(Ordering::Acquire) {
            pending.extend(points.iter().cloned());
        }
    }

    pub fn has_graph(&self) -> bool {
        self.graph.read().is_some()
    }

    /// Drops the graph (the gallery shrank below the exact limit).
    pub fn clear(&self) {
        let _guard = self.pending.lock();
        if !self.rebuilding.load(Ordering::Acquire) {
            *self.graph.write() = None;
            *self.calibration.write() = None;
        }
    }

    /// The `k` nearest points accepted by `keep`, as (point id, Euclidean
    /// distance), nearest first. None without a graph, or when `keep`
    /// rejects so much that the graph cannot deliver `k` (the caller then
    /// searches exactly).
    ///
    /// hnsw_rs's own filtered search never stops early: it walks the whole
    /// graph (measured 136 ms at 100k points). So this searches unfiltered
    /// for a few more than `k`, filters, and asks for four times as many
    /// while too few pass.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Option<Vec<(u64, f32)>> {
        let graph = self.graph.read().clone()?;
        let total = graph.get_nb_point();
        if k == 0 || total == 0 {
            return Some(Vec::new());
        }
        let mut want = k + k / 2 + 8;
        loop {
            let asked = want.min(total);
            let hits: Vec<(u64, f32)> = graph
                .search(q, asked, ef.max(asked))
                .into_iter()
                .map(|n| (n.d_id as u64, euclidean_from_cosine(n.distance)))
                .filter(|(point, _)| keep(*point))
                .take(k)
                .collect();
            if hits.len() >= k || asked >= total {
                return Some(hits);
            }
            if want >= MAX_EXPANSION * k {
                return None;
            }
            want *= 4;
        }
    }

    pub fn status(&self) -> IndexStatus {
        let graph = self.graph.read();
        IndexStatus {
            built: graph.is_some(),
            points: graph.as_ref().map_or(0, |g| g.get_nb_point()),
            rebuilding: self.rebuilding.load(Ordering::Acquire),
            generation: self.generation.load(Ordering::Acquire),
            calibration: *self.calibration.read(),
        }
    }

    /// Marks a (re)build as started; returns false if one already runs.
    /// The caller must take its snapshot of live points *after* this
    /// returns true and while no insert can slip between (under its own
    /// lock), so that every insert is either in the snapshot or in
    /// `pending`.
    pub fn begin_rebuild(&self) -> bool {
        let _guard = self.pending.lock();
        !self.rebuilding.swap(true, Ordering::AcqRel)
    }

    /// Builds a fresh graph from `live` (slow; call off the request path)
    /// and swaps it in together with the inserts made meanwhile.
    pub fn finish_rebuild(&self, live: &[(u64, Vector)]) {
        self.install_graph(self.build_graph(live));
    }

    /// The graph a rebuild would install, calibrated on `live` (no locks
    /// held while it builds).
    pub fn build_graph(&self, live: &[(u64, Vector)]) -> Built {
        let t = std::time::Instant::now();
        let graph = build(&self.params, live);
        let seconds = t.elapsed().as_secs_f64();
        let p = &self.params;
        let calibration = (p.target_recall > 0.0 && !live.is_empty()).then(|| {
            let c = calibrate::calibrate(
                &graph,
                live,
                p.target_recall,
                p.calibration_sample,
                p.max_ef_search as usize,
                seconds,
            );
            tracing::info!(
                ef = c.ef,
                recall = c.recall,
                sample = c.sample,
                build_s = seconds,
                "graph calibrated"
            );
            c
        });
        Built { graph, calibration }
    }

    /// Second half of `finish_rebuild`: replays the inserts made since
    /// `begin_rebuild` into `graph` and swaps it in.
    pub fn install_graph(&self, built: Built) {
        let Built { graph, calibration } = built;
        let mut pending = self.pending.lock();
        for (point, v) in pending.drain(..) {
            graph.insert_slice((&v, point as usize));
        }
        *self.graph.write() = Some(Arc::new(graph));
        *self.calibration.write() = calibration;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.rebuilding.store(false, Ordering::Release);
    }
}

fn build(p: &HnswParams, items: &[(u64, Vector)]) -> Graph {
    let _timer = crate::telemetry::metrics()
        .index_build_seconds
        .start_timer();
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
