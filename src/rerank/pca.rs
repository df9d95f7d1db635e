//! PCA of spec sections 1.4 / 4.2: fitted on the query descriptors,
//! centred, not whitened; `y = (x - mean) W`.
//!
//! Number of components: min(`max_components`, n - 1, dims) as the spec
//! says, then capped at the numerical rank of the centred data (smaller
//! only for degenerate input such as duplicated rows). sklearn keeps
//! zero-variance components; their direction is an arbitrary null-space
//! vector of the LAPACK SVD, which would move the distances of data
//! outside the fitted span arbitrarily, so we drop them.
//! Signs follow sklearn's `svd_flip`: the largest-|.| loading of each
//! component is positive.
//!
//! Fitting solves the smaller symmetric eigenproblem: the n x n Gram
//! matrix when n <= dims, the dims x dims scatter matrix otherwise.

use nalgebra::{DMatrix, SymmetricEigen};
use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::knn::check_finite;
use super::probe::{self, Path};
use super::{check_k, RerankError};

#[derive(Debug, Clone)]
pub struct Pca {
    /// Mean of the fitted rows, `dims`.
    pub mean: Array1<f64>,
    /// `dims x n_components`, orthonormal columns.
    pub components: Array2<f64>,
    /// Variance along each component (scatter / (n - 1)), descending.
    pub explained_variance: Vec<f64>,
}

impl Pca {
    pub fn fit(x: ArrayView2<f32>, max_components: usize) -> Result<Self, RerankError> {
        check_k("pca", "dims", max_components)?;
        let (n, d) = x.dim();
        if n == 0 || d == 0 {
            return Err(RerankError::Empty { what: "pca input" });
        }
        check_finite(x, "pca input")?;
        let mut xc = x.mapv(f64::from);
        let mean = xc.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
        xc -= &mean;
        // Spec 4.2: min(max, n - 1, dims); the centred rows span at most
        // n - 1 dimensions, so a further component's direction is arbitrary.
        let want = max_components.min(n - 1).min(d);
        let gram = n <= d;
        probe::hit(if gram {
            Path::PcaGram
        } else {
            Path::PcaScatter
        });
        let m = if gram {
            xc.dot(&xc.t())
        } else {
            xc.t().dot(&xc)
        };
        let k = m.nrows();
        let eig = SymmetricEigen::new(DMatrix::from_fn(k, k, |i, j| m[[i, j]]));
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| {
            eig.eigenvalues[b]
                .total_cmp(&eig.eigenvalues[a])
                .then(a.cmp(&b))
        });
        let top = order.first().map_or(0.0, |&i| eig.eigenvalues[i]).max(0.0);
        let tol = top * (n.max(d) as f64) * f64::EPSILON;
        let keep: Vec<usize> = order
            .into_iter()
            .take(want)
            .filter(|&i| eig.eigenvalues[i] > tol)
            .collect();
        let mut components = Array2::<f64>::zeros((d, keep.len()));
        let mut explained_variance = Vec::with_capacity(keep.len());
        for (c, &i) in keep.iter().enumerate() {
            let lam = eig.eigenvalues[i];
            let u = Array1::from_iter(eig.eigenvectors.column(i).iter().copied());
            // Gram: w = Xc^T u / sqrt(lambda) is the unit right singular vector.
            let mut w = if gram { xc.t().dot(&u) / lam.sqrt() } else { u };
            let nrm = w.dot(&w).sqrt();
            if nrm > 0.0 {
                w /= nrm;
            }
            let big = w
                .iter()
                .copied()
                .fold(0.0f64, |a, v| if v.abs() > a.abs() { v } else { a });
            if big < 0.0 {
                w.mapv_inplace(|v| -v);
            }
            components.column_mut(c).assign(&w);
            explained_variance.push(lam / (n.max(2) - 1) as f64);
        }
        Ok(Self {
            mean,
            components,
            explained_variance,
        })
    }

    pub fn n_components(&self) -> usize {
        self.components.ncols()
    }

    pub fn transform(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, RerankError> {
        if x.ncols() != self.mean.len() {
            return Err(RerankError::DimMismatch {
                what: "pca input",
                got: x.ncols(),
                expected: self.mean.len(),
            });
        }
        check_finite(x, "pca input")?;
        let mut xc = x.mapv(f64::from);
        xc -= &self.mean;
        Ok(xc.dot(&self.components).mapv(|v| v as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn pair_d2(x: &Array2<f32>) -> Vec<f64> {
        let mut out = Vec::new();
        for i in 0..x.nrows() {
            for j in 0..i {
                out.push(
                    x.row(i)
                        .iter()
                        .zip(x.row(j))
                        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                        .sum(),
                );
            }
        }
        out
    }

    #[test]
    fn known_axis() {
        // Points along (0.6, 0.8, 0) plus a small offset along z.
        let x = array![
            [0.6f32, 0.8, 0.1],
            [1.2, 1.6, -0.1],
            [-0.6, -0.8, 0.1],
            [-1.2, -1.6, -0.1],
            [0.0, 0.0, 0.0]
        ];
        let p = Pca::fit(x.view(), 512).unwrap();
        // n = 5 > dims = 3 -> scatter path; rank 2 (x, y collinear).
        assert_eq!(p.n_components(), 2);
        let w0 = p.components.column(0);
        assert!((w0[0] - 0.6).abs() < 1e-6 && (w0[1] - 0.8).abs() < 1e-6 && w0[2].abs() < 1e-6);
        assert!((p.explained_variance[0] - 5.0 / 2.0).abs() < 1e-5);
        let y = p.transform(x.view()).unwrap();
        assert!((y[[1, 0]] - 2.0).abs() < 1e-6);
        assert!((p.mean[0]).abs() < 1e-12);
    }

    #[test]
    fn preserves_distances_at_full_rank() {
        let mut rng = StdRng::seed_from_u64(5);
        for (n, d) in [(6usize, 20usize), (30, 5), (8, 8)] {
            let x = Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0));
            let p = Pca::fit(x.view(), 512).unwrap();
            assert_eq!(p.n_components(), (n - 1).min(d));
            let c = &p.components;
            let gram = c.t().dot(c);
            for i in 0..gram.nrows() {
                for j in 0..gram.ncols() {
                    let e = if i == j { 1.0 } else { 0.0 };
                    assert!((gram[[i, j]] - e).abs() < 1e-9);
                }
            }
            let y = p.transform(x.view()).unwrap();
            for (a, b) in pair_d2(&x).iter().zip(pair_d2(&y)) {
                assert!((a - b).abs() < 1e-4 * (1.0 + a), "{n}x{d}: {a} vs {b}");
            }
            // Truncation keeps the leading variance only.
            let p2 = Pca::fit(x.view(), 2).unwrap();
            assert_eq!(p2.n_components(), 2);
            for c in 0..2 {
                let (a, b) = (p.components.column(c), p2.components.column(c));
                assert!(a.iter().zip(b).all(|(u, v)| (u - v).abs() < 1e-8));
            }
        }
    }

    #[test]
    fn errors() {
        let x = array![[1.0f32, 2.0]];
        let p = Pca::fit(x.view(), 2).unwrap();
        assert_eq!(p.n_components(), 0); // a single row has no variance
        assert!(Pca::fit(x.view(), 0).is_err());
        assert!(matches!(
            p.transform(array![[1.0f32]].view()),
            Err(RerankError::DimMismatch { .. })
        ));
    }
}
