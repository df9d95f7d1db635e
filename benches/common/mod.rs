//! Synthetic gallery descriptors shared by the benches: clustered like a
//! product gallery (groups of ~20 photos of one product around a centre),
//! not uniform on the sphere, where 512-d vectors have no neighbourhood
//! structure and say little about real galleries.

#![allow(dead_code)] // each bench uses part of it

use lookalike::index::distance::normalised;
use rand::Rng;

pub const DIMS: usize = 512;

pub fn random_unit(rng: &mut impl Rng) -> Vec<f32> {
    random_unit_d(rng, DIMS)
}

pub fn random_unit_d(rng: &mut impl Rng, dims: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dims).map(|_| rng.random::<f32>() - 0.5).collect();
    normalised(&v).expect("non-zero")
}

/// A photo of product `centre`: the centre plus as much noise again.
pub fn near(rng: &mut impl Rng, centre: &[f32]) -> Vec<f32> {
    let noise = random_unit_d(rng, centre.len());
    let v: Vec<f32> = centre
        .iter()
        .zip(&noise)
        .map(|(c, n)| c + 0.8 * n)
        .collect();
    normalised(&v).expect("non-zero")
}

/// `n` gallery vectors in groups of 20 and `queries` query vectors near
/// the same centres.
pub fn clustered(rng: &mut impl Rng, n: usize, queries: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    clustered_d(rng, n, queries, DIMS)
}

/// `clustered` in `dims` dimensions.
pub fn clustered_d(
    rng: &mut impl Rng,
    n: usize,
    queries: usize,
    dims: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let centres: Vec<Vec<f32>> = (0..(n / 20).max(1))
        .map(|_| random_unit_d(rng, dims))
        .collect();
    let items = (0..n)
        .map(|i| near(rng, &centres[i % centres.len()]))
        .collect();
    let qs = (0..queries)
        .map(|i| near(rng, &centres[(i * 7919) % centres.len()]))
        .collect();
    (items, qs)
}

/// Value at quantile `p` of ascending `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Gallery sizes from the command line (`cargo bench --bench X -- N ...`),
/// 10k and 100k by default. Arguments that are not numbers (cargo passes
/// `--bench`) are ignored.
pub fn gallery_sizes() -> Vec<usize> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    }
}

/// The layout benches/ann_faiss.py reads: n, q, d, k as u32, the items,
/// the queries (f32), the exact neighbours (u32 row numbers), all LE.
pub fn write_vectors(
    path: &std::path::Path,
    items: &[impl AsRef<[f32]>],
    queries: &[Vec<f32>],
    dims: usize,
    truth: &[Vec<u64>],
) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("the vector file"));
    let k = truth.first().map_or(0, Vec::len);
    for x in [items.len(), queries.len(), dims, k] {
        out.write_all(&(x as u32).to_le_bytes()).unwrap();
    }
    for v in items
        .iter()
        .map(AsRef::as_ref)
        .chain(queries.iter().map(Vec::as_slice))
    {
        for x in v {
            out.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    for row in truth {
        for id in row {
            out.write_all(&(*id as u32).to_le_bytes()).unwrap();
        }
    }
    out.flush().unwrap();
}

/// A reference script's per-query `seconds` array, in milliseconds.
pub fn millis(seconds: &serde_json::Value) -> Vec<f64> {
    seconds
        .as_array()
        .expect("seconds")
        .iter()
        .filter_map(|s| s.as_f64())
        .map(|s| s * 1e3)
        .collect()
}

/// Runs a Python reference script and returns the JSON it prints; its
/// stderr is the panic message when it fails.
pub fn run_reference(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.output().expect("running the Python reference");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("its JSON")
}
