//! Obviously-correct references for every stage of spec sections 3 and 4:
//! dense f64 loops that read like the spec, no screening, no blocking, no
//! parallelism. The fast implementations are compared with them ranking
//! for ranking on clustered data large enough to take every fast path
//! (`probe` asserts that those paths ran).
#![allow(clippy::needless_range_loop)]

use ndarray::Array2;
use rand::rngs::StdRng;
use rand::Rng;

use super::kreciprocal::KrParams;

/// `n` unit rows around `centres` (rows), Gaussian noise of `sigma` per
/// coordinate before normalisation; returns the rows and their centre.
pub(crate) fn clustered(
    rng: &mut StdRng,
    centres: &Array2<f64>,
    n: usize,
    sigma: f64,
) -> (Array2<f32>, Vec<usize>) {
    let d = centres.ncols();
    let mut x = Array2::<f32>::zeros((n, d));
    let mut label = Vec::with_capacity(n);
    for i in 0..n {
        let c = rng.random_range(0..centres.nrows());
        let v: Vec<f64> = (0..d)
            .map(|j| centres[[c, j]] + sigma * gaussian(rng))
            .collect();
        let nrm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        for j in 0..d {
            x[[i, j]] = (v[j] / nrm) as f32;
        }
        label.push(c);
    }
    (x, label)
}

/// `k` centres with N(0, 1) coordinates.
pub(crate) fn centres(rng: &mut StdRng, k: usize, d: usize) -> Array2<f64> {
    Array2::from_shape_fn((k, d), |_| gaussian(rng))
}

/// Box-Muller.
fn gaussian(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn d2(a: &Array2<f32>, i: usize, b: &Array2<f32>, j: usize) -> f64 {
    (0..a.ncols())
        .map(|c| (f64::from(a[[i, c]]) - f64::from(b[[j, c]])).powi(2))
        .sum()
}

/// Indices sorted by (key, index).
fn order(keys: &[f64]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..keys.len()).collect();
    o.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]).then(a.cmp(&b)));
    o
}

/// Every gallery index per query by Euclidean distance.
pub(crate) fn rank(q: &Array2<f32>, g: &Array2<f32>) -> Vec<Vec<usize>> {
    (0..q.nrows())
        .map(|i| order(&(0..g.nrows()).map(|j| d2(q, i, g, j)).collect::<Vec<_>>()))
        .collect()
}

/// The k nearest other rows of each row (self excluded).
pub(crate) fn neighbours(g: &Array2<f32>, k: usize) -> Vec<Vec<usize>> {
    (0..g.nrows())
        .map(|i| {
            let keys: Vec<f64> = (0..g.nrows())
                .map(|j| {
                    if j == i {
                        f64::INFINITY
                    } else {
                        d2(g, i, g, j)
                    }
                })
                .collect();
            order(&keys).into_iter().take(k).collect()
        })
        .collect()
}

/// Top `n` of each ranking.
pub(crate) fn top(r: &[Vec<usize>], n: usize) -> Vec<Vec<usize>> {
    r.iter()
        .map(|row| row[..n.min(row.len())].to_vec())
        .collect()
}

/// AQE: `(x + y_1 + ... + y_k) / (k + 1)` over `nb[i]`.
pub(crate) fn aqe(x: &Array2<f32>, y: &Array2<f32>, nb: &[Vec<usize>], k: usize) -> Array2<f32> {
    let mut out = x.clone();
    for i in 0..x.nrows() {
        for c in 0..x.ncols() {
            let mut s = f64::from(x[[i, c]]);
            for t in 0..k {
                s += f64::from(y[[nb[i][t], c]]);
            }
            out[[i, c]] = (s / (k + 1) as f64) as f32;
        }
    }
    out
}

/// alpha-QE: `norm(q + sum max(0, q.g_i)^alpha g_i)`.
pub(crate) fn alpha_qe(
    x: &Array2<f32>,
    y: &Array2<f32>,
    nb: &[Vec<usize>],
    k: usize,
    alpha: f64,
) -> Array2<f32> {
    let d = x.ncols();
    let mut out = x.clone();
    for i in 0..x.nrows() {
        let mut acc: Vec<f64> = (0..d).map(|c| f64::from(x[[i, c]])).collect();
        for t in 0..k {
            let g = nb[i][t];
            let dot: f64 = (0..d)
                .map(|c| f64::from(x[[i, c]]) * f64::from(y[[g, c]]))
                .sum();
            let w = dot.max(0.0).powf(alpha);
            for c in 0..d {
                acc[c] += w * f64::from(y[[g, c]]);
            }
        }
        let n = acc.iter().map(|a| a * a).sum::<f64>().sqrt();
        for c in 0..d {
            out[[i, c]] = (acc[c] / n) as f32;
        }
    }
    out
}

