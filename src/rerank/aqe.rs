//! Average query expansion (AQE) and alpha-QE, spec section 3.

use ndarray::{Array2, ArrayView2};

use super::knn::{check_finite, check_pair, knn_d2};
use super::{check_k, check_ranking, RerankError};

/// AQE: `q' = (q + g_1 + ... + g_k) / (k + 1)` over the query's current
/// top-k (`ranking`); not re-normalised, as in the reference.
pub fn aqe(
    queries: ArrayView2<f32>,
    gallery: ArrayView2<f32>,
    ranking: &[Vec<usize>],
    k: usize,
) -> Result<Array2<f32>, RerankError> {
    check_k("aqe", "k", k)?;
    check_pair(queries, gallery)?;
    check_ranking(ranking, queries.nrows(), gallery.nrows(), k)?;
    Ok(average_with(queries, gallery, ranking, k))
}

/// Row i becomes the mean of `x_i` and the first k of `rows[i]` from `y`.
fn average_with(
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    rows: &[Vec<usize>],
    k: usize,
) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros(x.raw_dim());
    for (i, mut o) in out.rows_mut().into_iter().enumerate() {
        for (c, v) in o.iter_mut().enumerate() {
            let mut s = f64::from(x[[i, c]]);
            for &g in &rows[i][..k] {
                s += f64::from(y[[g, c]]);
            }
            *v = (s / (k + 1) as f64) as f32;
        }
    }
    out
}

/// alpha-QE: `q' = norm(q + sum_{i<=k} max(0, q.g_i)^alpha g_i)`. A zero
/// result stays zero.
pub fn alpha_qe(
    queries: ArrayView2<f32>,
    gallery: ArrayView2<f32>,
    ranking: &[Vec<usize>],
    k: usize,
    alpha: f64,
) -> Result<Array2<f32>, RerankError> {
    check_k("alpha-qe", "k", k)?;
    if !alpha.is_finite() || alpha < 0.0 {
        return Err(RerankError::BadParam {
            stage: "alpha-qe",
            param: "alpha",
            rule: "finite and >= 0",
            got: alpha.to_string(),
        });
    }
    check_pair(queries, gallery)?;
    check_ranking(ranking, queries.nrows(), gallery.nrows(), k)?;
    let d = queries.ncols();
    let mut out = Array2::<f32>::zeros(queries.raw_dim());
    for (i, mut o) in out.rows_mut().into_iter().enumerate() {
        let q: Vec<f64> = queries.row(i).iter().map(|&v| f64::from(v)).collect();
        let mut acc = q.clone();
        for &g in &ranking[i][..k] {
            let gr = gallery.row(g);
            let dot: f64 = q.iter().zip(gr).map(|(a, &b)| a * f64::from(b)).sum();
            let w = dot.max(0.0).powf(alpha);
            for c in 0..d {
                acc[c] += w * f64::from(gr[c]);
            }
        }
        let nrm = acc.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = if nrm > 0.0 { 1.0 / nrm } else { 1.0 };
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = (a * scale) as f32;
        }
    }
    Ok(out)
}

/// Gallery-side AQE (DIGIX step 6): each gallery item averaged with its k
/// nearest other gallery items (Euclidean, ties by index).
pub fn gallery_aqe(gallery: ArrayView2<f32>, k: usize) -> Result<Array2<f32>, RerankError> {
    check_k("gallery-aqe", "k", k)?;
    check_finite(gallery, "gallery")?;
    check_gallery_k("gallery-aqe", gallery.nrows(), k)?;
    let nb: Vec<Vec<usize>> = knn_d2(gallery, gallery, k, true)
        .into_iter()
        .map(|r| r.into_iter().map(|e| e.1 as usize).collect())
        .collect();
    Ok(average_with(gallery, gallery, &nb, k))
}

/// k other gallery items must exist.
pub(crate) fn check_gallery_k(stage: &'static str, n: usize, k: usize) -> Result<(), RerankError> {
    if n == 0 {
        return Err(RerankError::Empty { what: "gallery" });
    }
    if k > n - 1 {
        return Err(RerankError::BadParam {
            stage,
            param: "k",
            rule: "<= gallery size - 1",
            got: k.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn aqe_hand_checked() {
        let q = array![[1.0f32, 0.0]];
        let g = array![[0.0f32, 1.0], [0.0, 3.0], [5.0, 5.0]];
        let r = vec![vec![1, 0, 2]];
        assert_eq!(
            aqe(q.view(), g.view(), &r, 1).unwrap(),
            array![[0.5f32, 1.5]]
        );
        assert_eq!(
            aqe(q.view(), g.view(), &r, 2).unwrap(),
            array![[1.0f32 / 3.0, 4.0 / 3.0]]
        );
        assert!(matches!(
            aqe(q.view(), g.view(), &r, 4),
            Err(RerankError::RankingTooShort { .. })
        ));
        assert!(matches!(
            aqe(q.view(), g.view(), &r, 0),
            Err(RerankError::BadParam { .. })
        ));
        let bad = vec![vec![7]];
        assert!(matches!(
            aqe(q.view(), g.view(), &bad, 1),
            Err(RerankError::IndexOutOfRange { .. })
        ));
    }

    #[test]
    fn alpha_qe_hand_checked() {
        let q = array![[1.0f32, 0.0]];
        // q.g0 = 0.6, q.g1 = -0.6 (clipped to 0).
        let g = array![[0.6f32, 0.8], [-0.6, 0.8]];
        let r = vec![vec![0, 1]];
        let out = alpha_qe(q.view(), g.view(), &r, 2, 3.0).unwrap();
        let w = 0.6f64.powi(3);
        let v = [1.0 + w * 0.6, w * 0.8];
        let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
        assert!((f64::from(out[[0, 0]]) - v[0] / n).abs() < 1e-6);
        assert!((f64::from(out[[0, 1]]) - v[1] / n).abs() < 1e-6);
        assert!(alpha_qe(q.view(), g.view(), &r, 2, f64::NAN).is_err());
    }

    #[test]
    fn gallery_aqe_hand_checked() {
        let g = array![[0.0f32], [1.0], [3.0], [10.0]];
        // Nearest other: 0->1, 1->0 (tie 0 at 1 and none else), 2->1, 3->2.
        assert_eq!(
            gallery_aqe(g.view(), 1).unwrap(),
            array![[0.5f32], [0.5], [2.0], [6.5]]
        );
        assert!(gallery_aqe(g.view(), 4).is_err());
    }
}
