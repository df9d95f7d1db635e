//! The ANN index against faiss-cpu's HNSW, both sides in one run on the
//! very same vectors (written to a file the Python side reads).
//!
//!     LOOKALIKE_BENCH_PYTHON=~/.cache/lookalike/benchvenv/bin/python \
//!       cargo bench --bench ann_faiss -- [N] [clustered]   (default: 20000 uniform)
//!
//! Both build with M 24 / ef_construction 200 on all cores and answer one
//! query at a time; recall@10 is against the same exact neighbours. The
//! default data are uniformly random 512-d unit vectors: no neighbourhood
//! structure, the hard case that needs the largest ef.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use common::{clustered, millis, percentile, random_unit, run_reference, write_vectors, DIMS};
use lookalike::index::calibrate::calibrate;
use lookalike::index::{exact, AnnIndex, HnswParams, Vector};
use rand::SeedableRng;

const QUERIES: usize = 300;
const K: usize = 10;
const EFS: [usize; 10] = [64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536];
/// Query rounds, alternating between the two sides so that load on the
/// machine falls on both alike; the percentiles pool all rounds.
const ROUNDS: usize = 3;

/// Per ef: query times (ms) over all rounds and recall@10.
type Rows = Vec<(usize, Vec<f64>, f64)>;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let is_clustered = std::env::args().any(|a| a == "clustered");
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let (vectors, queries) = if is_clustered {
        clustered(&mut rng, n, QUERIES)
    } else {
        let mut draw = |m: usize| (0..m).map(|_| random_unit(&mut rng)).collect::<Vec<_>>();
        (draw(n), draw(QUERIES))
    };
    let items: Vec<(u64, Vector)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, Arc::from(v.as_slice())))
        .collect();
    let truth: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| {
            exact::top_k(q, items.iter().map(|(s, v)| (*s, &v[..])), K)
                .into_iter()
                .map(|h| h.0)
                .collect()
        })
        .collect();

    // Build time alone: calibration (searches after the build) off.
    let params = HnswParams {
        target_recall: 0.0,
        ..HnswParams::default()
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "{n} {} {DIMS}-d unit vectors, {QUERIES} queries one at a time x {ROUNDS} rounds, k {K}, M {}, ef_construction {}, build on {cores} cores",
        if is_clustered { "clustered" } else { "uniform" },
        params.m,
        params.ef_construction
    );
    let t = Instant::now();
    let index = AnnIndex::new(params.clone(), &items);
    let ours_build = t.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("vectors.bin");
    write_vectors(&file, &vectors, &queries, DIMS, &truth);
    let faiss = Faiss::build(&file, &dir.path().join("faiss.index"), &params);

    // What a gallery's calibration would pick on this graph (index.target_recall).
    let target = HnswParams::default().target_recall;
    let (graph, _) = index.graph().expect("a graph");
    let t = Instant::now();
    let cal = calibrate(
        &graph,
        &items,
        target,
        200,
        params.max_ef_search as usize,
        ours_build,
    );
    println!(
        "calibration (target {target}): ef {} with recall@10 {:.3} on {} of the items, {:.1} s",
        cal.ef,
        cal.recall,
        cal.sample,
        t.elapsed().as_secs_f64()
    );
    let (mut ours, mut theirs): (Rows, Rows) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        merge(&mut ours, search_ours(&index, &queries, &truth));
        if let Some(f) = &faiss {
            merge(&mut theirs, f.search());
        }
    }

    let show = |name: &str, build_s: f64, rows: &Rows| {
        println!("{name:<8} build {build_s:6.1} s");
        for (ef, ms, recall) in rows {
            println!(
                "{name:<8} ef {ef:>4}  p50 {:7.2} ms  p99 {:7.2} ms  recall@10 {recall:.3}",
                percentile(ms, 0.5),
                percentile(ms, 0.99)
            );
        }
    };
    show("hnsw_rs", ours_build, &ours);
    let Some(f) = faiss else {
        println!("(set LOOKALIKE_BENCH_PYTHON to a python with benches/requirements-speed.txt for faiss)");
        return;
    };
    show("faiss", f.build_s, &theirs);
    println!("hnsw_rs / faiss: build {:.2}x", ours_build / f.build_s);
    println!("at equal recall (faiss at its smallest ef with at least hnsw_rs's recall):");
    for (ef, ms, recall) in &ours {
        match theirs.iter().find(|r| r.2 >= *recall) {
            Some((fef, fms, frecall)) => println!(
                "  hnsw_rs ef {ef:>4} ({recall:.3}) vs faiss ef {fef:>4} ({frecall:.3}): p50 {:.2}x  p99 {:.2}x",
                percentile(ms, 0.5) / percentile(fms, 0.5),
                percentile(ms, 0.99) / percentile(fms, 0.99)
            ),
            None => println!("  hnsw_rs ef {ef:>4} ({recall:.3}): faiss reaches no such recall here"),
        }
    }
}

/// Adds one round's times to `acc` (same efs, same recall every round).
fn merge(acc: &mut Rows, round: Rows) {
    if acc.is_empty() {
        *acc = round;
    } else {
        for (a, (_, ms, _)) in acc.iter_mut().zip(round) {
            a.1.extend(ms);
        }
    }
    for a in acc.iter_mut() {
        a.1.sort_by(f64::total_cmp);
    }
}

fn search_ours(index: &AnnIndex, queries: &[Vec<f32>], truth: &[Vec<u64>]) -> Rows {
    EFS.iter()
        .map(|&ef| {
            let mut times = Vec::new();
            let mut found = 0;
            for (q, want) in queries.iter().zip(truth) {
                let t = Instant::now();
                let hits = index.search(q, K, ef, &|_| true).unwrap_or_default();
                times.push(t.elapsed().as_secs_f64() * 1e3);
                found += want
                    .iter()
                    .filter(|w| hits.iter().any(|h| h.0 == **w))
                    .count();
            }
            (ef, times, found as f64 / (queries.len() * K) as f64)
        })
        .collect()
}

/// benches/ann_faiss.py: its index built once, searched per round.
struct Faiss {
    py: String,
    file: std::path::PathBuf,
    index: std::path::PathBuf,
    build_s: f64,
}

impl Faiss {
    fn build(file: &Path, index: &Path, params: &HnswParams) -> Option<Self> {
        let py = std::env::var("LOOKALIKE_BENCH_PYTHON").ok()?;
        let mut f = Self {
            py,
            file: file.to_path_buf(),
            index: index.to_path_buf(),
            build_s: 0.0,
        };
        let v = f.run(&[
            "build",
            &params.m.to_string(),
            &params.ef_construction.to_string(),
        ]);
        f.build_s = v["build_s"].as_f64().expect("build_s");
        Some(f)
    }

    fn search(&self) -> Rows {
        let efs: Vec<String> = EFS.iter().map(|e| e.to_string()).collect();
        let v = self.run(&["query", &K.to_string(), &efs.join(",")]);
        v["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let ms = millis(&r["seconds"]);
                let ef = r["ef"].as_u64().expect("ef") as usize;
                (ef, ms, r["recall"].as_f64().expect("recall"))
            })
            .collect()
    }

    fn run(&self, args: &[&str]) -> serde_json::Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/ann_faiss.py");
        run_reference(
            Command::new(&self.py)
                .arg(script)
                .arg(args[0])
                .arg(&self.file)
                .arg(&self.index)
                .args(&args[1..]),
        )
    }
}
