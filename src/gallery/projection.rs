//! Gallery-fitted projection (spec section 3, online option): PCA of the
//! gallery's own unit descriptors, optionally with shrunk whitening,
//! `y = norm(diag(s)^(-beta/2) U^T (x - mu))`, fitted at refresh time.
//!
//! Projected vectors are zero-padded back to the gallery's dimension, so
//! the ANN index, the exact scan and the wire format keep one size; the
//! zeros change no distance. Stages that work on the projected rows
//! directly (neighbour lists, KR) use the first `components()` columns.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::rerank::pca::Pca;
use crate::rerank::RerankError;

/// `[post_processing] projection_components` / `projection_beta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProjectionConfig {
    /// Components kept at most (p); fewer with few items (n - 1) or dims.
    pub components: usize,
    /// 0: plain PCA; 1: full whitening; between: shrunk whitening.
    pub beta: f64,
}

#[derive(Debug)]
pub struct Projection {
    mean: Array1<f32>,
    /// `dims x components`, each column scaled by `s^(-beta/2)`.
    weights: Array2<f32>,
}

impl Projection {
    /// Fits on the rows of `x` (unit descriptors). None when no component
    /// has variance (fewer than two distinct rows).
    pub fn fit(x: ArrayView2<f32>, cfg: &ProjectionConfig) -> Result<Option<Self>, RerankError> {
        if x.nrows() < 2 {
            return Ok(None);
        }
        let pca = Pca::fit(x, cfg.components)?;
        if pca.n_components() == 0 {
            return Ok(None);
        }
        let mut weights = pca.components.clone();
        for (mut col, &s) in weights.axis_iter_mut(Axis(1)).zip(&pca.explained_variance) {
            col.mapv_inplace(|w| w * s.powf(-cfg.beta / 2.0));
        }
        Ok(Some(Self {
            mean: pca.mean.mapv(|v| v as f32),
            weights: weights.mapv(|v| v as f32),
        }))
    }

    /// A fit saved with the gallery's derived state (`persist`): the mean
    /// (`dims`) and the scaled components (`dims x components`).
    pub fn from_parts(mean: Array1<f32>, weights: Array2<f32>) -> Result<Self, RerankError> {
        if weights.nrows() != mean.len() || weights.ncols() == 0 {
            return Err(RerankError::DimMismatch {
                what: "saved projection weights",
                got: weights.nrows(),
                expected: mean.len(),
            });
        }
        Ok(Self { mean, weights })
    }

    /// The mean and the scaled components, as `from_parts` takes them.
    pub fn parts(&self) -> (&Array1<f32>, &Array2<f32>) {
        (&self.mean, &self.weights)
    }

    pub fn components(&self) -> usize {
        self.weights.ncols()
    }

    pub fn dims(&self) -> usize {
        self.mean.len()
    }

    /// Projected unit rows, `components()` wide (a row at the mean stays 0).
    pub fn transform(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, RerankError> {
        if x.ncols() != self.dims() {
            return Err(RerankError::DimMismatch {
                what: "projection input",
                got: x.ncols(),
                expected: self.dims(),
            });
        }
        let mut y = (&x - &self.mean).dot(&self.weights);
        for mut row in y.rows_mut() {
            let n = row.dot(&row).sqrt();
            if n > 0.0 && n.is_finite() {
                row /= n;
            }
        }
        Ok(y)
    }

    /// One projected unit vector, zero-padded to `dims()`.
    pub fn apply(&self, v: &[f32]) -> Result<Vec<f32>, RerankError> {
        let x = ArrayView2::from_shape((1, v.len()), v).map_err(|_| RerankError::DimMismatch {
            what: "projection input",
            got: v.len(),
            expected: self.dims(),
        })?;
        let y = self.transform(x)?;
        Ok(pad(y.row(0).iter().copied(), self.dims()))
    }
}

/// `values` followed by zeros up to `dims`.
pub fn pad(values: impl IntoIterator<Item = f32>, dims: usize) -> Vec<f32> {
    let mut out: Vec<f32> = values.into_iter().collect();
    out.resize(dims, 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rerank::reference;
    use rand::SeedableRng;

    fn clustered(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres = reference::centres(&mut rng, 12, d);
        reference::clustered(&mut rng, &centres, n, 0.6).0
    }

    /// Against the dense reference: the same projected rows up to each
    /// component's sign, so the same distances, for PCA and whitening.
    #[test]
    fn matches_the_reference_distances() {
        let x = clustered(300, 40, 1);
        let q = clustered(20, 40, 2);
        for (p, beta) in [(16, 0.0), (16, 1.0), (512, 0.5)] {
            let cfg = ProjectionConfig {
                components: p,
                beta,
            };
            let proj = Projection::fit(x.view(), &cfg).unwrap().unwrap();
            assert_eq!(proj.components(), p.min(299).min(40));
            let ours = proj.transform(q.view()).unwrap();
            let gal = proj.transform(x.view()).unwrap();
            let want = reference::gallery_projection(&x, p, beta, &[&q, &x]);
            for i in 0..q.nrows() {
                for j in (0..x.nrows()).step_by(7) {
                    let a: f32 = (&ours.row(i) - &gal.row(j)).mapv(|v| v * v).sum();
                    let b: f32 = (&want[0].row(i) - &want[1].row(j)).mapv(|v| v * v).sum();
                    assert!((a - b).abs() < 1e-4, "p {p} beta {beta}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn apply_pads_a_unit_vector_and_checks_dims() {
        let x = clustered(50, 24, 3);
        let cfg = ProjectionConfig {
            components: 8,
            beta: 0.0,
        };
        let proj = Projection::fit(x.view(), &cfg).unwrap().unwrap();
        let y = proj.apply(x.row(0).as_slice().unwrap()).unwrap();
        assert_eq!(y.len(), 24);
        assert!(y[8..].iter().all(|&v| v == 0.0));
        let n: f32 = y.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-5);
        assert!(matches!(
            proj.apply(&[0.5; 23]),
            Err(RerankError::DimMismatch { .. })
        ));
    }

    #[test]
    fn one_item_has_no_projection() {
        let x = clustered(1, 8, 4);
        let cfg = ProjectionConfig {
            components: 4,
            beta: 0.0,
        };
        assert!(Projection::fit(x.view(), &cfg).unwrap().is_none());
    }
}
