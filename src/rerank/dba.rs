//! Database-side augmentation (DBA), spec section 3.

use ndarray::{Array2, ArrayView2};

use super::aqe::check_gallery_k;
use super::knn::{check_finite, check_pair, knn_d2};
use super::{check_k, check_ranking, RerankError};

/// `w_i = 10^(-2i/k)`, i = 0..=k (numpy's `logspace(0, -2, k + 1)`).
pub fn dba_weights(k: usize) -> Vec<f64> {
    (0..=k)
        .map(|i| 10f64.powf(-2.0 * i as f64 / k as f64))
        .collect()
}

/// `x'_i = w_0 x_i + sum_{t=1..k} w_t y[rows[i][t-1]]`.
fn weighted(
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    rows: &[Vec<usize>],
    k: usize,
    renormalise: bool,
) -> Array2<f32> {
    let w = dba_weights(k);
    let mut out = Array2::<f32>::zeros(x.raw_dim());
    let mut acc = vec![0.0f64; x.ncols()];
    for (i, mut o) in out.rows_mut().into_iter().enumerate() {
        for (a, &v) in acc.iter_mut().zip(x.row(i)) {
            *a = w[0] * f64::from(v);
        }
        for (t, &g) in rows[i][..k].iter().enumerate() {
            for (a, &v) in acc.iter_mut().zip(y.row(g)) {
                *a += w[t + 1] * f64::from(v);
            }
        }
        let scale = if renormalise {
            let n = acc.iter().map(|v| v * v).sum::<f64>().sqrt();
            if n > 0.0 {
                1.0 / n
            } else {
                1.0
            }
        } else {
            1.0
        };
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = (a * scale) as f32;
        }
    }
    out
}

/// Query DBA over the query's top-k gallery results in `ranking`.
/// `renormalise`: the online service does, the DIGIX batch order does not.
pub fn query_dba(
    queries: ArrayView2<f32>,
    gallery: ArrayView2<f32>,
    ranking: &[Vec<usize>],
    k: usize,
    renormalise: bool,
) -> Result<Array2<f32>, RerankError> {
    check_k("query-dba", "k", k)?;
    check_pair(queries, gallery)?;
    check_ranking(ranking, queries.nrows(), gallery.nrows(), k)?;
    Ok(weighted(queries, gallery, ranking, k, renormalise))
}

/// Gallery DBA: neighbours from the gallery itself, excluding the item;
/// every item is augmented from the original (not yet augmented) gallery.
pub fn gallery_dba(
    gallery: ArrayView2<f32>,
    k: usize,
    renormalise: bool,
) -> Result<Array2<f32>, RerankError> {
    check_k("gallery-dba", "k", k)?;
    check_finite(gallery, "gallery")?;
    check_gallery_k("gallery-dba", gallery.nrows(), k)?;
    let nb: Vec<Vec<usize>> = knn_d2(gallery, gallery, k, true)
        .into_iter()
        .map(|r| r.into_iter().map(|e| e.1 as usize).collect())
        .collect();
    Ok(weighted(gallery, gallery, &nb, k, renormalise))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: &Array2<f32>, b: &Array2<f64>) -> bool {
        a.iter()
            .zip(b)
            .all(|(&x, &y)| (f64::from(x) - y).abs() < 1e-6)
    }

    #[test]
    fn weights() {
        let w = dba_weights(2);
        assert!(
            (w[0] - 1.0).abs() < 1e-15 && (w[1] - 0.1).abs() < 1e-15 && (w[2] - 0.01).abs() < 1e-15
        );
        let w = dba_weights(10);
        assert_eq!(w.len(), 11);
        assert!((w[5] - 0.1).abs() < 1e-15 && (w[10] - 0.01).abs() < 1e-15);
    }

    #[test]
    fn query_dba_hand_checked() {
        let q = array![[1.0f32, 0.0]];
        let g = array![[0.0f32, 1.0], [0.0, 2.0], [9.0, 9.0]];
        let r = vec![vec![1, 0, 2]];
        // k = 2: 1*q + 0.1*g1 + 0.01*g0 = (1, 0.21)
        let out = query_dba(q.view(), g.view(), &r, 2, false).unwrap();
        assert!(close(&out, &array![[1.0, 0.21]]));
        let n = (1.0f64 + 0.21 * 0.21).sqrt();
        let out = query_dba(q.view(), g.view(), &r, 2, true).unwrap();
        assert!(close(&out, &array![[1.0 / n, 0.21 / n]]));
        assert!(query_dba(q.view(), g.view(), &r, 4, false).is_err());
    }

    #[test]
    fn gallery_dba_hand_checked() {
        let g = array![[0.0f32], [1.0], [3.0]];
        // k = 1, w = (1, 0.01): neighbours 0->1, 1->0, 2->1.
        let out = gallery_dba(g.view(), 1, false).unwrap();
        assert!(close(&out, &array![[0.01], [1.0], [3.01]]));
        // k = 2, w = (1, 0.1, 0.01): 0 -> 1,2 ; 1 -> 0,2 ; 2 -> 1,0
        let out = gallery_dba(g.view(), 2, false).unwrap();
        assert!(close(&out, &array![[0.13], [1.03], [3.1]]));
        assert!(gallery_dba(g.view(), 3, false).is_err());
    }
}
