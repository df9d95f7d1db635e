//! Search latency, exact vs ANN, on synthetic unit descriptors.
//!
//!     cargo bench --bench search -- [N ...]      (default: 10000 100000)
//!
//! Prints build time, recall@10 against brute force, and p50/p99 latency
//! per query for exact search and for HNSW at several ef values.
//!
//! The descriptors are clustered like a product gallery (groups of ~20
//! photos of one product around a centre), not uniform on the sphere:
//! uniform 512-d vectors have no neighbourhood structure, so a graph walk
//! visits much of the graph and says little about real galleries (that
//! harder case is the recall test in tests/ann_recall.rs).

use std::sync::Arc;
use std::time::Instant;

use lookalike::index::{distance::normalised, exact, AnnIndex, HnswParams, Vector};
use rand::{Rng, SeedableRng};

const DIMS: usize = 512;
const QUERIES: usize = 300;
const K: usize = 10;

fn random_unit(rng: &mut impl Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIMS).map(|_| rng.random::<f32>() - 0.5).collect();
    normalised(&v).expect("non-zero")
}

/// A photo of product `centre`: the centre plus as much noise again.
fn near(rng: &mut impl Rng, centre: &[f32]) -> Vec<f32> {
    let noise = random_unit(rng);
    let v: Vec<f32> = centre
        .iter()
        .zip(&noise)
        .map(|(c, n)| c + 0.8 * n)
        .collect();
    normalised(&v).expect("non-zero")
}

fn percentile(sorted_us: &[f64], p: f64) -> f64 {
    sorted_us[((sorted_us.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    let params = HnswParams::default();
    println!(
        "dims {DIMS}, k {K}, {QUERIES} queries, m {}, ef_construction {}",
        params.m, params.ef_construction
    );
    for n in sizes {
        let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
        let centres: Vec<Vec<f32>> = (0..n / 20).map(|_| random_unit(&mut rng)).collect();
        let items: Vec<(u64, Vector)> = (0..n)
            .map(|i| {
                (
                    i as u64,
                    Arc::from(near(&mut rng, &centres[i % centres.len()])),
                )
            })
            .collect();
        let queries: Vec<Vec<f32>> = (0..QUERIES)
            .map(|i| near(&mut rng, &centres[(i * 7919) % centres.len()]))
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
        for ef in [64, 128, 256, 512] {
            let mut times = Vec::new();
            let mut found = 0;
            for (q, t_hits) in queries.iter().zip(&truth) {
                let t = Instant::now();
                let hits = index.search(q, K, ef, &|_| true);
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
