//! Exact search: the f32 scan against the two-pass int8 + f32 scan the
//! gallery uses (`index::flat`), same rows, same queries, one run; with
//! LOOKALIKE_BENCH_PYTHON set (benches/requirements-speed.txt), faiss-cpu's
//! IndexFlatIP on the very same vectors too.
//!
//!     cargo bench --bench scan -- [N ...] [dims=D]   (default: 10000 100000, 512-d)
//!
//! Clustered synthetic unit descriptors (groups of ~20), 200 descriptor
//! queries one at a time, k 10 (a plain search) and k 100 (the KR
//! shortlist), 2 rounds. Prints p50 / p99 per query of each, and checks
//! that both Rust scans return the same answer.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use common::{clustered_d, gallery_sizes, millis, percentile, run_reference, write_vectors, DIMS};
use lookalike::index::flat::FlatRows;
use lookalike::index::{exact, Vector};
use rand::SeedableRng;

const QUERIES: usize = 200;
const KS: [usize; 2] = [10, 100];

fn main() {
    let dims: usize = std::env::args()
        .find_map(|a| a.strip_prefix("dims=").and_then(|d| d.parse().ok()))
        .unwrap_or(DIMS);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("dims {dims}, {QUERIES} queries one at a time, 2 rounds, {cores} cores");
    for n in gallery_sizes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
        let (vectors, queries) = clustered_d(&mut rng, n, QUERIES, dims);
        let rows: Vec<(u64, Vector)> = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64, Arc::from(v)))
            .collect();
        let mut flat = FlatRows::default();
        for (s, v) in &rows {
            flat.put(*s, v.clone());
        }
        println!(
            "\nN = {n}: f32 rows {} MiB, int8 codes {} MiB",
            (n * dims * 4) >> 20,
            flat.code_bytes() >> 20
        );
        let mut truth = Vec::new();
        // The two-pass scan on one thread too: what the int8 pass alone gives.
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a pool");
        for &k in &KS {
            let (mut t32, mut t8, mut t8one) = (Vec::new(), Vec::new(), Vec::new());
            let mut differ = 0;
            for round in 0..2 {
                for q in &queries {
                    let t = Instant::now();
                    let a = exact::top_k(q, rows.iter().map(|(s, v)| (*s, &v[..])), k);
                    t32.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    let b = flat.top_k(q, k, None);
                    t8.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    let c = one_thread.install(|| flat.top_k(q, k, None));
                    t8one.push(t.elapsed().as_secs_f64() * 1e3);
                    differ += usize::from(a != b) + usize::from(a != c);
                    if round == 0 && k == KS[KS.len() - 1] {
                        truth.push(a.iter().map(|h| h.0).collect::<Vec<u64>>());
                    }
                }
            }
            let one = ("f32 scan, 1 thread", &mut t32);
            let two = ("int8 + f32, 1 thread", &mut t8one);
            for (name, times) in [one, two, ("int8 + f32, all cores", &mut t8)] {
                times.sort_by(f64::total_cmp);
                println!(
                    "  k {k:>3}  {name:<24} p50 {:>7.2} ms  p99 {:>7.2} ms",
                    percentile(times, 0.5),
                    percentile(times, 0.99)
                );
            }
            println!(
                "  k {k:>3}  answers that differ: {differ} of {}",
                4 * QUERIES
            );
        }
        if let Ok(py) = std::env::var("LOOKALIKE_BENCH_PYTHON") {
            let dir = tempfile::tempdir().expect("a temp dir");
            let file = dir.path().join("vectors.bin");
            let items: Vec<&[f32]> = rows.iter().map(|(_, v)| &v[..]).collect();
            write_vectors(&file, &items, &queries, dims, &truth);
            faiss_flat(&py, &file, cores);
        }
    }
}

/// benches/ann_faiss.py `flat` on `file`, on every core.
fn faiss_flat(py: &str, file: &std::path::Path, threads: usize) {
    let ks: Vec<String> = KS.iter().map(|k| k.to_string()).collect();
    let v = run_reference(
        Command::new(py)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/ann_faiss.py"))
            .arg("flat")
            .arg(file)
            .arg("-")
            .arg(ks.join(","))
            .arg(threads.to_string()),
    );
    for r in v["rows"].as_array().expect("rows") {
        let mut ms = millis(&r["seconds"]);
        ms.sort_by(f64::total_cmp);
        println!(
            "  k {:>3}  faiss IndexFlatIP, {threads} threads p50 {:>7.2} ms  p99 {:>7.2} ms  recall {:.3}",
            r["k"],
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            r["recall"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
