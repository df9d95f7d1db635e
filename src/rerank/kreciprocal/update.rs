//! Incremental update of [`GalleryNeighbours`] after items were added and
//! removed: the service's gallery changes a little between refreshes, and
//! recomputing every list is O(n^2 d).
//!
//! Exactness argument: distances are the same f64 `d2_pair` values the
//! batch build uses, and ties break by row, so the result equals `build`
//! on the new gallery as long as surviving rows keep their relative
//! order. A surviving row keeps its list and maximum unless one of its
//! neighbours, or the item at its maximum distance, was removed; then it
//! is recomputed against the whole gallery ("rescanned"). Otherwise only
//! its distances to the added rows can change its list or its maximum.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::GalleryNeighbours;
use crate::rerank::knn::{check_finite, d2_pair, screen, top_k_of, top_k_sorted, Points, Screened};
use crate::rerank::RerankError;

/// Rows per parallel block.
const BLOCK: usize = 256;

/// One new row's data.
struct Row {
    ids: Vec<u32>,
    d2: Vec<f64>,
    max: f64,
}

impl GalleryNeighbours {
    /// The data of gallery `new` given `self`, the data of gallery `old`
    /// built with the same `k`. `origin[i]` is the row of `old` that new
    /// row i was, None for an added row; surviving rows must keep their
    /// relative order. Equals `GalleryNeighbours::build(new, k)`; falls
    /// back to it when the gallery is too small for full lists or the
    /// order precondition does not hold. Cost O((added + removed +
    /// rescanned) n d).
    pub fn updated(
        &self,
        old: ArrayView2<f32>,
        new: ArrayView2<f32>,
        origin: &[Option<usize>],
        k: usize,
    ) -> Result<Self, RerankError> {
        let (no, n) = (old.nrows(), new.nrows());
        if origin.len() != n {
            return Err(RerankError::DimMismatch {
                what: "row origins",
                got: origin.len(),
                expected: n,
            });
        }
        if let Some(&index) = origin.iter().flatten().find(|&&o| o >= no) {
            return Err(RerankError::IndexOutOfRange {
                what: "old gallery",
                index,
                len: no,
            });
        }
        let ordered = origin
            .iter()
            .flatten()
            .zip(origin.iter().flatten().skip(1))
            .all(|(a, b)| a < b);
        // Full lists on both sides (k others exist), else build.
        let full = k >= 1 && no > k && n > k && self.k == k && self.len() == no;
        if !ordered || !full || old.ncols() != new.ncols() {
            return Self::build(new, k);
        }
        check_finite(new, "gallery")?;

        let mut new_of_old = vec![None; no];
        for (i, o) in origin.iter().enumerate() {
            if let Some(o) = o {
                new_of_old[*o] = Some(i as u32);
            }
        }
        let removed: Vec<usize> = (0..no).filter(|&o| new_of_old[o].is_none()).collect();
        let added: Vec<usize> = (0..n).filter(|&i| origin[i].is_none()).collect();
        let list = |o: usize| &self.ids[o * k..(o + 1) * k];
        // Survivors whose list lost a member must be rescanned.
        let (keep, mut rescan): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| {
            origin[i].is_some_and(|o| list(o).iter().all(|&j| new_of_old[j as usize].is_some()))
        });

