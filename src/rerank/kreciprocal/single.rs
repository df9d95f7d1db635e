//! Single-query KR for the online service: P = {q} + gallery, with the
//! gallery's neighbour lists precomputed and q merged into them per
//! request.

use std::collections::{HashMap, HashSet};

use ndarray::{ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use super::{
    final_dist, nbrs, norm_d, qe_row, v_row_shared, Graph, KrParams, NeighbourList, SparseRow,
};
use crate::rerank::knn::{
    check_finite, d2_pair, dot64, screen_self, top_k_of, top_k_sorted, Points,
};
use crate::rerank::probe::{self, Path};
use crate::rerank::RerankError;

/// Precomputed gallery-side data for single-query KR: each gallery item's
/// `k` nearest other gallery items with raw squared distances, and its
/// raw maximum squared distance over the gallery.
#[derive(Debug, Clone)]
pub struct GalleryNeighbours {
    pub(crate) k: usize,
    pub(crate) n2: Vec<f64>,
    pub(crate) ids: Vec<u32>,
    pub(crate) d2: Vec<f64>,
    pub(crate) row_max: Vec<f64>,
    /// Per item, its list as a request reads it when q is not in it, in
    /// P indices (item g is g + 1): itself, then its `k` neighbours by
    /// (d2 / row maximum, index); `k + 1` entries each. Prepared here, at
    /// refresh time, so that `kr_single` does no per-item work.
    pub(crate) list_ids: Vec<u32>,
    /// Those entries' normalised distances (0 for itself).
    pub(crate) list_d: Vec<f64>,
}

impl GalleryNeighbours {
    /// Fills `list_ids` / `list_d` from the stored neighbours.
    pub(crate) fn prepared(mut self) -> Self {
        let (k, n) = (self.k, self.row_max.len());
        self.list_ids = Vec::with_capacity(n * (k + 1));
        self.list_d = Vec::with_capacity(n * (k + 1));
        let mut c: Vec<(f64, u32)> = Vec::with_capacity(k);
        for gi in 0..n {
            let mx = self.row_max[gi];
            c.clear();
            c.extend((gi * k..(gi + 1) * k).map(|t| (norm_d(self.d2[t], mx), self.ids[t] + 1)));
            top_k_sorted(&mut c, k);
            self.list_ids.push(gi as u32 + 1);
            self.list_d.push(0.0);
            self.list_ids.extend(c.iter().map(|e| e.1));
            self.list_d.extend(c.iter().map(|e| e.0));
        }
        self
    }

    /// `k` must be at least `max(k1, k2 - 1)` of the KR parameters used
    /// later (it is capped at gallery size - 1).
    pub fn build(gallery: ArrayView2<f32>, k: usize) -> Result<Self, RerankError> {
        crate::rerank::check_k("gallery neighbours", "k", k)?;
        if gallery.nrows() == 0 {
            return Err(RerankError::Empty { what: "gallery" });
        }
        check_finite(gallery, "gallery")?;
        let ng = gallery.nrows();
        let k = k.min(ng - 1);
        let p = Points::new(gallery);
        let parts: Vec<(Vec<u32>, Vec<f64>, Vec<f64>)> = screen_self(&p, k)
            .into_par_iter()
            .map(|sc| {
                let c = top_k_of(sc.cands.into_iter(), k);
                let ids = c.iter().map(|e| e.1).collect();
                let ds = c.iter().map(|e| e.0).collect();
                (ids, ds, vec![sc.max])
            })
            .collect();
        let mut out = Self {
            k,
            n2: p.n2.clone(),
            ids: Vec::new(),
            d2: Vec::new(),
            row_max: Vec::new(),
            list_ids: Vec::new(),
            list_d: Vec::new(),
        };
        for (a, b, c) in parts {
            out.ids.extend(a);
            out.d2.extend(b);
            out.row_max.extend(c);
        }
        Ok(out.prepared())
    }

    /// Rebuilds stored data (e.g. from the index's store): per gallery item
    /// its squared norm, its `k` neighbour ids and raw d2 (ascending, ties
    /// by id), and its raw maximum d2 over the gallery.
    pub fn from_parts(
        k: usize,
        n2: Vec<f64>,
        ids: Vec<u32>,
        d2: Vec<f64>,
        row_max: Vec<f64>,
    ) -> Result<Self, RerankError> {
        let ng = n2.len();
        for (what, got, expected) in [
            ("neighbour ids", ids.len(), ng * k),
            ("neighbour d2", d2.len(), ng * k),
            ("row maxima", row_max.len(), ng),
        ] {
            if got != expected {
                return Err(RerankError::DimMismatch {
                    what,
                    got,
                    expected,
                });
            }
        }
        if let Some(&bad) = ids.iter().find(|&&j| j as usize >= ng) {
            return Err(RerankError::IndexOutOfRange {
                what: "gallery",
                index: bad as usize,
                len: ng,
            });
        }
        Ok(Self {
            k,
            n2,
            ids,
            d2,
            row_max,
            list_ids: Vec::new(),
            list_d: Vec::new(),
        }
        .prepared())
    }

    /// (k, squared norms, neighbour ids, neighbour d2, row maxima), the
    /// inverse of `from_parts`.
    pub fn parts(&self) -> (usize, &[f64], &[u32], &[f64], &[f64]) {
        (self.k, &self.n2, &self.ids, &self.d2, &self.row_max)
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn len(&self) -> usize {
        self.row_max.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row_max.is_empty()
    }
}

/// The lists over P = {q} + gallery that a request reads (P index 0 is
/// the query, gallery item g is g + 1). Only q and the shortlist get lists
/// with q merged in, made per request; every other item's list is its
/// prepared one (`GalleryNeighbours::prepared`), so a request costs the
/// same at any gallery size: |shortlist| distances to q, no per-item work.
struct Single<'a> {
    q: ArrayView1<'a, f32>,
    qn2: f64,
    gallery: ArrayView2<'a, f32>,
    nb: &'a GalleryNeighbours,
    /// Sorted, deduplicated.
    shortlist: &'a [usize],
    len: usize,
    /// Slot 0: q's list; slot i + 1: that of `shortlist[i]`.
    merged: Vec<NeighbourList>,
    /// d2(q, shortlist[i]).
    dq: Vec<f64>,
}

impl Single<'_> {
    /// The slot of `p`'s merged list, if it has one.
    fn slot(&self, p: u32) -> Option<usize> {
        if p == 0 {
            return Some(0);
        }
        self.shortlist
            .binary_search(&(p as usize - 1))
            .ok()
            .map(|i| i + 1)
    }

    /// The list of shortlisted gallery item `gi` (at shortlist position
    /// `at`) with q merged in.
    fn merged_list(&self, gi: usize, at: usize) -> NeighbourList {
        let dq = self.dq[at];
        let mx = self.nb.row_max[gi].max(dq);
        let mut c: Vec<(f64, u32)> = vec![(norm_d(dq, mx), 0)];
        let s0 = gi * self.nb.k;
        for t in s0..s0 + self.nb.k {
            c.push((norm_d(self.nb.d2[t], mx), self.nb.ids[t] + 1));
        }
        top_k_sorted(&mut c, self.len - 1);
        let mut ids = vec![gi as u32 + 1];
        let mut ds = vec![0.0];
        ids.extend(c.iter().map(|e| e.1));
        ds.extend(c.iter().map(|e| e.0));
        (ids, ds, mx)
    }

    /// q's list: the shortlist by distance, normalised by `mx`.
    fn query_list(&self, mx: f64) -> NeighbourList {
        let mut c: Vec<(f64, u32)> = self
            .shortlist
            .iter()
            .zip(&self.dq)
            .map(|(&g, &d)| (norm_d(d, mx), g as u32 + 1))
            .collect();
        top_k_sorted(&mut c, self.len - 1);
        let mut ids = vec![0];
        let mut ds = vec![0.0];
        ids.extend(c.iter().map(|e| e.1));
        ds.extend(c.iter().map(|e| e.0));
        (ids, ds, mx)
    }

    /// A prepared list: (ids, D) of its first `len` entries, row maximum.
    fn prepared(&self, p: u32) -> (&[u32], &[f64], f64) {
        let gi = p as usize - 1;
        let w = self.nb.k + 1;
        let n = self.len.min(w);
        let s0 = gi * w;
        (
            &self.nb.list_ids[s0..s0 + n],
            &self.nb.list_d[s0..s0 + n],
            self.nb.row_max[gi],
        )
    }

    fn row(&self, p: u32) -> (ArrayView1<'_, f32>, f64) {
        if p == 0 {
            (self.q, self.qn2)
        } else {
            let gi = p as usize - 1;
            (self.gallery.row(gi), self.nb.n2[gi])
        }
    }
}