/// DBA: `w_0 x + sum w_i n_i`, `w = logspace(0, -2, k + 1)`.
pub(crate) fn dba(
    x: &Array2<f32>,
    y: &Array2<f32>,
    nb: &[Vec<usize>],
    k: usize,
    renormalise: bool,
) -> Array2<f32> {
    let w: Vec<f64> = (0..=k)
        .map(|i| 10f64.powf(-2.0 * i as f64 / k as f64))
        .collect();
    let d = x.ncols();
    let mut out = x.clone();
    for i in 0..x.nrows() {
        let mut acc: Vec<f64> = (0..d).map(|c| w[0] * f64::from(x[[i, c]])).collect();
        for t in 0..k {
            for c in 0..d {
                acc[c] += w[t + 1] * f64::from(y[[nb[i][t], c]]);
            }
        }
        let n = if renormalise {
            acc.iter().map(|a| a * a).sum::<f64>().sqrt()
        } else {
            1.0
        };
        for c in 0..d {
            out[[i, c]] = (acc[c] / n) as f32;
        }
    }
    out
}

/// The scatter matrix of `x` by loops, its eigen-decomposition by
/// nalgebra: (mean, eigen-decomposition, the kept components' columns
/// for min(p, n - 1, d) components, largest first).
fn pca_fit(
    x: &Array2<f32>,
    p: usize,
) -> (
    Vec<f64>,
    nalgebra::SymmetricEigen<f64, nalgebra::Dyn>,
    Vec<usize>,
) {
    let (n, d) = x.dim();
    let mean: Vec<f64> = (0..d)
        .map(|c| (0..n).map(|i| f64::from(x[[i, c]])).sum::<f64>() / n as f64)
        .collect();
    let mut s = nalgebra::DMatrix::<f64>::zeros(d, d);
    for i in 0..n {
        for a in 0..d {
            let xa = f64::from(x[[i, a]]) - mean[a];
            for b in 0..d {
                s[(a, b)] += xa * (f64::from(x[[i, b]]) - mean[b]);
            }
        }
    }
    let eig = nalgebra::SymmetricEigen::new(s);
    let keys: Vec<f64> = eig.eigenvalues.iter().map(|v| -v).collect();
    let keep: Vec<usize> = order(&keys).into_iter().take(p.min(n - 1).min(d)).collect();
    (mean, eig, keep)
}

/// `ys` projected on the kept components, component c scaled by `scale(c)`.
fn project(
    ys: &[&Array2<f32>],
    (mean, eig, keep): &(
        Vec<f64>,
        nalgebra::SymmetricEigen<f64, nalgebra::Dyn>,
        Vec<usize>,
    ),
    scale: impl Fn(usize) -> f64,
) -> Vec<Array2<f32>> {
    let d = mean.len();
    ys.iter()
        .map(|y| {
            Array2::from_shape_fn((y.nrows(), keep.len()), |(i, c)| {
                let u = eig.eigenvectors.column(keep[c]);
                let v: f64 = (0..d)
                    .map(|a| (f64::from(y[[i, a]]) - mean[a]) * u[a])
                    .sum();
                (v * scale(c)) as f32
            })
        })
        .collect()
}

/// PCA fitted on `x` with min(p, n - 1, d) components, applied to `ys`.
/// Only the subspace matters for the distances the stages rank by.
pub(crate) fn pca(x: &Array2<f32>, p: usize, ys: &[&Array2<f32>]) -> Vec<Array2<f32>> {
    project(ys, &pca_fit(x, p), |_| 1.0)
}

/// The gallery-fitted projection of spec section 3, fitted on `x` and
/// applied to `ys`: eigenvalues of the covariance (scatter / (n - 1)),
/// each component scaled by `s^(-beta/2)`, every row normalised.
pub(crate) fn gallery_projection(
    x: &Array2<f32>,
    p: usize,
    beta: f64,
    ys: &[&Array2<f32>],
) -> Vec<Array2<f32>> {
    let fit = pca_fit(x, p);
    let var: Vec<f64> = fit
        .2
        .iter()
        .map(|&c| fit.1.eigenvalues[c] / (x.nrows() - 1) as f64)
        .collect();
    let mut out = project(ys, &fit, |c| var[c].powf(-beta / 2.0));
    for y in &mut out {
        for mut row in y.rows_mut() {
            let n = row
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            row.mapv_inplace(|v| (f64::from(v) / n) as f32);
        }
    }
    out
}

