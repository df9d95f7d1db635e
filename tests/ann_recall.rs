//! ANN recall against brute force, at the default parameters.

use std::sync::Arc;

use lookalike::index::{exact, AnnIndex, HnswParams, Vector};
use rand::{Rng, SeedableRng};

fn random_unit(rng: &mut impl Rng, dims: usize) -> Vec<f32> {
    loop {
        // Gaussian via Box-Muller gives directions uniform on the sphere.
        let v: Vec<f32> = (0..dims)
            .map(|_| {
                let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        if let Some(n) = lookalike::index::distance::normalised(&v) {
            return n;
        }
    }
}

#[test]
fn recall_at_10_on_20k_random_512d_unit_vectors() {
    let (n, dims, queries, k) = (20_000, 512, 200, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let items: Vec<(u64, Vector)> = (0..n)
        .map(|i| (i as u64, Arc::from(random_unit(&mut rng, dims))))
        .collect();
    let params = HnswParams::default();
    let index = AnnIndex::new(params.clone(), &items);
    let mut found = 0;
    for _ in 0..queries {
        let q = random_unit(&mut rng, dims);
        let truth = exact::top_k(&q, items.iter().map(|(s, v)| (*s, &v[..])), k);
        let ann = index.search(&q, k, params.ef_search, &|_| true).unwrap();
        found += truth
            .iter()
            .filter(|t| ann.iter().any(|a| a.0 == t.0))
            .count();
    }
    let recall = found as f64 / (queries * k) as f64;
    println!(
        "recall@10 = {recall:.4} (m {}, ef_construction {}, ef {})",
        params.m, params.ef_construction, params.ef_search
    );
    assert!(recall >= 0.98, "recall@10 {recall}");
}

#[test]
fn removed_items_are_filtered_and_rebuild_keeps_concurrent_inserts() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let items: Vec<(u64, Vector)> = (0..500)
        .map(|i| (i, Arc::from(random_unit(&mut rng, 32))))
        .collect();
    let index = AnnIndex::new(HnswParams::default(), &items);
    let q = items[3].1.clone();
    // Item 3 "removed": the filter hides it.
    let hits = index.search(&q, 5, 64, &|s| s != 3).unwrap();
    assert!(hits.iter().all(|h| h.0 != 3));
    assert_eq!(hits.len(), 5);

    assert!(index.begin_rebuild());
    assert!(!index.begin_rebuild(), "only one rebuild at a time");
    let extra: Vector = Arc::from(random_unit(&mut rng, 32));
    index.insert(1000, extra.clone()); // arrives during the rebuild
    let live: Vec<_> = items.iter().filter(|(s, _)| *s != 3).cloned().collect();
    index.finish_rebuild(&live);
    let status = index.status();
    assert_eq!(
        (status.points, status.rebuilding, status.generation),
        (500, false, 1)
    );
    assert_eq!(index.search(&extra, 1, 64, &|_| true).unwrap()[0].0, 1000);
}

#[test]
fn filtered_search_widens_then_gives_up_to_exact_search() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let items: Vec<(u64, Vector)> = (0..3000)
        .map(|i| (i, Arc::from(random_unit(&mut rng, 32))))
        .collect();
    let index = AnnIndex::new(HnswParams::default(), &items);
    let mut found = 0;
    for _ in 0..20 {
        let q = random_unit(&mut rng, 32);
        // One point in ten passes: the search must widen to find 10.
        let keep = |s: u64| s.is_multiple_of(10);
        let hits = index.search(&q, 10, 128, &keep).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| keep(h.0)));
        assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1), "nearest first");
        let kept = items.iter().filter(|(s, _)| keep(*s));
        let truth = exact::top_k(&q, kept.map(|(s, v)| (*s, &v[..])), 10);
        found += truth
            .iter()
            .filter(|t| hits.iter().any(|h| h.0 == t.0))
            .count();
    }
    assert!(found >= 190, "recall@10 under the filter: {found}/200");
    // Two points in 3000 pass: not worth the graph; the caller goes exact.
    let q = random_unit(&mut rng, 32);
    assert!(index.search(&q, 10, 128, &|s| s == 5 || s == 7).is_none());
}
