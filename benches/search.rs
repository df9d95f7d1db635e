//! Search latency, exact vs ANN, on synthetic unit descriptors.
//!
//!     cargo bench --bench search -- [N ...] [uniform]   (default: 10000 100000)
//!
//! Prints build time, recall@10 against brute force, and p50/p99 latency
//! per query for exact search and for HNSW at several ef values.
//!
//! The descriptors are clustered like a product gallery (groups of ~20
//! photos of one product around a centre), not uniform on the sphere:
//! uniform 512-d vectors have no neighbourhood structure, so a graph walk
//! visits much of the graph and says little about real galleries (that
//! harder case is the recall test in tests/ann_recall.rs).

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{clustered, gallery_sizes, percentile, random_unit, DIMS};
use lookalike::index::{exact, AnnIndex, HnswParams, Vector};
use rand::SeedableRng;

const QUERIES: usize = 300;
const K: usize = 10;

fn main() {
    let sizes = gallery_sizes();
    let params = HnswParams {
        target_recall: 0.0,
        ..HnswParams::default()
    };
    println!(
        "dims {DIMS}, k {K}, {QUERIES} queries, m {}, ef_construction {}",
        params.m, params.ef_construction
    );
    // `uniform`: directions with no neighbourhood structure, the hard
    // recall case of tests/ann_recall.rs, instead of clustered ones.
    let uniform = std::env::args().any(|a| a == "uniform");
    for n in sizes {
        let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
        let (vectors, queries) = if uniform {
            let mut draw = |m: usize| (0..m).map(|_| random_unit(&mut rng)).collect::<Vec<_>>();
            (draw(n), draw(QUERIES))
        } else {
            clustered(&mut rng, n, QUERIES)
        };
        let items: Vec<(u64, Vector)> = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64, Arc::from(v)))
            .collect();
        let t = Instant::now();
        let index = AnnIndex::new(params.clone(), &items);
        println!("\nN = {n}: HNSW build {:.1} s", t.elapsed().as_secs_f64());

        let mut times = Vec::new();
        let mut truth = Vec::new();
        for q in &queries {
            let t = Instant::now();
            truth.push(exact::top_k(q, items.iter().map(|(s, v)| (*s, &v[..])), K));
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "  exact        p50 {:>9.0} us  p99 {:>9.0} us  recall 1.000",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
        for ef in [64, 128, 256, 512, 1024, 2048] {
            let mut times = Vec::new();
            let mut found = 0;
            for (q, t_hits) in queries.iter().zip(&truth) {
                let t = Instant::now();
                let hits = index.search(q, K, ef, &|_| true).unwrap_or_default();
                times.push(t.elapsed().as_secs_f64() * 1e6);
                found += t_hits
                    .iter()
                    .filter(|h| hits.iter().any(|a| a.0 == h.0))
                    .count();
            }
            times.sort_by(f64::total_cmp);
            println!(
                "  hnsw ef {ef:>3}  p50 {:>9.0} us  p99 {:>9.0} us  recall {:.3}",
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                found as f64 / (QUERIES * K) as f64
            );
        }
    }
}
