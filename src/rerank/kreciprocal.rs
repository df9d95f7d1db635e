//! k-reciprocal re-ranking (Zhong et al., CVPR 2017), spec section 3 "KR".
//!
//! Choices where the spec leaves room (the test reference follows them):
//! - Ties in every neighbour ordering go to the lower index of P
//!   (queries first, then gallery), and i itself is always first in
//!   N(i,k), even when another point is at distance 0.
//! - `round(k1/2)` rounds half to even, as `np.around` in the reference
//!   code does (k1 = 5 gives 2).
//! - A row whose maximum squared distance is 0 (all points equal) gets
//!   D = 0 everywhere instead of 0/0.
//! - Sparse sums run in ascending column order, so the batch and the
//!   single-query paths add in the same order as a dense loop.
//!
//! - Distances are `|a|^2 + |b|^2 - 2 a.b` in f64 (`knn::d2_pair`). An
//!   f32 GEMM screens them and every value that can decide a neighbour
//!   list, a row maximum or a top-n is recomputed in f64, using the
//!   proven f32 dot-product error bound (`knn::screen`, `screen_self`):
//!   results are those of the f64 definition, not of f32 arithmetic.
//!
//! Memory is O(N (k1 + |R*|)) plus one GEMM block per worker (256 x 256
//! for the symmetric P x P pass, at most ~4M f32 for queries x gallery):
//! no N x N matrix is ever held.

use std::collections::HashMap;

use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;

use super::knn::{block_rows, check_pair, screen_self, top_k_of, Points};
use super::probe::{self, Path};
use super::RerankError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KrParams {
    pub k1: usize,
    pub k2: usize,
    pub lambda: f64,
}

impl Default for KrParams {
    fn default() -> Self {
        Self {
            k1: 20,
            k2: 6,
            lambda: 0.3,
        }
    }
}

impl KrParams {
    pub fn validate(&self) -> Result<(), RerankError> {
        super::check_k("kr", "k1", self.k1)?;
        super::check_k("kr", "k2", self.k2)?;
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(RerankError::BadParam {
                stage: "kr",
                param: "lambda",
                rule: "in [0, 1]",
                got: self.lambda.to_string(),
            });
        }
        Ok(())
    }

    /// round(k1 / 2), half to even.
    pub fn half_k1(&self) -> usize {
        (self.k1 as f64 / 2.0).round_ties_even() as usize
    }

    /// Length of the neighbour lists needed: N(i,k1) and the k2 nearest.
    fn list_len(&self) -> usize {
        self.k1.max(self.k2.saturating_sub(1)) + 1
    }
}

/// Gallery indices in rank order with their re-ranked distance D*.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub ids: Vec<Vec<usize>>,
    pub dists: Vec<Vec<f64>>,
}

type SparseRow = Vec<(u32, f64)>;
/// Ranked ids (self first), their D, and the row maximum of d2.
type NeighbourList = (Vec<u32>, Vec<f64>, f64);

/// The neighbourhood structure the algorithm reads.
trait Graph: Sync {
    /// i first, then the nearest other points in (D, index) order; at
    /// least `list_len` long or all of P.
    fn ranked(&self, i: u32) -> &[u32];
    /// D(i, j).
    fn dist(&self, i: u32, j: u32) -> f64;
}

fn nbrs<G: Graph>(g: &G, i: u32, k: usize) -> &[u32] {
    let r = g.ranked(i);
    &r[..(k + 1).min(r.len())]
}

/// R(i,k), in the order of N(i,k).
fn reciprocal<G: Graph>(g: &G, i: u32, k: usize) -> Vec<u32> {
    nbrs(g, i, k)
        .iter()
        .copied()
        .filter(|&j| nbrs(g, j, k).contains(&i))
        .collect()
}

/// Row i of V (steps 2-4), sorted by column.
fn v_row<G: Graph>(g: &G, i: u32, p: &KrParams) -> SparseRow {
    v_row_shared(g, i, p, &mut HashMap::new())
}

