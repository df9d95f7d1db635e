//! The derived state of a gallery saved at shutdown, so that a restart
//! does not recompute it: the post-processing snapshot (neighbour lists,
//! DBA vectors, the fitted projection and the projected rows), the index
//! point of each of its rows, and the HNSW graph with its calibrated ef.
//!
//! The store stays the only source of truth. A saved state is a cache:
//! it is used only when its settings match the current ones and every
//! row whose item is still live holds bit for bit that item's stored
//! descriptor; whatever changed in the store since (writes after the
//! save, or after an older save when the server crashed) is then applied
//! like any other write, incrementally. Anything else (missing, corrupt,
//! other settings, another gallery of the same name) means a full
//! recomputation, as without a save.
//!
//! Layout: `<index dir>/<gallery>/state.bin` (own format, SHA-256 at the
//! end) and `graph.hnsw.{graph,data}` (hnsw_rs's dump). A save writes a
//! `.partial` directory and renames it over the old one.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ndarray::Array2;
use sha2::{Digest, Sha256};

use super::post::{PostConfig, SavedSpace, Snapshot};
use super::projection::Projection;
use crate::index::{Calibration, Graph, HnswParams};
use crate::rerank::kreciprocal::GalleryNeighbours;

const MAGIC: &[u8; 8] = b"LKLSTATE";
/// 2: the projection settings and fit, and the graph's calibration
/// (version 1 had no place for them).
const VERSION: u32 = 2;
const STATE_FILE: &str = "state.bin";
const GRAPH_BASENAME: &str = "graph";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// Settings a saved state depends on; a state saved under others is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    dims: u64,
    dba: bool,
    dba_k: u64,
    neighbours_k: u64,
    m: u64,
    ef_construction: u64,
    /// 0: no projection configured.
    projection_components: u64,
    projection_beta: u64,
}

impl Settings {
    fn new(dims: usize, post: &PostConfig, index: &HnswParams) -> Self {
        Self {
            dims: dims as u64,
            dba: post.dba,
            dba_k: post.dba_k as u64,
            neighbours_k: post.neighbours_k as u64,
            m: index.m as u64,
            ef_construction: index.ef_construction as u64,
            projection_components: post.projection.map_or(0, |p| p.components as u64),
            projection_beta: post.projection.map_or(0, |p| p.beta.to_bits()),
        }
    }
}

/// What a save holds.
pub struct Saved {
    pub snapshot: Snapshot,
    /// Row -> index point of that row's indexed vector.
    pub points: Vec<u64>,
    /// The first point id never issued: the graph may hold dead points
    /// above every live one, and a reused id would revive one.
    pub next_point: u64,
    /// The graph and what its build measured (None: calibration off, or
    /// measured under another target recall or ef limit).
    pub graph: Option<(Graph, Option<Calibration>)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes through to `inner` and hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_u64s(w: &mut impl Write, v: impl IntoIterator<Item = u64>) -> std::io::Result<()> {
    v.into_iter()
        .try_for_each(|x| w.write_all(&x.to_le_bytes()))
}
fn put_f64s<'a>(w: &mut impl Write, v: impl IntoIterator<Item = &'a f64>) -> std::io::Result<()> {
    v.into_iter()
        .try_for_each(|x| w.write_all(&x.to_le_bytes()))
}
fn put_f32s<'a>(w: &mut impl Write, v: impl IntoIterator<Item = &'a f32>) -> std::io::Result<()> {
    v.into_iter()
        .try_for_each(|x| w.write_all(&x.to_le_bytes()))
}

