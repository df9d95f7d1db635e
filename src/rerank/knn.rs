//! Exact brute-force neighbour search by squared Euclidean distance on the
//! vectors as given (no normalisation), blocked and parallel. Shared by the
//! stages that need "top-k" lists.

use ndarray::{s, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use super::probe::{self, Path};
use super::{check_k, RerankError};

/// Rows per block of the blocked distance computation against `ncols`
/// columns: about 4M distances (16 MiB of f32) per block, 64..=512 rows
/// (bigger blocks amortise the GEMM's packing of the right-hand side).
pub(crate) fn block_rows(ncols: usize) -> usize {
    ((1usize << 22) / ncols.max(1)).clamp(64, 512)
}

/// f64 dot product of two f32 rows: element `i` goes to accumulator
/// `i % 8`, the eight summed in order. Every "exact" distance goes through
/// here, so all paths agree bit for bit. Eight independent sums let the
/// loop vectorise (a single running sum cannot be reordered: 5x slower at
/// 3840-d); the f32 x f32 products are exact in f64, so a fused
/// multiply-add rounds exactly as a multiply then add.
pub(crate) fn dot64(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f64 {
    if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
        return dot64_slices(x, y);
    }
    let mut acc = [0f64; 8];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        acc[i % 8] += f64::from(x) * f64::from(y);
    }
    sum_lanes(acc)
}

fn dot64_slices(a: &[f32], b: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports the feature the function is built for.
        return unsafe { dot64_avx2(a, b) };
    }
    dot64_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot64_avx2(a: &[f32], b: &[f32]) -> f64 {
    dot64_lanes(a, b)
}

#[inline(always)]
fn dot64_lanes(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += f64::from(x[i]) * f64::from(y[i]);
        }
    }
    for (i, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        acc[i] += f64::from(x) * f64::from(y);
    }
    sum_lanes(acc)
}

#[inline(always)]
fn sum_lanes(acc: [f64; 8]) -> f64 {
    acc.iter().sum()
}

/// Exact squared distance `|a|^2 + |b|^2 - 2 a.b` (f64), clamped at 0.
pub(crate) fn d2_pair(a: ArrayView1<f32>, an2: f64, b: ArrayView1<f32>, bn2: f64) -> f64 {
    (an2 + bn2 - 2.0 * dot64(a, b)).max(0.0)
}

/// A point set (f32 rows) with squared norms: an f32 GEMM screens
/// distances, `d2_exact` gives the value every stage ranks by.
pub(crate) struct Points<'a> {
    pub x32: ArrayView2<'a, f32>,
    pub n2: Vec<f64>,
    norm: Vec<f64>,
    max_norm: f64,
}

impl<'a> Points<'a> {
    pub fn new(x: ArrayView2<'a, f32>) -> Self {
        let n2: Vec<f64> = x.rows().into_iter().map(|r| dot64(r, r)).collect();
        let norm: Vec<f64> = n2.iter().map(|v| v.sqrt()).collect();
        let max_norm = norm.iter().copied().fold(0.0, f64::max);
        Self {
            x32: x,
            n2,
            norm,
            max_norm,
        }
    }

    pub fn len(&self) -> usize {
        self.n2.len()
    }

    pub fn d2_exact(&self, i: usize, b: &Points, j: usize) -> f64 {
        d2_pair(self.x32.row(i), self.n2[i], b.x32.row(j), b.n2[j])
    }

    /// f32 GEMM of rows `r0..r1` against rows `c0..` of `b`.
    pub fn dot_block(&self, r0: usize, r1: usize, b: &Points, c0: usize) -> Array2<f32> {
        self.x32
            .slice(s![r0..r1, ..])
            .dot(&b.x32.slice(s![c0.., ..]).t())
    }

    /// Approximate d2 of row i against rows `c0..` of `b`, from its GEMM row.
    pub fn approx_row(
        &self,
        i: usize,
        dots: ArrayView1<f32>,
        b: &Points,
        c0: usize,
        out: &mut Vec<f64>,
    ) {
        let a = self.n2[i];
        out.clear();
        out.extend(
            dots.iter()
                .zip(&b.n2[c0..])
                .map(|(&d, &bn)| a + bn - 2.0 * f64::from(d)),
        );
    }

