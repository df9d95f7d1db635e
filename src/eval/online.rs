//! Emulation of the service's per-request KR (`query::online`) over a
//! whole query set, so `lookalike eval` can score it next to batch KR: per
//! query, an exact top-K shortlist of the gallery, then `kr_single` with
//! the gallery's precomputed neighbour lists.
//!
//! Differences from the service that are deliberate: the shortlist is
//! exact (the service may use HNSW) and is taken on the descriptors as
//! given (the service searches its DBA vectors when DBA is on).

use std::fmt;
use std::str::FromStr;

use ndarray::ArrayView2;
use rayon::prelude::*;

use crate::rerank::knn::rank_euclidean;
use crate::rerank::kreciprocal::{kr_single, query_max_d2, GalleryNeighbours, KrParams};
use crate::rerank::{Ranking, RerankError};

/// How many gallery candidates KR re-ranks per query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortlist {
    Top(usize),
    All,
}

impl FromStr for Shortlist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Shortlist::All);
        }
        match s.parse::<usize>() {
            Ok(k) if k > 0 => Ok(Shortlist::Top(k)),
            _ => Err(format!("expected a positive number or `all`, got {s:?}")),
        }
    }
}

impl fmt::Display for Shortlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortlist::Top(k) => write!(f, "{k}"),
            Shortlist::All => f.write_str("all"),
        }
    }
}

/// Which row maximum normalises the query's distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowMax {
    /// Maximum over the shortlist (the service today: `None`).
    Shortlist,
    /// Exact maximum over the gallery (`query_max_d2`, one O(N d) scan).
    Exact,
}

/// The gallery side, built once and shared by every variant.
pub struct OnlineKr<'a> {
    gallery: ArrayView2<'a, f32>,
    nb: GalleryNeighbours,
    params: KrParams,
}

impl<'a> OnlineKr<'a> {
    /// `neighbours_k`: neighbours stored per gallery item, as the
    /// service's `neighbours_k`; raised to what `params` needs (the service
    /// would refuse such a request instead; the result does not depend on
    /// it once it is large enough).
    pub fn new(
        gallery: ArrayView2<'a, f32>,
        params: KrParams,
        neighbours_k: usize,
    ) -> Result<Self, RerankError> {
        params.validate()?;
        let k = neighbours_k.max(params.k1).max(params.k2.saturating_sub(1));
        let nb = GalleryNeighbours::build(gallery, k)?;
        Ok(Self {
            gallery,
            nb,
            params,
        })
    }

    /// Each query's shortlist: its K nearest gallery items by exact
    /// Euclidean distance (ties by index), or the whole gallery.
    pub fn shortlists(
        &self,
        queries: ArrayView2<f32>,
        shortlist: Shortlist,
    ) -> Result<Ranking, RerankError> {
        let ng = self.gallery.nrows();
        match shortlist {
            Shortlist::All => Ok(vec![(0..ng).collect(); queries.nrows()]),
            Shortlist::Top(k) => rank_euclidean(queries, self.gallery, k.min(ng)),
        }
    }

