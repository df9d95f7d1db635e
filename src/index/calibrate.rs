//! Per-graph ef calibration: after a build, the smallest ef whose
//! recall@10 against exact search, over a sample of the gallery's own
//! items, reaches the target. Real galleries cluster and need far less
//! than the uniform worst case the default `ef_search` is sized for
//! (BENCHMARKS.md: ef 64 against 1024).

use rayon::prelude::*;

use super::{exact, Graph, Vector};

/// Neighbours per sampled item that recall is measured on.
const K: usize = 10;

/// What a build measured about its graph (GalleryStats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The beam width searches use by default from now on.
    pub ef: usize,
    /// recall@10 at `ef` on the sample.
    pub recall: f64,
    /// Whether `recall` reached the target (else `ef` is the largest tried).
    pub reached: bool,
    /// Items the recall was measured on.
    pub sample: usize,
    pub build_seconds: f64,
}

/// The smallest ef in 16, 24, 32, 48, 64, ... (steps of about 1.5x) up to
/// `max_ef` whose recall@10 on up to `sample` items of `live` reaches
/// `target`. Each sampled item is a query for its own nearest others (the
/// item itself is left out of both sides).
pub fn calibrate(
    graph: &Graph,
    live: &[(u64, Vector)],
    target: f64,
    sample: usize,
    max_ef: usize,
    build_seconds: f64,
) -> Calibration {
    let n = live.len();
    let step = (n / sample.max(1)).max(1);
    let picked: Vec<&(u64, Vector)> = live.iter().step_by(step).take(sample).collect();
    let truth: Vec<Vec<u64>> = picked
        .par_iter()
        .map(|(point, v)| {
            let all = live.iter().map(|(p, w)| (*p, &w[..]));
            others(exact::top_k(v, all, K + 1), *point)
        })
        .collect();
    let wanted: usize = truth.iter().map(Vec::len).sum();
    let recall_at = |ef: usize| -> f64 {
        let found: usize = picked
            .par_iter()
            .zip(&truth)
            .map(|((point, v), want)| {
                let got: Vec<(u64, f32)> = graph
                    .search(v, K + 1, ef.max(K + 1))
                    .into_iter()
                    .map(|h| (h.d_id as u64, h.distance))
                    .collect();
                let got = others(got, *point);
                want.iter().filter(|w| got.contains(w)).count()
            })
            .sum();
        if wanted == 0 {
            1.0
        } else {
            found as f64 / wanted as f64
        }
    };
    let mut ef = 16;
    let last = loop {
        let recall = recall_at(ef);
        if recall >= target || ef >= max_ef {
            break (ef, recall);
        }
        // 16, 24, 32, 48, 64, 96, ...: within 1.5x of the smallest.
        ef = if ef.is_power_of_two() {
            ef + ef / 2
        } else {
            ef / 3 * 4
        }
        .min(max_ef);
    };
    Calibration {
        ef: last.0,
        recall: last.1,
        reached: last.1 >= target,
        sample: picked.len(),
        build_seconds,
    }
}

/// The first `K` point ids of `hits` other than `own`.
fn others(hits: Vec<(u64, f32)>, own: u64) -> Vec<u64> {
    hits.into_iter()
        .map(|h| h.0)
        .filter(|p| *p != own)
        .take(K)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::index::distance::normalised;
    use crate::index::{build, HnswParams};

    fn unit(rng: &mut impl Rng, d: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..d).map(|_| rng.random::<f32>() - 0.5).collect();
        normalised(&v).unwrap()
    }

    /// Clustered points (groups of 10 around a centre) and uniform ones:
    /// the clustered gallery reaches the target at a smaller ef, and the
    /// reported recall is what a search at that ef measures.
    #[test]
    fn clustered_galleries_calibrate_to_a_smaller_ef_than_uniform_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let d = 64;
        let n = 3000;
        let centres: Vec<Vec<f32>> = (0..n / 10).map(|_| unit(&mut rng, d)).collect();
        let clustered: Vec<(u64, Vector)> = (0..n)
            .map(|i| {
                let noise = unit(&mut rng, d);
                let v: Vec<f32> = centres[i % centres.len()]
                    .iter()
                    .zip(&noise)
                    .map(|(c, e)| c + 0.5 * e)
                    .collect();
                (i as u64, Arc::from(normalised(&v).unwrap()))
            })
            .collect();
        let uniform: Vec<(u64, Vector)> = (0..n)
            .map(|i| (i as u64, Arc::from(unit(&mut rng, d))))
            .collect();
        let params = HnswParams {
            m: 8,
            ef_construction: 64,
            ..HnswParams::default()
        };
        let cal = |live: &[(u64, Vector)]| {
            let graph = build(&params, live);
            (calibrate(&graph, live, 0.98, 200, 4096, 0.0), graph)
        };
        let (c, graph) = cal(&clustered);
        let (u, ugraph) = cal(&uniform);
        assert!(c.reached && u.reached, "{c:?} {u:?}");
        assert!(c.recall >= 0.98 && u.recall >= 0.98);
        assert!(c.ef < u.ef, "clustered {c:?} uniform {u:?}");
        assert_eq!(c.sample, 200);
        // Smallest: one step down no longer reaches the target.
        if u.ef > 16 {
            let below = if u.ef.is_power_of_two() {
                u.ef / 4 * 3
            } else {
                u.ef / 3 * 2
            };
            let again = calibrate(&ugraph, &uniform, 0.98, 200, below, 0.0);
            assert!(!again.reached, "{below}: {again:?}");
        }
        // An unreachable target stops at the cap and says so.
        let capped = calibrate(&graph, &clustered, 1.01, 50, 64, 0.0);
        assert_eq!((capped.ef, capped.reached), (64, false));
    }
}