    /// Bound on |approx - exact| for row i against any row of `b`: twice
    /// the f32 dot-product error bound gamma_d |a||b| (any summation
    /// order), times 2 for safety. The exact side's own f64 rounding is
    /// some 1e-9 of that.
    pub fn err_bound(&self, i: usize, b: &Points) -> f64 {
        let du = self.x32.ncols() as f64 * f64::from(f32::EPSILON) / 2.0;
        let gamma = du / (1.0 - du).max(1e-3);
        4.0 * gamma * self.norm[i] * b.max_norm + f64::MIN_POSITIVE
    }
}

/// Exact row maximum and a candidate set holding every j whose exact d2
/// is within the k smallest (ties included), with exact d2.
pub(crate) struct Screened {
    pub max: f64,
    pub cands: Vec<(f64, u32)>,
}

/// Screens rows `r0..r1` of `a` against `b` with the f32 GEMM and
/// recomputes exact d2 only where the error bound leaves doubt: the k
/// nearest by approximate d2 set a threshold t, and every j with approx
/// <= t + 2E could be among the exact k nearest; every j with approx >=
/// max - 2E could be the exact maximum.
pub(crate) fn screen(a: &Points, r0: usize, r1: usize, b: &Points, k: usize) -> Vec<Screened> {
    probe::hit(Path::ScreenBlock);
    let dots = a.dot_block(r0, r1, b, 0);
    let mut row = Vec::new();
    let mut rejected = false;
    let out = dots
        .rows()
        .into_iter()
        .enumerate()
        .map(|(r, drow)| {
            let i = r0 + r;
            a.approx_row(i, drow, b, 0, &mut row);
            let e2 = 2.0 * a.err_bound(i, b);
            // One pass: approximate max and k smallest.
            let mut amax = f64::NEG_INFINITY;
            let mut top = TopK::new(k);
            for (j, &v) in row.iter().enumerate() {
                amax = amax.max(v);
                top.push(v, j as u32);
            }
            let t = top.threshold();
            let mut max = 0.0f64;
            let mut cands = Vec::with_capacity(k + 8);
            for (j, &v) in row.iter().enumerate() {
                let near = v <= t + e2;
                let far = v >= amax - e2;
                if near || far {
                    let d = a.d2_exact(i, b, j);
                    if far {
                        max = max.max(d);
                    }
                    if near {
                        cands.push((d, j as u32));
                    }
                } else {
                    rejected = true;
                }
            }
            Screened { max, cands }
        })
        .collect();
    if rejected {
        probe::hit(Path::ScreenRejected);
    }
    out
}

/// Streaming per-row state of `screen_self`: every j that may still be
/// among the k nearest (approx <= current k-th + 2E) or the maximum
/// (approx >= current max - 2E). Both bands only shrink as more arrive.
struct Band {
    k: usize,
    e2: f64,
    top: Vec<(f64, u32)>,
    amax: f64,
    hi: Vec<(f64, u32)>,
}

impl Band {
    fn kth(&self) -> f64 {
        if self.k == 0 {
            f64::NEG_INFINITY
        } else {
            self.top.get(self.k - 1).map_or(f64::INFINITY, |e| e.0)
        }
    }

    #[inline]
    fn push(&mut self, v: f64, j: u32) {
        if v > self.amax {
            self.amax = v;
        }
        if v >= self.amax - self.e2 {
            self.hi.push((v, j));
            if self.hi.len() > 256 {
                let lo = self.amax - self.e2;
                self.hi.retain(|e| e.0 >= lo);
            }
        }
        if v <= self.kth() + self.e2 {
            let e = (v, j);
            let pos = self.top.partition_point(|x| key_cmp(x, &e).is_lt());
            self.top.insert(pos, e);
            let lim = self.kth() + self.e2;
            while self.top.last().is_some_and(|l| l.0 > lim) {
                self.top.pop();
            }
        }
    }
}