/// Saves `snap` with its rows' `points` and `graph` as `dir` (replacing
/// what was there).
pub fn save(
    dir: &Path,
    snap: &Snapshot,
    points: &[u64],
    next_point: u64,
    graph: Option<(&Graph, Option<&Calibration>)>,
    post: &PostConfig,
    index: &HnswParams,
) -> Result<(), PersistError> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io_err(&partial))?;
    let path = partial.join(STATE_FILE);
    write_state(
        &path,
        snap,
        points,
        next_point,
        graph.map(|(_, c)| c),
        post,
        index,
    )
    .map_err(io_err(&path))?;
    if let Some((g, _)) = graph {
        use hnsw_rs::api::AnnT;
        g.file_dump(&partial, GRAPH_BASENAME)
            .map_err(|e| PersistError::Invalid {
                path: partial.clone(),
                why: format!("dumping the HNSW graph: {e}"),
            })?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::rename(&partial, dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent() {
        // Makes the rename durable.
        File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(io_err(parent))?;
    }
    Ok(())
}

fn write_state(
    path: &Path,
    snap: &Snapshot,
    points: &[u64],
    next_point: u64,
    // None: no graph; Some(c): a graph, with its calibration if any.
    graph: Option<Option<&Calibration>>,
    post: &PostConfig,
    index: &HnswParams,
) -> std::io::Result<()> {
    let file = File::create(path)?;
    let mut w = Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
    };
    let s = Settings::new(snap.raw.ncols(), post, index);
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    let space = snap.projection.as_ref().zip(snap.projected.as_ref());
    let flags = u64::from(snap.neighbours.is_some())
        | u64::from(snap.dba.is_some()) << 1
        | u64::from(graph.is_some()) << 2
        | u64::from(space.is_some()) << 3
        | u64::from(graph.flatten().is_some()) << 4;
    let k = snap.neighbours.as_ref().map_or(0, |nb| nb.k() as u64);
    put_u64s(
        &mut w,
        [
            s.dims,
            u64::from(s.dba),
            s.dba_k,
            s.neighbours_k,
            s.m,
            s.ef_construction,
            s.projection_components,
            s.projection_beta,
            snap.len() as u64,
            snap.generation,
            flags,
            k,
            next_point,
        ],
    )?;
    if let Some(c) = graph.flatten() {
        put_u64s(
            &mut w,
            [
                c.ef as u64,
                c.recall.to_bits(),
                u64::from(c.reached),
                c.sample as u64,
                c.build_seconds.to_bits(),
                index.target_recall.to_bits(),
            ],
        )?;
    }
    put_u64s(&mut w, snap.seqs.iter().copied())?;
    put_u64s(&mut w, points.iter().copied())?;
    put_f32s(&mut w, snap.raw.iter())?;
    if let Some((p, rows)) = space {
        let (mean, weights) = p.parts();
        put_u64s(&mut w, [p.components() as u64, snap.since_fit as u64])?;
        put_f32s(&mut w, mean.iter())?;
        put_f32s(&mut w, weights.iter())?;
        put_f32s(&mut w, rows.iter())?;
    }
    if let Some(nb) = &snap.neighbours {
        let (_, n2, ids, d2, row_max) = nb.parts();
        put_f64s(&mut w, n2)?;
        put_u64s(&mut w, ids.iter().map(|&j| u64::from(j)))?;
        put_f64s(&mut w, d2)?;
        put_f64s(&mut w, row_max)?;
    }
    if let Some(dba) = &snap.dba {
        put_f32s(&mut w, dba.iter())?;
    }
    let digest = w.hash.finalize();
    let mut inner = w.inner;
    inner.write_all(&digest)?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Little-endian reader over a verified buffer.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u64s(&mut self, n: usize) -> Option<Vec<u64>> {
        (0..n).map(|_| self.u64()).collect()
    }
    fn f64s(&mut self, n: usize) -> Option<Vec<f64>> {
        let b = self.take(n.checked_mul(8)?)?;
        Some(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        )
    }
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let b = self.take(n.checked_mul(4)?)?;
        Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

/// Loads the state saved as `dir` if there is one and it was saved
/// under the same settings; Ok(None) when there is none or the settings
/// differ, Err when it is unreadable (the caller recomputes either way).
pub fn load(
    dir: &Path,
    dims: usize,
    post: &PostConfig,
    index: &HnswParams,
) -> Result<Option<Saved>, PersistError> {
    let path = dir.join(STATE_FILE);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io_err(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let invalid = |why: &str| PersistError::Invalid {
        path: path.clone(),
        why: why.to_string(),
    };
    if bytes.len() < MAGIC.len() + 4 + 32 {
        return Err(invalid("truncated"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(invalid("checksum mismatch (torn or corrupted write)"));
    }
    if &body[..8] != MAGIC || body[8..12] != VERSION.to_le_bytes() {
        return Err(invalid("not a lookalike state file of this version"));
    }
    let mut c = Cursor { buf: &body[12..] };
    let parsed = parse(&mut c, dims, post, index).ok_or_else(|| invalid("malformed"))?;
    let Some((snapshot, points, next_point, saved_graph)) = parsed else {
        tracing::info!(path = %path.display(), "saved state is for other settings; recomputing");
        return Ok(None);
    };
    let graph = if let Some(calibration) = saved_graph {
        match load_graph(dir) {
            Ok(g) => Some((g, calibration)),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), %why, "saved HNSW graph unusable; rebuilding");
                None
            }
        }
    } else {
        None
    };
    Ok(Some(Saved {
        snapshot,
        points,
        next_point,
        graph,
    }))
}

type Parsed = Option<(Snapshot, Vec<u64>, u64, Option<Option<Calibration>>)>;

/// None: malformed; Some(None): other settings.
fn parse(c: &mut Cursor, dims: usize, post: &PostConfig, index: &HnswParams) -> Option<Parsed> {
    let h = c.u64s(13)?;
    let saved = Settings {
        dims: h[0],
        dba: h[1] != 0,
        dba_k: h[2],
        neighbours_k: h[3],
        m: h[4],
        ef_construction: h[5],
        projection_components: h[6],
        projection_beta: h[7],
    };
    if saved != Settings::new(dims, post, index) {
        return Some(None);
    }
    let (n, generation, flags, k) = (usize::try_from(h[8]).ok()?, h[9], h[10], h[11] as usize);
    let calibration = if flags & 16 != 0 {
        let c = c.u64s(6)?;
        let saved = Calibration {
            ef: usize::try_from(c[0]).ok()?,
            recall: f64::from_bits(c[1]),
            reached: c[2] != 0,
            sample: usize::try_from(c[3]).ok()?,
            build_seconds: f64::from_bits(c[4]),
        };
        // Measured for what is asked now, or not used (the graph is).
        let same_goal = c[5] == index.target_recall.to_bits()
            && saved.ef <= index.max_ef_search as usize
            && index.target_recall > 0.0;
        same_goal.then_some(saved)
    } else {
        None
    };
    let seqs = c.u64s(n)?;
    let points = c.u64s(n)?;
    let raw = Array2::from_shape_vec((n, dims), c.f32s(n.checked_mul(dims)?)?).ok()?;
    let space = if flags & 8 != 0 {
        let (p, since_fit) = (usize::try_from(c.u64()?).ok()?, c.u64()?);
        let mean = ndarray::Array1::from(c.f32s(dims)?);
        let weights = Array2::from_shape_vec((dims, p), c.f32s(dims.checked_mul(p)?)?).ok()?;
        let projected = Array2::from_shape_vec((n, p), c.f32s(n.checked_mul(p)?)?).ok()?;
        Some(SavedSpace {
            projection: std::sync::Arc::new(Projection::from_parts(mean, weights).ok()?),
            projected,
            since_fit: usize::try_from(since_fit).ok()?,
        })
    } else {
        None
    };
    // The rows every later stage works on: projected, or the raw ones.
    let work = space.as_ref().map_or(dims, |s| s.projected.ncols());
    let neighbours = if flags & 1 != 0 {
        let n2 = c.f64s(n)?;
        let ids = c
            .u64s(n.checked_mul(k)?)?
            .into_iter()
            .map(|j| u32::try_from(j).ok())
            .collect::<Option<Vec<u32>>>()?;
        let d2 = c.f64s(n * k)?;
        let row_max = c.f64s(n)?;
        Some(GalleryNeighbours::from_parts(k, n2, ids, d2, row_max).ok()?)
    } else {
        None
    };
    let dba = if flags & 2 != 0 {
        Some(Array2::from_shape_vec((n, work), c.f32s(n.checked_mul(work)?)?).ok()?)
    } else {
        None
    };
    if !c.buf.is_empty() {
        return None;
    }
    let snapshot = Snapshot::from_parts(generation, seqs, raw, neighbours, dba, space);
    let graph = (flags & 4 != 0).then_some(calibration);
    Some(Some((snapshot, points, h[12], graph)))
}

/// hnsw_rs ties a loaded graph's lifetime to its loader; without mmap the
/// loader holds only paths, so it is leaked (once per gallery and start)
/// to give the graph the 'static lifetime the index uses. The loader
/// asserts on malformed files, hence catch_unwind.
fn load_graph(dir: &Path) -> Result<Graph, String> {
    let loader: &'static mut hnsw_rs::hnswio::HnswIo =
        Box::leak(Box::new(hnsw_rs::hnswio::HnswIo::new(dir, GRAPH_BASENAME)));
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        loader.load_hnsw_with_dist(crate::index::distance::UnitCosine)
    }));
    match loaded {
        Ok(Ok(g)) => Ok(g),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the hnsw_rs loader panicked on the dump".to_string()),
    }
}