/// `v_row`, taking each R(c, k1/2) from `halves` (filled as needed): the
/// rows of one request share most of their c, and every R read goes
/// through the lists of c's neighbours, cache misses in a large gallery.
fn v_row_shared<G: Graph>(
    g: &G,
    i: u32,
    p: &KrParams,
    halves: &mut HashMap<u32, Vec<u32>>,
) -> SparseRow {
    let r = reciprocal(g, i, p.k1);
    let h = p.half_k1();
    let mut set = r.clone();
    for &c in &r {
        let rc = halves.entry(c).or_insert_with(|| reciprocal(g, c, h));
        let inter = rc.iter().filter(|x| r.contains(x)).count();
        // |R(c,h) ∩ R(i,k1)| > 2/3 |R(c,h)|, in integers.
        if 3 * inter > 2 * rc.len() {
            set.extend_from_slice(rc);
        }
    }
    set.sort_unstable();
    set.dedup();
    let w: Vec<f64> = set.iter().map(|&j| (-g.dist(i, j)).exp()).collect();
    let sum: f64 = w.iter().sum();
    set.into_iter().zip(w).map(|(j, w)| (j, w / sum)).collect()
}

/// Step 5: mean of V(n,·) over the k2 nearest n of i (i included).
fn qe_row<'a, G: Graph>(
    g: &G,
    i: u32,
    k2: usize,
    v: impl Fn(u32) -> &'a [(u32, f64)],
) -> SparseRow {
    let ns = nbrs(g, i, k2 - 1);
    let mut acc: HashMap<u32, f64> = HashMap::new();
    for &n in ns {
        for &(j, x) in v(n) {
            *acc.entry(j).or_insert(0.0) += x;
        }
    }
    let cnt = ns.len() as f64;
    let mut row: SparseRow = acc.into_iter().map(|(j, x)| (j, x / cnt)).collect();
    row.sort_unstable_by_key(|e| e.0);
    row
}

fn final_dist(m: f64, d: f64, lambda: f64) -> f64 {
    let dj = 1.0 - m / (2.0 - m);
    (1.0 - lambda) * dj + lambda * d
}

/// Neighbour lists of every point of P, with the D of each entry.
struct Batch<'a> {
    p: Points<'a>,
    len: usize,
    ids: Vec<u32>,
    ds: Vec<f64>,
    row_max: Vec<f64>,
}

impl<'a> Batch<'a> {
    fn build(p: Points<'a>, len: usize) -> Self {
        let parts: Vec<(Vec<u32>, Vec<f64>, Vec<f64>)> = screen_self(&p, len - 1)
            .into_par_iter()
            .enumerate()
            .map(|(i, sc)| {
                let m = sc.max;
                let it = sc.cands.into_iter().map(|(d2, j)| (norm_d(d2, m), j));
                let (mut ids, mut ds) = (vec![i as u32], vec![0.0]);
                for (d, j) in top_k_of(it, len - 1) {
                    ids.push(j);
                    ds.push(d);
                }
                (ids, ds, vec![m])
            })
            .collect();
        let (mut ids, mut ds, mut row_max) = (Vec::new(), Vec::new(), Vec::new());
        for (a, b, c) in parts {
            ids.extend(a);
            ds.extend(b);
            row_max.extend(c);
        }
        Self {
            p,
            len,
            ids,
            ds,
            row_max,
        }
    }
}

fn norm_d(d2: f64, max: f64) -> f64 {
    if max > 0.0 {
        d2 / max
    } else {
        0.0
    }
}

impl Graph for Batch<'_> {
    fn ranked(&self, i: u32) -> &[u32] {
        let s0 = i as usize * self.len;
        &self.ids[s0..s0 + self.len]
    }
    fn dist(&self, i: u32, j: u32) -> f64 {
        let (iu, ju) = (i as usize, j as usize);
        let s0 = iu * self.len;
        if let Some(p) = self.ids[s0..s0 + self.len].iter().position(|&x| x == j) {
            return self.ds[s0 + p];
        }
        norm_d(self.p.d2_exact(iu, &self.p, ju), self.row_max[iu])
    }
}

