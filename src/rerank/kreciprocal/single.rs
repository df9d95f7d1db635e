//! Single-query KR for the online service: P = {q} + gallery, with the
//! gallery's neighbour lists precomputed and q merged into them per
//! request.

use std::collections::{HashMap, HashSet};

use ndarray::{ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use super::{final_dist, nbrs, norm_d, qe_row, v_row, Graph, KrParams, NeighbourList, SparseRow};
use crate::rerank::knn::{
    check_finite, d2_pair, dot64, screen_self, top_k_of, top_k_sorted, Points,
};
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
}

impl GalleryNeighbours {
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
        };
        for (a, b, c) in parts {
            out.ids.extend(a);
            out.d2.extend(b);
            out.row_max.extend(c);
        }
        Ok(out)
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
        })
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

/// Lazily materialised neighbour lists over P = {q} + gallery
/// (P index 0 is the query, gallery item g is g + 1).
struct Single<'a> {
    q: ArrayView1<'a, f32>,
    qn2: f64,
    gallery: ArrayView2<'a, f32>,
    nb: &'a GalleryNeighbours,
    shortlist: &'a [usize],
    query_max: Option<f64>,
    len: usize,
    /// Indexed by P index; dense because a request touches a large part
    /// of P and hashing dominated the cost.
    lists: Vec<Option<NeighbourList>>,
    /// d2(q, p), NaN until computed.
    dq: Vec<f64>,
}

impl Single<'_> {
    fn d2q(&mut self, p: u32) -> f64 {
        let gi = p as usize - 1;
        let (q, qn2, g, n2) = (self.q, self.qn2, self.gallery, &self.nb.n2);
        let slot = &mut self.dq[p as usize];
        if slot.is_nan() {
            *slot = d2_pair(q, qn2, g.row(gi), n2[gi]);
        }
        *slot
    }

    fn ensure(&mut self, p: u32) {
        if self.lists[p as usize].is_some() {
            return;
        }
        let mut c: Vec<(f64, u32)> = Vec::new();
        let mx;
        if p == 0 {
            let sl = self.shortlist;
            for &g in sl {
                let d = self.d2q(g as u32 + 1);
                c.push((d, g as u32 + 1));
            }
            mx = self
                .query_max
                .unwrap_or_else(|| c.iter().fold(0.0f64, |a, e| a.max(e.0)));
        } else {
            let gi = p as usize - 1;
            let dq = self.d2q(p);
            mx = self.nb.row_max[gi].max(dq);
            c.push((dq, 0));
            let s0 = gi * self.nb.k;
            for t in s0..s0 + self.nb.k {
                c.push((self.nb.d2[t], self.nb.ids[t] + 1));
            }
        }
        for e in c.iter_mut() {
            e.0 = norm_d(e.0, mx);
        }
        top_k_sorted(&mut c, self.len - 1);
        let mut ids = vec![p];
        let mut ds = vec![0.0];
        ids.extend(c.iter().map(|e| e.1));
        ds.extend(c.iter().map(|e| e.0));
        self.lists[p as usize] = Some((ids, ds, mx));
    }

    fn ensure_all(&mut self, ps: &HashSet<u32>) {
        let mut v: Vec<u32> = ps.iter().copied().collect();
        v.sort_unstable();
        for p in v {
            self.ensure(p);
        }
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
        // Every list read is materialised by `kr_single` beforehand.
        self.lists
            .get(i as usize)
            .and_then(Option::as_ref)
            .map_or(&[][..], |l| l.0.as_slice())
    }
    fn dist(&self, i: u32, j: u32) -> f64 {
        let Some((ids, ds, mx)) = self.lists.get(i as usize).and_then(Option::as_ref) else {
            return 0.0;
        };
        if let Some(p) = ids.iter().position(|&x| x == j) {
            return ds[p];
        }
        let ((a, an2), (b, bn2)) = (self.row(i), self.row(j));
        let d2 = d2_pair(a, an2, b, bn2);
        norm_d(d2, *mx)
    }
}

/// KR for one query against a shortlist of gallery candidates, with P =
/// {q} + gallery. Gallery lists come from `nb` with q merged in; q's own
/// neighbours and row maximum come from the shortlist only, so with the
/// shortlist = the whole gallery this is exactly the batch definition with
/// one query, and otherwise an approximation. `query_max_d2`: the query's
/// maximum squared distance over the whole gallery (`query_max_d2`, one
/// linear scan) when the caller has it, which removes the largest part of
/// the shortlist's error; `None` takes the maximum over the shortlist.
/// Returns the `top_n` shortlisted gallery ids with D*.
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
    sl.sort_unstable();
    sl.dedup();

    let mut s = Single {
        q: query,
        qn2: dot64(query, query),
        gallery,
        nb,
        shortlist: &sl,
        query_max: query_max_d2,
        len,
        lists: vec![None; ng + 1],
        dq: vec![f64::NAN; ng + 1],
    };

    // Materialise the lists the algorithm reads: S0 = {q} + shortlist; A =
    // S0 + their k2 nearest (V needed); B = N(a,k1); C = N(b, half_k1).
    let s0: HashSet<u32> = std::iter::once(0)
        .chain(sl.iter().map(|&g| g as u32 + 1))
        .collect();
    s.ensure_all(&s0);
    let mut a = s0.clone();
    if params.k2 > 1 {
        for &p in &s0 {
            a.extend(nbrs(&s, p, params.k2 - 1).iter().copied());
        }
    }
    s.ensure_all(&a);
    let mut b = HashSet::new();
    for &p in &a {
        b.extend(nbrs(&s, p, params.k1).iter().copied());
    }
    s.ensure_all(&b);
    let h = params.half_k1();
    let mut c = HashSet::new();
    for &p in &b {
        c.extend(nbrs(&s, p, h).iter().copied());
    }
    s.ensure_all(&c);

    let v: HashMap<u32, SparseRow> = a.iter().map(|&p| (p, v_row(&s, p, params))).collect();
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
    let qmax = s.lists[0].as_ref().map_or(0.0, |l| l.2);
    let mut c: Vec<(f64, u32)> = sl
        .iter()
        .map(|&gi| {
            let p = gi as u32 + 1;
            let grow = vq(p);
            let m = sparse_min_sum(&qrow, &grow);
            let d = norm_d(s.dq[p as usize], qmax);
            (final_dist(m, d, params.lambda), gi as u32)
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