impl Graph for Single<'_> {
    fn ranked(&self, i: u32) -> &[u32] {
        match self.slot(i) {
            Some(s) => &self.merged[s].0,
            None => self.prepared(i).0,
        }
    }
    fn dist(&self, i: u32, j: u32) -> f64 {
        let (ids, ds, mx) = match self.slot(i) {
            Some(s) => {
                let (ids, ds, mx) = &self.merged[s];
                (&ids[..], &ds[..], *mx)
            }
            None => self.prepared(i),
        };
        if let Some(p) = ids.iter().position(|&x| x == j) {
            return ds[p];
        }
        // Either item's stored row may hold the pair (d2 is symmetric and
        // stored exactly as computed below): a 3840-d distance from memory
        // costs microseconds, and V's rows ask for thousands.
        let d2 = self
            .stored_d2(i, j)
            .or_else(|| self.stored_d2(j, i))
            .unwrap_or_else(|| {
                let ((a, an2), (b, bn2)) = (self.row(i), self.row(j));
                d2_pair(a, an2, b, bn2)
            });
        norm_d(d2, mx)
    }
}

impl Single<'_> {
    /// d2(i, j) from gallery item i's stored neighbours, if j is one.
    fn stored_d2(&self, i: u32, j: u32) -> Option<f64> {
        if i == 0 || j == 0 {
            return None;
        }
        let (k, gi, gj) = (self.nb.k, i as usize - 1, j - 1);
        let row = &self.nb.ids[gi * k..(gi + 1) * k];
        let t = row.iter().position(|&x| x == gj)?;
        Some(self.nb.d2[gi * k + t])
    }
}