/// Batch KR over P = queries + gallery: for each query, the `top_n`
/// gallery items (all when `top_n >= gallery size`) by D*.
///
/// Distances are screened with an f32 GEMM and every value that decides a
/// ranking is recomputed exactly in f64 (see `knn::screen`), so results are
/// those of the f64 definition.
pub fn k_reciprocal(
    queries: ArrayView2<f32>,
    gallery: ArrayView2<f32>,
    params: &KrParams,
    top_n: usize,
) -> Result<Ranked, RerankError> {
    params.validate()?;
    check_pair(queries, gallery)?;
    super::check_k("kr", "top_n", top_n)?;
    let (nq, ng) = (queries.nrows(), gallery.nrows());
    let n = nq + ng;
    let x = ndarray::concatenate(Axis(0), &[queries, gallery]).map_err(|_| {
        RerankError::DimMismatch {
            what: "gallery",
            got: gallery.ncols(),
            expected: queries.ncols(),
        }
    })?;
    let g = Batch::build(Points::new(x.view()), params.list_len().min(n));

    let v: Vec<SparseRow> = (0..n as u32)
        .into_par_iter()
        .map(|i| v_row(&g, i, params))
        .collect();
    let v = if params.k2 > 1 {
        (0..n as u32)
            .into_par_iter()
            .map(|i| qe_row(&g, i, params.k2, |n| v[n as usize].as_slice()))
            .collect()
    } else {
        v
    };

    // Inverted index over the gallery rows of V: column -> (gallery id, value),
    // gallery ids ascending.
    let mut inv: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    for (gi, row) in v[nq..].iter().enumerate() {
        for &(j, x) in row {
            inv[j as usize].push((gi as u32, x));
        }
    }

    let top = top_n.min(ng);
    let lambda = params.lambda;
    let bl = block_rows(ng);
    let starts: Vec<usize> = (0..nq).step_by(bl).collect();
    let rows: Vec<(Vec<usize>, Vec<f64>)> = starts
        .par_iter()
        .flat_map_iter(|&s0| {
            let e = (s0 + bl).min(nq);
            let dots = g.p.dot_block(s0, e, &g.p, nq);
            let mut m = vec![0.0f64; ng];
            let mut row = Vec::new();
            let mut out = Vec::with_capacity(e - s0);
            for (r, drow) in dots.rows().into_iter().enumerate() {
                let q = s0 + r;
                g.p.approx_row(q, drow, &g.p, nq, &mut row);
                m.iter_mut().for_each(|x| *x = 0.0);
                for &(j, vq) in &v[q] {
                    for &(gi, vg) in &inv[j as usize] {
                        m[gi as usize] += vq.min(vg);
                    }
                }
                let mx = g.row_max[q];
                // Screen D* with the approximate distances, then recompute
                // exactly every item that could be in the top.
                let exact = |gi: usize| {
                    let d = norm_d(g.p.d2_exact(q, &g.p, nq + gi), mx);
                    final_dist(m[gi], d, lambda)
                };
                let c = if top >= ng {
                    probe::hit(Path::KrExactTop);
                    top_k_of((0..ng).map(|gi| (exact(gi), gi as u32)), top)
                } else {
                    probe::hit(Path::KrScreenedTop);
                    let approx_of = |gi: usize| final_dist(m[gi], norm_d(row[gi], mx), lambda);
                    let a = top_k_of((0..ng).map(|gi| (approx_of(gi), gi as u32)), top);
                    let t = a.last().map_or(f64::INFINITY, |e| e.0);
                    let margin = 2.0 * lambda * norm_d(g.p.err_bound(q, &g.p), mx) + 1e-12;
                    let cands = (0..ng)
                        .filter(|&gi| approx_of(gi) <= t + margin)
                        .map(|gi| (exact(gi), gi as u32));
                    top_k_of(cands, top)
                };
                out.push((
                    c.iter().map(|e| e.1 as usize).collect(),
                    c.iter().map(|e| e.0).collect(),
                ));
            }
            out
        })
        .collect();
    let (ids, dists) = rows.into_iter().unzip();
    Ok(Ranked { ids, dists })
}

mod single;
mod update;
pub use single::{kr_single, query_max_d2, GalleryNeighbours};

#[cfg(test)]
pub(crate) mod tests;
