//! The DIGIX 2020 batch order, spec section 4, steps 1-7. Nothing is
//! re-normalised after step 1.
//!
//! Reading of steps 4-6: query AQE (step 4) and query DBA (step 5) both
//! take their neighbours from the step-3 KR ranking and the step-2
//! (PCA'd) gallery; DBA is applied to the AQE output; gallery AQE (step 6)
//! starts from the step-2 gallery too. Step 7 runs KR on (step-5 queries,
//! step-6 gallery).

use ndarray::{concatenate, Array2, ArrayView2, Axis};

use super::aqe::{aqe, gallery_aqe};
use super::dba::query_dba;
use super::kreciprocal::{k_reciprocal, KrParams};
use super::pca::Pca;
use super::{Ranking, RerankError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DigixParams {
    pub pca_dims: usize,
    pub kr: KrParams,
    pub query_aqe_k: usize,
    pub query_dba_k: usize,
    pub gallery_aqe_k: usize,
    pub top_n: usize,
}

impl Default for DigixParams {
    fn default() -> Self {
        Self {
            pca_dims: 512,
            kr: KrParams::default(),
            query_aqe_k: 1,
            query_dba_k: 10,
            gallery_aqe_k: 1,
            top_n: 10,
        }
    }
}

/// Step 1: L2-normalise each backbone's rows (a zero row stays zero), then
/// concatenate the backbones in the given order.
pub fn normalise_concat(parts: &[ArrayView2<f32>]) -> Result<Array2<f32>, RerankError> {
    let first = parts
        .first()
        .ok_or(RerankError::Empty { what: "backbones" })?;
    let n = first.nrows();
    let mut normed = Vec::with_capacity(parts.len());
    for p in parts {
        if p.nrows() != n {
            return Err(RerankError::DimMismatch {
                what: "backbone rows",
                got: p.nrows(),
                expected: n,
            });
        }
        let mut a = p.to_owned();
        for mut row in a.rows_mut() {
            let nrm = row
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            if nrm > 0.0 {
                row.mapv_inplace(|v| (f64::from(v) / nrm) as f32);
            }
        }
        normed.push(a);
    }
    let views: Vec<ArrayView2<f32>> = normed.iter().map(|a| a.view()).collect();
    concatenate(Axis(1), &views).map_err(|_| RerankError::Empty { what: "backbones" })
}

/// Steps 1-7 on per-backbone query and gallery descriptors: the top
/// `top_n` gallery indices per query.
pub fn digix(
    queries: &[ArrayView2<f32>],
    gallery: &[ArrayView2<f32>],
    p: &DigixParams,
) -> Result<Ranking, RerankError> {
    if queries.len() != gallery.len() {
        return Err(RerankError::DimMismatch {
            what: "gallery backbones",
            got: gallery.len(),
            expected: queries.len(),
        });
    }
    for (q, g) in queries.iter().zip(gallery) {
        if q.ncols() != g.ncols() {
            return Err(RerankError::DimMismatch {
                what: "gallery backbone",
                got: g.ncols(),
                expected: q.ncols(),
            });
        }
    }
    let q = normalise_concat(queries)?;
    let g = normalise_concat(gallery)?;
    digix_concat(q.view(), g.view(), p)
}

/// Steps 2-7 on already normalised and concatenated descriptors.
pub fn digix_concat(
    q: ArrayView2<f32>,
    g: ArrayView2<f32>,
    p: &DigixParams,
) -> Result<Ranking, RerankError> {
    let pca = Pca::fit(q, p.pca_dims)?;
    let (q, g) = (pca.transform(q)?, pca.transform(g)?);
    let need = p.query_aqe_k.max(p.query_dba_k);
    let r3 = k_reciprocal(q.view(), g.view(), &p.kr, need)?.ids;
    let q4 = aqe(q.view(), g.view(), &r3, p.query_aqe_k)?;
    let q5 = query_dba(q4.view(), g.view(), &r3, p.query_dba_k, false)?;
    let g6 = gallery_aqe(g.view(), p.gallery_aqe_k)?;
    Ok(k_reciprocal(q5.view(), g6.view(), &p.kr, p.top_n)?.ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rerank::dba::dba_weights;
    use crate::rerank::kreciprocal::tests::{random, reference_kr};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Steps 1-7 by literal loops, with the dense reference KR.
    fn reference(qs: &[Array2<f32>], gs: &[Array2<f32>], p: &DigixParams) -> Ranking {
        let norm = |a: &Array2<f32>| -> Array2<f32> {
            let mut a = a.clone();
            for mut r in a.rows_mut() {
                let n = r
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    .sqrt();
                r.mapv_inplace(|v| (f64::from(v) / n) as f32);
            }
            a
        };
        let cat = |xs: &[Array2<f32>]| {
            let v: Vec<Array2<f32>> = xs.iter().map(norm).collect();
            let views: Vec<_> = v.iter().map(|a| a.view()).collect();
            concatenate(Axis(1), &views).unwrap()
        };
        let (q, g) = (cat(qs), cat(gs));
        let pca = Pca::fit(q.view(), p.pca_dims).unwrap();
        let (q, g) = (
            pca.transform(q.view()).unwrap(),
            pca.transform(g.view()).unwrap(),
        );
        let r3: Vec<Vec<usize>> = reference_kr(&q, &g, &p.kr)
            .into_iter()
            .map(|r| r.into_iter().map(|e| e.0).collect())
            .collect();
        let d = q.ncols();
        let mut q4 = q.clone();
        for i in 0..q.nrows() {
            for c in 0..d {
                let mut s = f64::from(q[[i, c]]);
                for t in 0..p.query_aqe_k {
                    s += f64::from(g[[r3[i][t], c]]);
                }
                q4[[i, c]] = (s / (p.query_aqe_k + 1) as f64) as f32;
            }
        }
        let w = dba_weights(p.query_dba_k);
        let mut q5 = q4.clone();
        for i in 0..q.nrows() {
            for c in 0..d {
                let mut s = w[0] * f64::from(q4[[i, c]]);
                for t in 0..p.query_dba_k {
                    s += w[t + 1] * f64::from(g[[r3[i][t], c]]);
                }
                q5[[i, c]] = s as f32;
            }
        }
        let mut g6 = g.clone();
        for i in 0..g.nrows() {
            let mut o: Vec<(f64, usize)> = (0..g.nrows())
                .filter(|&j| j != i)
                .map(|j| {
                    let d2: f64 = (0..d)
                        .map(|c| (f64::from(g[[i, c]]) - f64::from(g[[j, c]])).powi(2))
                        .sum();
                    (d2, j)
                })
                .collect();
            o.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for c in 0..d {
                let mut s = f64::from(g[[i, c]]);
                for e in o.iter().take(p.gallery_aqe_k) {
                    s += f64::from(g[[e.1, c]]);
                }
                g6[[i, c]] = (s / (p.gallery_aqe_k + 1) as f64) as f32;
            }
        }
        reference_kr(&q5, &g6, &p.kr)
            .into_iter()
            .map(|r| r.into_iter().take(p.top_n).map(|e| e.0).collect())
            .collect()
    }

    #[test]
    fn matches_reference_composition() {
        let mut rng = StdRng::seed_from_u64(21);
        for (nq, ng, dims, pca) in [
            (12usize, 40usize, [6usize, 10], 512usize),
            (30, 50, [4, 5], 6),
        ] {
            let qs: Vec<Array2<f32>> = dims
                .iter()
                .map(|&d| random(&mut rng, nq, d, false))
                .collect();
            let gs: Vec<Array2<f32>> = dims
                .iter()
                .map(|&d| random(&mut rng, ng, d, false))
                .collect();
            let p = DigixParams {
                pca_dims: pca,
                ..Default::default()
            };
            let qv: Vec<_> = qs.iter().map(|a| a.view()).collect();
            let gv: Vec<_> = gs.iter().map(|a| a.view()).collect();
            let fast = digix(&qv, &gv, &p).unwrap();
            assert_eq!(fast, reference(&qs, &gs, &p));
            assert!(fast.iter().all(|r| r.len() == 10));
        }
    }

    #[test]
    fn bad_backbones() {
        let a = Array2::<f32>::zeros((2, 3));
        let b = Array2::<f32>::zeros((2, 4));
        let p = DigixParams::default();
        assert!(digix(&[a.view()], &[b.view()], &p).is_err());
        assert!(digix(&[a.view()], &[], &p).is_err());
        assert!(digix(&[], &[], &p).is_err());
    }
}
