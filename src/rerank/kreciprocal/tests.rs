//! KR against the dense reference (`rerank::reference`), and its edge cases.
#![allow(clippy::needless_range_loop)]

use super::*;
use ndarray::{array, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The dense reference of spec section 3 (`rerank::reference::kr`).
pub(crate) use crate::rerank::reference::kr as reference_kr;

pub(crate) fn random(rng: &mut StdRng, n: usize, d: usize, int: bool) -> Array2<f32> {
    Array2::from_shape_fn((n, d), |_| {
        if int {
            rng.random_range(0..3) as f32
        } else {
            rng.random_range(-1.0f32..1.0)
        }
    })
}

fn assert_same(fast: &Ranked, reference: &[Vec<(usize, f64)>], top: usize) {
    assert_eq!(fast.ids.len(), reference.len());
    for (qi, r) in reference.iter().enumerate() {
        let ids: Vec<usize> = r.iter().take(top).map(|e| e.0).collect();
        assert_eq!(fast.ids[qi], ids, "query {qi}");
        for (a, b) in fast.dists[qi].iter().zip(r) {
            assert!((a - b.1).abs() < 1e-9, "query {qi}: {a} vs {}", b.1);
        }
    }
}

const CASES: &[(usize, usize, usize, usize, usize, f64)] = &[
    // (nq, ng, dims, k1, k2, lambda)
    (5, 30, 8, 20, 6, 0.3),
    (7, 40, 4, 5, 3, 0.5),
    (3, 12, 6, 30, 6, 0.3), // k1 larger than the set
    (4, 25, 5, 6, 1, 0.3),  // k2 = 1
    (6, 20, 3, 1, 2, 0.0),
    (2, 15, 10, 7, 20, 1.0), // k2 larger than the set
    (1, 9, 2, 3, 2, 0.3),
];

#[test]
fn batch_matches_reference_random() {
    let mut rng = StdRng::seed_from_u64(7);
    for &(nq, ng, d, k1, k2, lambda) in CASES {
        for int in [false, true] {
            let q = random(&mut rng, nq, d, int);
            let g = random(&mut rng, ng, d, int);
            let p = KrParams { k1, k2, lambda };
            let reference = reference_kr(&q, &g, &p);
            for top in [ng, 10] {
                let fast = k_reciprocal(q.view(), g.view(), &p, top).unwrap();
                assert_same(&fast, &reference, top.min(ng));
            }
        }
    }
}

#[test]
fn hand_checked_tie() {
    // q = 0, g0 = 1, g1 = -1 on a line: g0 and g1 tie as q's nearest, the
    // lower index (g0) wins. k1 = 1 (round(0.5) = 0), k2 = 1, lambda 0.5.
    let q = array![[0.0f32]];
    let g = array![[1.0f32], [-1.0]];
    let p = KrParams {
        k1: 1,
        k2: 1,
        lambda: 0.5,
    };
    let r = k_reciprocal(q.view(), g.view(), &p, 2).unwrap();
    let e1 = (-1.0f64).exp();
    let e25 = (-0.25f64).exp();
    // V(q) over {q, g0}; V(g0) over {q, g0} (D(g0,q) = 1/4); V(g1) = {g1: 1}.
    let (vq_q, vq_g0) = (1.0 / (1.0 + e1), e1 / (1.0 + e1));
    let (vg0_q, vg0_g0) = (e25 / (1.0 + e25), 1.0 / (1.0 + e25));
    let m = vq_q.min(vg0_q) + vq_g0.min(vg0_g0);
    let d0 = 0.5 * (1.0 - m / (2.0 - m)) + 0.5 * 1.0;
    assert_eq!(r.ids, vec![vec![0, 1]]);
    assert!((r.dists[0][0] - d0).abs() < 1e-12);
    assert!((r.dists[0][1] - 1.0).abs() < 1e-12);
}

#[test]
fn duplicate_points_self_first() {
    // g0 duplicates q: D(q, g0) = 0, yet q stays first in N(q, k).
    let q = array![[0.0f32, 0.0]];
    let g = array![[0.0f32, 0.0], [1.0, 0.0], [0.0, 2.0], [2.0, 2.0]];
    for k1 in 1..5 {
        for k2 in 1..4 {
            let p = KrParams {
                k1,
                k2,
                lambda: 0.3,
            };
            let fast = k_reciprocal(q.view(), g.view(), &p, 4).unwrap();
            assert_same(&fast, &reference_kr(&q, &g, &p), 4);
            assert_eq!(fast.ids[0][0], 0);
        }
    }
}

#[test]
fn half_k1_rounds_to_even() {
    let h = |k1| {
        KrParams {
            k1,
            k2: 1,
            lambda: 0.3,
        }
        .half_k1()
    };
    assert_eq!((h(20), h(5), h(7), h(1), h(2)), (10, 2, 4, 0, 1));
}

#[test]
fn single_query_equals_batch() {
    let mut rng = StdRng::seed_from_u64(11);
    for &(_, ng, d, k1, k2, lambda) in CASES {
        for int in [false, true] {
            let q = random(&mut rng, 1, d, int);
            let g = random(&mut rng, ng, d, int);
            let p = KrParams { k1, k2, lambda };
            let batch = k_reciprocal(q.view(), g.view(), &p, ng).unwrap();
            let nb = GalleryNeighbours::build(g.view(), k1.max(k2)).unwrap();
            let all: Vec<usize> = (0..ng).collect();
            let single = kr_single(q.row(0), g.view(), &nb, &all, None, &p, ng).unwrap();
            let mx = query_max_d2(q.row(0), g.view(), &nb).unwrap();
            let with_max = kr_single(q.row(0), g.view(), &nb, &all, Some(mx), &p, ng).unwrap();
            assert_eq!(with_max, single);
            let ids: Vec<usize> = single.iter().map(|e| e.0).collect();
            assert_eq!(ids, batch.ids[0], "ng {ng} k1 {k1} k2 {k2} int {int}");
            for (a, b) in single.iter().zip(&batch.dists[0]) {
                assert!((a.1 - b).abs() < 1e-9);
            }
        }
    }
}

#[test]
fn single_query_shortlist_subset() {
    let mut rng = StdRng::seed_from_u64(3);
    let q = random(&mut rng, 1, 6, false);
    let g = random(&mut rng, 40, 6, false);
    let p = KrParams::default();
    let nb = GalleryNeighbours::build(g.view(), 20).unwrap();
    let sl = [3usize, 7, 9, 20, 21, 39, 7];
    let out = kr_single(q.row(0), g.view(), &nb, &sl, None, &p, 10).unwrap();
    assert_eq!(out.len(), 6); // deduplicated
    assert!(out.iter().all(|e| sl.contains(&e.0)));
    assert!(out.windows(2).all(|w| w[0].1 <= w[1].1));
    // Stored parts round-trip.
    let (k, n2, ids, d2, mx) = nb.parts();
    let back =
        GalleryNeighbours::from_parts(k, n2.to_vec(), ids.to_vec(), d2.to_vec(), mx.to_vec())
            .unwrap();
    assert_eq!(
        kr_single(q.row(0), g.view(), &back, &sl, None, &p, 10).unwrap(),
        out
    );
    assert!(
        GalleryNeighbours::from_parts(k, n2.to_vec(), ids.to_vec(), d2.to_vec(), vec![]).is_err()
    );
    // Too few stored neighbours is an error.
    let small = GalleryNeighbours::build(g.view(), 5).unwrap();
    assert!(matches!(
        kr_single(q.row(0), g.view(), &small, &sl, None, &p, 10),
        Err(RerankError::BadParam { .. })
    ));
}

#[test]
fn bad_input() {
    let q = array![[0.0f32, 1.0]];
    let g = array![[0.0f32], [1.0]];
    let p = KrParams::default();
    assert!(matches!(
        k_reciprocal(q.view(), g.view(), &p, 5),
        Err(RerankError::DimMismatch { .. })
    ));
    let bad = KrParams { k1: 0, ..p };
    assert!(matches!(
        k_reciprocal(g.view(), g.view(), &bad, 5),
        Err(RerankError::BadParam { .. })
    ));
    let bad = KrParams { lambda: 1.5, ..p };
    assert!(matches!(
        k_reciprocal(g.view(), g.view(), &bad, 5),
        Err(RerankError::BadParam { .. })
    ));
    let empty = Array2::<f32>::zeros((0, 1));
    assert!(matches!(
        k_reciprocal(empty.view(), g.view(), &p, 5),
        Err(RerankError::Empty { .. })
    ));
    let nan = array![[f32::NAN]];
    assert!(matches!(
        k_reciprocal(nan.view(), g.view(), &p, 5),
        Err(RerankError::NonFinite { .. })
    ));
}

#[test]
fn large_offset_still_exact() {
    // Far from the origin the f32 screening bound is loose; results must
    // still be those of the f64 definition.
    let mut rng = StdRng::seed_from_u64(19);
    let q = random(&mut rng, 6, 8, false).mapv(|v| v + 300.0);
    let g = random(&mut rng, 40, 8, false).mapv(|v| v + 300.0);
    let p = KrParams {
        k1: 6,
        k2: 3,
        lambda: 0.3,
    };
    let fast = k_reciprocal(q.view(), g.view(), &p, 10).unwrap();
    let reference = reference_kr(&q, &g, &p);
    for (qi, r) in reference.iter().enumerate() {
        let ids: Vec<usize> = r.iter().take(10).map(|e| e.0).collect();
        assert_eq!(fast.ids[qi], ids);
    }
}

#[test]
fn screening_kicks_in() {
    // Sets large enough that k1 + 1 < N and top_n < gallery: the f32
    // screening path decides, and must agree with the dense reference.
    let mut rng = StdRng::seed_from_u64(23);
    for _ in 0..3 {
        let q = random(&mut rng, 20, 16, false);
        let g = random(&mut rng, 120, 16, false);
        let p = KrParams::default();
        let fast = k_reciprocal(q.view(), g.view(), &p, 10).unwrap();
        assert_same(&fast, &reference_kr(&q, &g, &p), 10);
    }
}

#[test]
fn several_blocks_match_reference() {
    // N = 600 spans three 256-row blocks of the symmetric screening, so
    // the off-diagonal (transposed) path decides too.
    let mut rng = StdRng::seed_from_u64(29);
    let q = random(&mut rng, 40, 6, false);
    let g = random(&mut rng, 560, 6, false);
    let p = KrParams {
        k1: 12,
        k2: 4,
        lambda: 0.3,
    };
    let fast = k_reciprocal(q.view(), g.view(), &p, 10).unwrap();
    assert_same(&fast, &reference_kr(&q, &g, &p), 10);
    // Gallery neighbour lists against brute force.
    let nb = GalleryNeighbours::build(g.view(), 15).unwrap();
    for i in (0..560).step_by(37) {
        let mut o: Vec<(f64, usize)> = (0..560)
            .filter(|&j| j != i)
            .map(|j| {
                let d: f64 = g
                    .row(i)
                    .iter()
                    .zip(g.row(j))
                    .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                    .sum();
                (d, j)
            })
            .collect();
        o.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let want: Vec<u32> = o.iter().take(15).map(|e| e.1 as u32).collect();
        assert_eq!(&nb.ids[i * 15..(i + 1) * 15], want.as_slice());
        assert!((nb.row_max[i] - o.last().unwrap().0).abs() < 1e-9);
    }
}