/// `screen` of a set against itself (self excluded), computing only the
/// blocks on and above the diagonal of the symmetric GEMM: half the work.
pub(crate) fn screen_self(p: &Points, k: usize) -> Vec<Screened> {
    use std::sync::Mutex;
    const BS: usize = 256;
    let n = p.len();
    let nb = n.div_ceil(BS);
    let states: Vec<Mutex<Vec<Band>>> = (0..nb)
        .map(|b| {
            let rows = (b * BS..((b + 1) * BS).min(n))
                .map(|i| Band {
                    k,
                    e2: 2.0 * p.err_bound(i, p),
                    top: Vec::with_capacity(k + 8),
                    amax: f64::NEG_INFINITY,
                    hi: Vec::new(),
                })
                .collect();
            Mutex::new(rows)
        })
        .collect();
    let pairs: Vec<(usize, usize)> = (0..nb).flat_map(|a| (a..nb).map(move |b| (a, b))).collect();
    pairs.par_iter().for_each(|&(bi, bj)| {
        probe::hit(if bi == bj {
            Path::SelfDiagonalBlock
        } else {
            Path::SelfOffDiagonalBlock
        });
        let (i0, i1) = (bi * BS, ((bi + 1) * BS).min(n));
        let (j0, j1) = (bj * BS, ((bj + 1) * BS).min(n));
        let dot = p
            .x32
            .slice(s![i0..i1, ..])
            .dot(&p.x32.slice(s![j0..j1, ..]).t());
        let approx =
            |r: usize, c: usize| p.n2[i0 + r] + p.n2[j0 + c] - 2.0 * f64::from(dot[[r, c]]);
        if let Ok(mut st) = states[bi].lock() {
            for (r, band) in st.iter_mut().enumerate() {
                for c in 0..j1 - j0 {
                    if bi != bj || r != c {
                        band.push(approx(r, c), (j0 + c) as u32);
                    }
                }
            }
        }
        if bi != bj {
            if let Ok(mut st) = states[bj].lock() {
                for (c, band) in st.iter_mut().enumerate() {
                    for r in 0..i1 - i0 {
                        band.push(approx(r, c), (i0 + r) as u32);
                    }
                }
            }
        }
    });
    let bands: Vec<Band> = states
        .into_iter()
        .flat_map(|m| m.into_inner().unwrap_or_default())
        .collect();
    bands
        .into_par_iter()
        .enumerate()
        .map(|(i, b)| {
            let t = b.kth();
            let lo = b.amax - b.e2;
            let max =
                b.hi.iter()
                    .filter(|e| e.0 >= lo)
                    .map(|e| p.d2_exact(i, p, e.1 as usize))
                    .fold(0.0f64, f64::max);
            let cands = b
                .top
                .iter()
                .filter(|e| e.0 <= t + b.e2)
                .map(|e| (p.d2_exact(i, p, e.1 as usize), e.1))
                .collect();
            Screened { max, cands }
        })
        .collect()
}

/// Bounded buffer of the k smallest (key, index) pairs, sorted.
pub(crate) struct TopK {
    k: usize,
    buf: Vec<(f64, u32)>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            buf: Vec::with_capacity(k + 1),
        }
    }

    #[inline]
    pub fn push(&mut self, v: f64, j: u32) {
        let e = (v, j);
        if self.buf.len() == self.k {
            match self.buf.last() {
                Some(w) if key_cmp(&e, w).is_lt() => {
                    self.buf.pop();
                }
                _ => return,
            }
        }
        let pos = self.buf.partition_point(|x| key_cmp(x, &e).is_lt());
        self.buf.insert(pos, e);
    }

    /// The k-th smallest key, or +inf while fewer than k were pushed.
    pub fn threshold(&self) -> f64 {
        if self.buf.len() < self.k {
            f64::INFINITY
        } else {
            self.buf.last().map_or(f64::INFINITY, |e| e.0)
        }
    }

    pub fn into_sorted(self) -> Vec<(f64, u32)> {
        self.buf
    }
}

/// Total order on (distance, index): ties go to the lower index.
pub(crate) fn key_cmp(a: &(f64, u32), b: &(f64, u32)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Keeps the `k` smallest by `key_cmp`, sorted.
pub(crate) fn top_k_sorted(c: &mut Vec<(f64, u32)>, k: usize) {
    if k == 0 {
        c.clear();
        return;
    }
    if c.len() > k {
        c.select_nth_unstable_by(k - 1, key_cmp);
        c.truncate(k);
    }
    c.sort_unstable_by(key_cmp);
}

/// The k smallest of a stream of (key, index) pairs under `key_cmp`,
/// sorted. For small k a bounded sorted buffer (most items cost one
/// comparison); otherwise collect and select.
pub(crate) fn top_k_of(items: impl Iterator<Item = (f64, u32)>, k: usize) -> Vec<(f64, u32)> {
    if k == 0 {
        return Vec::new();
    }
    if k > 256 {
        let mut c: Vec<(f64, u32)> = items.collect();
        top_k_sorted(&mut c, k);
        return c;
    }
    let mut top = TopK::new(k);
    for (v, j) in items {
        top.push(v, j);
    }
    top.into_sorted()
}

pub(crate) fn check_finite(x: ArrayView2<f32>, what: &'static str) -> Result<(), RerankError> {
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(RerankError::NonFinite { what })
    }
}