/// KR for one query against a shortlist of gallery candidates, with P =
/// {q} + gallery. The shortlisted items' lists come from `nb` with q
/// merged in; q's own neighbours and row maximum come from the shortlist
/// only; every other item keeps its stored list, i.e. q is taken to be
/// neither among its `k1` nearest nor farther from it than its farthest
/// gallery item. So with the shortlist = the whole gallery this is
/// exactly the batch definition with one query, and otherwise it is where
/// those two premises hold (a shortlist of q's nearest items: an item
/// that has q among its nearest is near q); `agreement_tests` checks
/// both. `query_max_d2`: the query's maximum squared distance over the
/// whole gallery (`query_max_d2`, one linear scan) when the caller has
/// it, which removes the largest part of the shortlist's error; `None`
/// takes the maximum over the shortlist. Returns the `top_n` shortlisted
/// gallery ids with D*.
pub fn kr_single(
    query: ArrayView1<f32>,
    gallery: ArrayView2<f32>,
    nb: &GalleryNeighbours,
    shortlist: &[usize],
    query_max_d2: Option<f64>,
    params: &KrParams,
    top_n: usize,
) -> Result<Vec<(usize, f64)>, RerankError> {
    params.validate()?;
    crate::rerank::check_k("kr", "top_n", top_n)?;
    // Only the query is checked for finiteness: the gallery is the one
    // `nb` was built from (checked there), and scanning it here would cost
    // O(N d) per request.
    if gallery.nrows() == 0 {
        return Err(RerankError::Empty { what: "gallery" });
    }
    if gallery.ncols() != query.len() {
        return Err(RerankError::DimMismatch {
            what: "gallery",
            got: gallery.ncols(),
            expected: query.len(),
        });
    }
    check_finite(query.insert_axis(Axis(0)), "queries")?;
    let ng = gallery.nrows();
    if nb.len() != ng {
        return Err(RerankError::DimMismatch {
            what: "gallery neighbours (rows)",
            got: nb.len(),
            expected: ng,
        });
    }
    let len = params.list_len().min(ng + 1);
    if nb.k < (len - 1).min(ng - 1) {
        return Err(RerankError::BadParam {
            stage: "kr",
            param: "gallery neighbours k",
            rule: ">= max(k1, k2 - 1)",
            got: nb.k.to_string(),
        });
    }
    if shortlist.is_empty() {
        return Err(RerankError::Empty { what: "shortlist" });
    }
    if let Some(&index) = shortlist.iter().find(|&&g| g >= ng) {
        return Err(RerankError::IndexOutOfRange {
            what: "gallery",
            index,
            len: ng,
        });
    }
    let mut sl = shortlist.to_vec();
    // A gallery smaller than a list (every list holds all of P, q
    // included) is small: merge q into every list.
    if nb.k < len - 1 {
        sl = (0..ng).collect();
    }
    sl.sort_unstable();
    sl.dedup();
    if sl.len() < ng {
        probe::hit(Path::KrStoredLists);
    }

    let qn2 = dot64(query, query);
    let dq: Vec<f64> = sl
        .iter()
        .map(|&g| d2_pair(query, qn2, gallery.row(g), nb.n2[g]))
        .collect();
    let mut s = Single {
        q: query,
        qn2,
        gallery,
        nb,
        shortlist: &sl,
        len,
        merged: Vec::with_capacity(sl.len() + 1),
        dq,
    };
    let qmax = query_max_d2.unwrap_or_else(|| s.dq.iter().fold(0.0f64, |a, &d| a.max(d)));
    let merged: Vec<NeighbourList> = std::iter::once(s.query_list(qmax))
        .chain(sl.iter().enumerate().map(|(at, &g)| s.merged_list(g, at)))
        .collect();
    s.merged = merged;

    // V is needed for S0 = {q} + shortlist and their k2 - 1 nearest.
    let mut a: HashSet<u32> = std::iter::once(0)
        .chain(sl.iter().map(|&g| g as u32 + 1))
        .collect();
    if params.k2 > 1 {
        let s0: Vec<u32> = a.iter().copied().collect();
        for p in s0 {
            a.extend(nbrs(&s, p, params.k2 - 1).iter().copied());
        }
    }
    let mut halves = HashMap::new();
    let v: HashMap<u32, SparseRow> = a
        .iter()
        .map(|&p| (p, v_row_shared(&s, p, params, &mut halves)))
        .collect();
    let vq = |p: u32| -> SparseRow {
        if params.k2 > 1 {
            qe_row(&s, p, params.k2, |n| {
                v.get(&n).map_or(&[][..], |r| r.as_slice())
            })
        } else {
            v.get(&p).cloned().unwrap_or_default()
        }
    };
    let qrow = vq(0);
    let mut c: Vec<(f64, u32)> = sl
        .iter()
        .zip(&s.dq)
        .map(|(&gi, &dq)| {
            let grow = vq(gi as u32 + 1);
            let m = sparse_min_sum(&qrow, &grow);
            (final_dist(m, norm_d(dq, qmax), params.lambda), gi as u32)
        })
        .collect();
    top_k_sorted(&mut c, top_n);
    Ok(c.into_iter().map(|(d, g)| (g as usize, d)).collect())
}

/// Exact max_g d2(query, g) over the gallery (the row maximum of the
/// single-query definition).
pub fn query_max_d2(
    query: ArrayView1<f32>,
    gallery: ArrayView2<f32>,
    nb: &GalleryNeighbours,
) -> Result<f64, RerankError> {
    if gallery.ncols() != query.len() {
        return Err(RerankError::DimMismatch {
            what: "gallery",
            got: gallery.ncols(),
            expected: query.len(),
        });
    }
    if nb.len() != gallery.nrows() {
        return Err(RerankError::DimMismatch {
            what: "gallery neighbours (rows)",
            got: nb.len(),
            expected: gallery.nrows(),
        });
    }
    let qn2 = dot64(query, query);
    Ok(gallery
        .rows()
        .into_iter()
        .zip(&nb.n2)
        .map(|(g, &gn2)| d2_pair(query, qn2, g, gn2))
        .fold(0.0, f64::max))
}

/// sum_j min(a_j, b_j) over the common support, ascending j.
fn sparse_min_sum(a: &[(u32, f64)], b: &[(u32, f64)]) -> f64 {
    let (mut i, mut j, mut m) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                m += a[i].1.min(b[j].1);
                i += 1;
                j += 1;
            }
        }
    }
    m
}