    /// Per query, the `top_n` shortlisted gallery items re-ranked by
    /// single-query KR (P = {q} + gallery), best first.
    pub fn rank(
        &self,
        queries: ArrayView2<f32>,
        shortlists: &[Vec<usize>],
        row_max: RowMax,
        top_n: usize,
    ) -> Result<Ranking, RerankError> {
        if shortlists.len() != queries.nrows() {
            return Err(RerankError::RankingRows {
                got: shortlists.len(),
                expected: queries.nrows(),
            });
        }
        (0..queries.nrows())
            .into_par_iter()
            .map(|i| {
                let q = queries.row(i);
                let mx = match row_max {
                    RowMax::Shortlist => None,
                    RowMax::Exact => Some(query_max_d2(q, self.gallery, &self.nb)?),
                };
                let ranked = kr_single(
                    q,
                    self.gallery,
                    &self.nb,
                    &shortlists[i],
                    mx,
                    &self.params,
                    top_n,
                )?;
                Ok(ranked.into_iter().map(|(g, _)| g).collect())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rerank::kreciprocal::k_reciprocal;
    use crate::rerank::kreciprocal::tests::random;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn unit(mut x: ndarray::Array2<f32>) -> ndarray::Array2<f32> {
        for mut r in x.rows_mut() {
            let n = r.dot(&r).sqrt();
            r.mapv_inplace(|v| v / n);
        }
        x
    }

    #[test]
    fn parse_shortlist() {
        assert_eq!("100".parse::<Shortlist>(), Ok(Shortlist::Top(100)));
        assert_eq!(" ALL ".parse::<Shortlist>(), Ok(Shortlist::All));
        assert!("0".parse::<Shortlist>().is_err());
        assert!("-3".parse::<Shortlist>().is_err());
        assert!("ten".parse::<Shortlist>().is_err());
        assert_eq!(Shortlist::Top(300).to_string(), "300");
        assert_eq!(Shortlist::All.to_string(), "all");
    }

    #[test]
    fn whole_gallery_with_exact_max_equals_single_query_batch() {
        let mut rng = StdRng::seed_from_u64(31);
        for (nq, ng, d, k1, k2) in [(6, 80, 8, 20, 6), (4, 30, 5, 6, 3), (3, 25, 4, 30, 6)] {
            let q = unit(random(&mut rng, nq, d, false));
            let g = unit(random(&mut rng, ng, d, false));
            let p = KrParams {
                k1,
                k2,
                lambda: 0.3,
            };
            let on = OnlineKr::new(g.view(), p, 21).unwrap();
            let sl = on.shortlists(q.view(), Shortlist::All).unwrap();
            let exact = on.rank(q.view(), &sl, RowMax::Exact, 10).unwrap();
            // With the whole gallery, the shortlist maximum is the exact one.
            assert_eq!(
                on.rank(q.view(), &sl, RowMax::Shortlist, 10).unwrap(),
                exact
            );
            // A number >= the gallery is the whole gallery too.
            let big = on.shortlists(q.view(), Shortlist::Top(ng + 5)).unwrap();
            assert_eq!(on.rank(q.view(), &big, RowMax::Exact, 10).unwrap(), exact);
            for (i, got) in exact.iter().enumerate() {
                // The spec's single-query definition: batch KR with P = {q} + gallery.
                let one = q.slice(ndarray::s![i..i + 1, ..]);
                let batch = k_reciprocal(one, g.view(), &p, 10).unwrap();
                assert_eq!(*got, batch.ids[0], "query {i}, ng {ng}");
            }
            assert_eq!(exact.len(), nq);
        }
    }

    #[test]
    fn short_shortlist_only_reorders_within_it() {
        let mut rng = StdRng::seed_from_u64(37);
        let q = unit(random(&mut rng, 8, 6, false));
        let g = unit(random(&mut rng, 120, 6, false));
        let p = KrParams::default();
        let on = OnlineKr::new(g.view(), p, 21).unwrap();
        let all = on.shortlists(q.view(), Shortlist::All).unwrap();
        let full = on.rank(q.view(), &all, RowMax::Exact, 120).unwrap();
        for k in [5usize, 30, 60] {
            let sl = on.shortlists(q.view(), Shortlist::Top(k)).unwrap();
            let euclid = rank_euclidean(q.view(), g.view(), k).unwrap();
            assert_eq!(sl, euclid);
            for rm in [RowMax::Shortlist, RowMax::Exact] {
                let out = on.rank(q.view(), &sl, rm, 10).unwrap();
                for (i, r) in out.iter().enumerate() {
                    assert_eq!(r.len(), k.min(10));
                    assert!(r.iter().all(|g| sl[i].contains(g)), "K {k} query {i}");
                }
                // With the exact row maximum and a shortlist longer than
                // the query's neighbour list (k1 + 1), every D* is that of
                // the whole-gallery run: the ranking is the full one
                // restricted to the shortlist.
                if rm == RowMax::Exact && k > p.k1 + 1 {
                    for (i, r) in out.iter().enumerate() {
                        let want: Vec<usize> = full[i]
                            .iter()
                            .copied()
                            .filter(|g| sl[i].contains(g))
                            .take(10)
                            .collect();
                        assert_eq!(*r, want, "K {k} query {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shortlists() {
        let mut rng = StdRng::seed_from_u64(41);
        let q = unit(random(&mut rng, 2, 4, false));
        let g = unit(random(&mut rng, 30, 4, false));
        let on = OnlineKr::new(g.view(), KrParams::default(), 21).unwrap();
        assert!(matches!(
            on.rank(q.view(), &[vec![0, 1]], RowMax::Exact, 10),
            Err(RerankError::RankingRows { .. })
        ));
        assert!(matches!(
            on.rank(q.view(), &[vec![0], vec![30]], RowMax::Exact, 10),
            Err(RerankError::IndexOutOfRange { .. })
        ));
        let bad = KrParams {
            lambda: 2.0,
            ..KrParams::default()
        };
        assert!(OnlineKr::new(g.view(), bad, 21).is_err());
    }
}