        let pn = Points::new(new);
        // The rows a kept survivor is compared with: removed ones (did its
        // maximum go?) then added ones (do they enter its list or raise
        // its maximum?).
        let mut others = Array2::<f32>::zeros((removed.len() + added.len(), new.ncols()));
        for (mut r, &o) in others.rows_mut().into_iter().zip(&removed) {
            r.assign(&old.row(o));
        }
        for (mut r, &i) in others
            .rows_mut()
            .into_iter()
            .skip(removed.len())
            .zip(&added)
        {
            r.assign(&new.row(i));
        }
        let po = Points::new(others.view());
        let merged: Vec<Option<Row>> = keep
            .par_chunks(BLOCK)
            .flat_map_iter(|rows| {
                let block = new.select(Axis(0), rows);
                let pb = Points::new(block.view());
                let dots = pb.dot_block(0, rows.len(), &po, 0);
                let mut approx = Vec::new();
                rows.iter()
                    .enumerate()
                    .map(|(r, &i)| {
                        pb.approx_row(r, dots.row(r), &po, 0, &mut approx);
                        let o = origin[i].unwrap_or_default();
                        self.merge_row(o, &pb, r, &po, &approx, removed.len(), &added, &new_of_old)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();

        let mut rows: Vec<Option<Row>> = (0..n).map(|_| None).collect();
        for (&i, m) in keep.iter().zip(merged) {
            match m {
                Some(row) => rows[i] = Some(row),
                None => rescan.push(i),
            }
        }
        rescan.sort_unstable();
        let scanned: Vec<Row> = rescan
            .par_chunks(BLOCK)
            .flat_map_iter(|idx| {
                let block = new.select(Axis(0), idx);
                let pb = Points::new(block.view());
                // k + 1 so that dropping the row itself leaves k.
                screen(&pb, 0, idx.len(), &pn, k + 1)
                    .into_iter()
                    .zip(idx)
                    .map(|(Screened { max, cands }, &i)| {
                        let c = top_k_of(cands.into_iter().filter(|e| e.1 as usize != i), k);
                        Row {
                            ids: c.iter().map(|e| e.1).collect(),
                            d2: c.iter().map(|e| e.0).collect(),
                            max,
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for (&i, row) in rescan.iter().zip(scanned) {
            rows[i] = Some(row);
        }

        let mut out = Self {
            k,
            n2: pn.n2.clone(),
            ids: Vec::with_capacity(n * k),
            d2: Vec::with_capacity(n * k),
            row_max: Vec::with_capacity(n),
            list_ids: Vec::new(),
            list_d: Vec::new(),
        };
        for row in rows {
            let Some(row) = row else {
                return Err(RerankError::Empty {
                    what: "updated neighbour row",
                });
            };
            out.ids.extend(row.ids);
            out.d2.extend(row.d2);
            out.row_max.push(row.max);
        }
        Ok(out.prepared())
    }

    /// Kept survivor (old row `o`, block row `r` of `pb`) merged with the
    /// added rows; None when the item at its maximum distance was removed
    /// (it must be rescanned). `approx` holds its approximate d2 to the
    /// rows of `po`: `n_removed` removed rows, then the added rows.
    #[allow(clippy::too_many_arguments)]
    fn merge_row(
        &self,
        o: usize,
        pb: &Points,
        r: usize,
        po: &Points,
        approx: &[f64],
        n_removed: usize,
        added: &[usize],
        new_of_old: &[Option<u32>],
    ) -> Option<Row> {
        let k = self.k;
        let e2 = 2.0 * pb.err_bound(r, po);
        let exact = |c: usize| d2_pair(pb.x32.row(r), pb.n2[r], po.x32.row(c), po.n2[c]);
        let old_max = self.row_max[o];
        for (c, &a) in approx[..n_removed].iter().enumerate() {
            if a >= old_max - e2 && exact(c) >= old_max {
                return None;
            }
        }
        let kth = self.d2[(o + 1) * k - 1];
        let mut list: Vec<(f64, u32)> = (o * k..(o + 1) * k)
            .filter_map(|t| Some((self.d2[t], new_of_old[self.ids[t] as usize]?)))
            .collect();
        let mut max = old_max;
        for (t, &a) in approx[n_removed..].iter().enumerate() {
            let (near, far) = (a <= kth + e2, a >= max - e2);
            if near || far {
                let d = exact(n_removed + t);
                max = max.max(d);
                if near {
                    list.push((d, added[t] as u32));
                }
            }
        }
        top_k_sorted(&mut list, k);
        Some(Row {
            ids: list.iter().map(|e| e.1).collect(),
            d2: list.iter().map(|e| e.0).collect(),
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut impl Rng, n: usize, d: usize) -> Array2<f32> {
        Array2::from_shape_fn((n, d), |_| rng.random::<f32>() - 0.5)
    }

    /// Applies removals (rows where `drop` says so) and inserts `fresh`
    /// rows at positions `at`; returns the new matrix and the origins.
    fn edit(
        old: &Array2<f32>,
        drop: impl Fn(usize) -> bool,
        fresh: &Array2<f32>,
        at: &[usize],
    ) -> (Array2<f32>, Vec<Option<usize>>) {
        let mut rows: Vec<(Vec<f32>, Option<usize>)> = (0..old.nrows())
            .filter(|&o| !drop(o))
            .map(|o| (old.row(o).to_vec(), Some(o)))
            .collect();
        for (f, &pos) in fresh.rows().into_iter().zip(at) {
            rows.insert(pos.min(rows.len()), (f.to_vec(), None));
        }
        let d = old.ncols();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.0.clone()).collect();
        let m = Array2::from_shape_vec((rows.len(), d), flat).unwrap();
        (m, rows.into_iter().map(|r| r.1).collect())
    }

    fn assert_same(a: &GalleryNeighbours, b: &GalleryNeighbours) {
        assert_eq!(a.k, b.k);
        assert_eq!(a.n2, b.n2, "norms");
        assert_eq!(a.ids, b.ids, "neighbour ids");
        assert_eq!(a.d2, b.d2, "neighbour d2");
        assert_eq!(a.row_max, b.row_max, "row maxima");
    }

    #[test]
    fn adds_and_removes_equal_a_fresh_build() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let k = 6;
        let old = random(&mut rng, 300, 16);
        let nb_old = GalleryNeighbours::build(old.view(), k).unwrap();
        // Remove every 7th row plus the rows at several rows' maxima (so
        // the "maximum removed" path runs), insert 40 rows anywhere.
        let far: Vec<u32> = (0..20)
            .map(|o| {
                (0..300)
                    .filter(|&j| j != o)
                    .max_by(|&a, &b| {
                        let d = |j: usize| (&old.row(o) - &old.row(j)).mapv(|x| x * x).sum();
                        d(a).total_cmp(&d(b))
                    })
                    .unwrap() as u32
            })
            .collect();
        let fresh = random(&mut rng, 40, 16);
        let at: Vec<usize> = (0..40).map(|t| (t * 37) % 280).collect();
        let (new, origin) = edit(
            &old,
            |o| o % 7 == 3 || far.contains(&(o as u32)),
            &fresh,
            &at,
        );
        let inc = nb_old.updated(old.view(), new.view(), &origin, k).unwrap();
        assert_same(&inc, &GalleryNeighbours::build(new.view(), k).unwrap());
    }

    #[test]
    fn duplicates_and_ties_break_by_row_as_in_a_build() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let k = 4;
        let base = random(&mut rng, 30, 8);
        // Every vector three times: many exact ties at distance 0.
        let old = ndarray::concatenate(Axis(0), &[base.view(), base.view(), base.view()]).unwrap();
        let nb_old = GalleryNeighbours::build(old.view(), k).unwrap();
        let fresh = base.select(Axis(0), &[0, 1, 2, 3, 4]);
        let (new, origin) = edit(&old, |o| o % 11 == 0, &fresh, &[0, 5, 17, 40, 80]);
        let inc = nb_old.updated(old.view(), new.view(), &origin, k).unwrap();
        assert_same(&inc, &GalleryNeighbours::build(new.view(), k).unwrap());
    }

    #[test]
    fn small_galleries_and_reordering_fall_back_to_a_build() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let old = random(&mut rng, 5, 8);
        let k = 6;
        let nb_old = GalleryNeighbours::build(old.view(), k).unwrap();
        let fresh = random(&mut rng, 4, 8);
        let (new, origin) = edit(&old, |_| false, &fresh, &[0, 2, 4, 6]);
        let inc = nb_old.updated(old.view(), new.view(), &origin, k).unwrap();
        assert_same(&inc, &GalleryNeighbours::build(new.view(), k).unwrap());

        let nb3 = GalleryNeighbours::build(old.view(), 3).unwrap();
        let swapped = old.select(Axis(0), &[1, 0, 2, 3, 4]);
        let origin = [Some(1), Some(0), Some(2), Some(3), Some(4)];
        let inc = nb3.updated(old.view(), swapped.view(), &origin, 3).unwrap();
        assert_same(&inc, &GalleryNeighbours::build(swapped.view(), 3).unwrap());

        let err = nb_old
            .updated(old.view(), old.view(), &[Some(9); 5], k)
            .unwrap_err();
        assert!(matches!(err, RerankError::IndexOutOfRange { .. }), "{err}");
    }
}