/// KR over P = queries + gallery, literally as spec section 3 reads;
/// every gallery item per query with D*, sorted by (D*, index).
pub(crate) fn kr(q: &Array2<f32>, g: &Array2<f32>, p: &KrParams) -> Vec<Vec<(usize, f64)>> {
    let nq = q.nrows();
    let x = ndarray::concatenate(ndarray::Axis(0), &[q.view(), g.view()]).expect("same dims");
    let n = x.nrows();
    let mut dd = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        for j in 0..n {
            dd[i][j] = d2(&x, i, &x, j);
        }
        let mx = dd[i].iter().cloned().fold(0.0, f64::max);
        for j in 0..n {
            dd[i][j] = if mx > 0.0 { dd[i][j] / mx } else { 0.0 };
        }
    }
    // N(i, k): i first, then the others by (D, index).
    let list = p.k1.max(p.k2) + 1;
    let ranked: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            let keys: Vec<f64> = (0..n)
                .map(|j| if j == i { f64::NEG_INFINITY } else { dd[i][j] })
                .collect();
            order(&keys).into_iter().take(list).collect()
        })
        .collect();
    let nn = |i: usize, k: usize| -> &[usize] { &ranked[i][..(k + 1).min(n)] };
    let rr = |i: usize, k: usize| -> Vec<usize> {
        nn(i, k)
            .iter()
            .copied()
            .filter(|&j| nn(j, k).contains(&i))
            .collect()
    };
    let h = (p.k1 as f64 / 2.0).round_ties_even() as usize;
    // V as sparse rows (column, value): only R*(i) is non-zero.
    let mut v: Vec<Vec<(usize, f64)>> = Vec::with_capacity(n);
    for i in 0..n {
        let r = rr(i, p.k1);
        let mut star = r.clone();
        for &c in &r {
            let rc = rr(c, h);
            let inter = rc.iter().filter(|x| r.contains(x)).count() as f64;
            if inter > 2.0 / 3.0 * rc.len() as f64 {
                star.extend(rc);
            }
        }
        star.sort();
        star.dedup();
        let sum: f64 = star.iter().map(|&l| (-dd[i][l]).exp()).sum();
        v.push(star.iter().map(|&j| (j, (-dd[i][j]).exp() / sum)).collect());
    }
    if p.k2 > 1 {
        let mut dense = vec![0.0f64; n];
        let vq: Vec<Vec<(usize, f64)>> = (0..n)
            .map(|i| {
                dense.iter_mut().for_each(|x| *x = 0.0);
                let ns = nn(i, p.k2 - 1);
                for &m in ns {
                    for &(j, x) in &v[m] {
                        dense[j] += x;
                    }
                }
                (0..n)
                    .filter(|&j| dense[j] != 0.0)
                    .map(|j| (j, dense[j] / ns.len() as f64))
                    .collect()
            })
            .collect();
        v = vq;
    }
    (0..nq)
        .map(|qi| {
            let mut vqd = vec![0.0f64; n];
            for &(j, x) in &v[qi] {
                vqd[j] = x;
            }
            let mut out: Vec<(usize, f64)> = (0..g.nrows())
                .map(|gi| {
                    let gp = nq + gi;
                    let m: f64 = v[gp].iter().map(|&(j, x)| x.min(vqd[j])).sum();
                    let dj = 1.0 - m / (2.0 - m);
                    (gi, (1.0 - p.lambda) * dj + p.lambda * dd[qi][gp])
                })
                .collect();
            out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            out
        })
        .collect()
}

/// KR rankings only.
pub(crate) fn kr_ids(q: &Array2<f32>, g: &Array2<f32>, p: &KrParams) -> Vec<Vec<usize>> {
    kr(q, g, p)
        .into_iter()
        .map(|r| r.into_iter().map(|e| e.0).collect())
        .collect()
}

/// Spec section 4 steps 2-7 on normalised, concatenated descriptors: the
/// top 10 per query.
pub(crate) fn digix(q: &Array2<f32>, g: &Array2<f32>) -> Vec<Vec<usize>> {
    let kp = KrParams::default();
    let pg = pca(q, 512, &[q, g]);
    let (q2, g2) = (&pg[0], &pg[1]);
    let r3 = kr_ids(q2, g2, &kp);
    let q4 = aqe(q2, g2, &r3, 1);
    let q5 = dba(&q4, g2, &r3, 10, false);
    let g6 = aqe(g2, g2, &neighbours(g2, 1), 1);
    top(&kr_ids(&q5, &g6, &kp), 10)
}