pub(crate) fn check_pair(q: ArrayView2<f32>, g: ArrayView2<f32>) -> Result<(), RerankError> {
    if q.nrows() == 0 {
        return Err(RerankError::Empty { what: "queries" });
    }
    if g.nrows() == 0 {
        return Err(RerankError::Empty { what: "gallery" });
    }
    if q.ncols() != g.ncols() {
        return Err(RerankError::DimMismatch {
            what: "gallery",
            got: g.ncols(),
            expected: q.ncols(),
        });
    }
    check_finite(q, "queries")?;
    check_finite(g, "gallery")
}

/// For each row of `x`, the `k` nearest rows of `y` (ids, squared
/// distances), ascending, ties by index. With `exclude_self`, `x` and `y`
/// must be the same set and row i never lists i.
pub(crate) fn knn_d2(
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    k: usize,
    exclude_self: bool,
) -> Vec<Vec<(f64, u32)>> {
    let a = Points::new(x);
    if exclude_self {
        return screen_self(&a, k)
            .into_par_iter()
            .map(|sc| top_k_of(sc.cands.into_iter(), k))
            .collect();
    }
    let b = Points::new(y);
    let bl = block_rows(b.len());
    let starts: Vec<usize> = (0..a.len()).step_by(bl).collect();
    starts
        .par_iter()
        .flat_map_iter(|&s0| {
            let e = (s0 + bl).min(a.len());
            screen(&a, s0, e, &b, k)
                .into_iter()
                .map(|sc| top_k_of(sc.cands.into_iter(), k))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Gallery ranking of every query by Euclidean distance, top `top_n`.
pub fn rank_euclidean(
    queries: ArrayView2<f32>,
    gallery: ArrayView2<f32>,
    top_n: usize,
) -> Result<super::Ranking, RerankError> {
    check_pair(queries, gallery)?;
    check_k("rank", "top_n", top_n)?;
    Ok(knn_d2(queries, gallery, top_n, false)
        .into_iter()
        .map(|r| r.into_iter().map(|(_, j)| j as usize).collect())
        .collect())
}

/// Top-k other gallery items of each gallery item (self excluded).
pub fn gallery_neighbours(
    gallery: ArrayView2<f32>,
    k: usize,
) -> Result<super::Ranking, RerankError> {
    check_k("gallery neighbours", "k", k)?;
    if gallery.nrows() == 0 {
        return Err(RerankError::Empty { what: "gallery" });
    }
    check_finite(gallery, "gallery")?;
    Ok(knn_d2(gallery, gallery, k, true)
        .into_iter()
        .map(|r| r.into_iter().map(|(_, j)| j as usize).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn euclidean_ranking_with_ties() {
        let g = array![[0.0f32, 0.0], [1.0, 0.0], [-1.0, 0.0], [3.0, 0.0]];
        let q = array![[0.0f32, 0.0]];
        // 1 and 2 tie at distance 1: lower index first.
        assert_eq!(
            rank_euclidean(q.view(), g.view(), 4).unwrap(),
            vec![vec![0, 1, 2, 3]]
        );
        assert_eq!(
            gallery_neighbours(g.view(), 2).unwrap(),
            vec![vec![1, 2], vec![0, 2], vec![0, 1], vec![1, 0]]
        );
    }

    #[test]
    fn errors() {
        let g = array![[0.0f32, 0.0]];
        let q = array![[0.0f32, 0.0, 1.0]];
        assert!(matches!(
            rank_euclidean(q.view(), g.view(), 1),
            Err(RerankError::DimMismatch { .. })
        ));
        assert!(matches!(
            rank_euclidean(g.view(), g.view(), 0),
            Err(RerankError::BadParam { .. })
        ));
    }
}
