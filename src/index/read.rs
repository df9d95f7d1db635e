//! Nearest-neighbour reads by item seq, whichever structure answers: the
//! HNSW graph (whose point ids the owner maps to item seqs) or the exact
//! scan. [`Nearest::choose`] is the one place that picks between them;
//! writes stay with each structure's own calls.

use super::flat::FlatRows;
use super::AnnIndex;

/// Which items a search may return, by seq (the scan calls it from its
/// threads).
pub type Accept<'a> = dyn Fn(u64) -> bool + Sync + 'a;

/// The item seq living at an index point (None: a dead point).
pub type SeqAt<'a> = dyn Fn(u64) -> Option<u64> + 'a;

/// A structure that finds the nearest items.
pub trait NearestRead {
    /// The `k` items nearest the unit vector `q` that `accept` admits
    /// (None: every live item), as (seq, Euclidean distance), nearest
    /// first; `ef` is a graph's beam width. None when this structure
    /// cannot answer, and the caller reads another.
    fn nearest(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&Accept<'_>>,
    ) -> Option<Vec<(u64, f32)>>;
}

/// The exact scan always answers (`ef` plays no part); ties by seq.
impl NearestRead for FlatRows {
    fn nearest(
        &self,
        q: &[f32],
        k: usize,
        _ef: usize,
        accept: Option<&Accept<'_>>,
    ) -> Option<Vec<(u64, f32)>> {
        Some(self.top_k(q, k, accept))
    }
}

/// The graph read by seq: each point mapped to the item living there,
/// dead points (tombstones) skipped.
pub struct GraphSeqs<'a> {
    pub index: &'a AnnIndex,
    pub seq_at: &'a SeqAt<'a>,
}

/// None without a graph, or when `accept` rejects too much for the graph
/// to deliver `k` ([`AnnIndex::search`]).
impl NearestRead for GraphSeqs<'_> {
    fn nearest(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&Accept<'_>>,
    ) -> Option<Vec<(u64, f32)>> {
        let keep = |point: u64| {
            (self.seq_at)(point).is_some_and(|seq| accept.is_none_or(|accept| accept(seq)))
        };
        let hits = self.index.search(q, k, ef, &keep)?;
        Some(
            hits.into_iter()
                .filter_map(|(point, d)| Some(((self.seq_at)(point)?, d)))
                .collect(),
        )
    }
}

/// What one search reads.
pub enum Nearest<'a> {
    /// The graph, and the exact scan for what it cannot answer: a filter
    /// too selective for it, or a graph dropped since the choice.
    Graph(GraphSeqs<'a>, &'a FlatRows),
    Exact(&'a FlatRows),
}

impl<'a> Nearest<'a> {
    /// The exact scan when the request asks for it, for galleries of up to
    /// `exact_limit` `live` items (faster than a graph walk there, and
    /// they keep no graph), and while no graph is built; else the graph.
    pub fn choose(
        index: &'a AnnIndex,
        seq_at: &'a SeqAt<'a>,
        flat: &'a FlatRows,
        live: usize,
        exact: bool,
    ) -> Self {
        if exact || live <= index.params().exact_limit || !index.has_graph() {
            return Nearest::Exact(flat);
        }
        Nearest::Graph(GraphSeqs { index, seq_at }, flat)
    }

    /// [`NearestRead::nearest`] from whichever answers.
    pub fn nearest(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&Accept<'_>>,
    ) -> Vec<(u64, f32)> {
        match self {
            Nearest::Exact(flat) => flat.top_k(q, k, accept),
            Nearest::Graph(graph, flat) => graph
                .nearest(q, k, ef, accept)
                .unwrap_or_else(|| flat.top_k(q, k, accept)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::index::{HnswParams, Vector};

    /// Points 0..40 hold seqs 100..140, except point 7, which is dead.
    fn seq_at(point: u64) -> Option<u64> {
        (point < 40 && point != 7).then_some(point + 100)
    }

    #[test]
    fn the_graph_answers_by_seq_as_the_scan_does_and_the_choice_follows_the_rules() {
        // Random 8-d rows: distances far enough apart that the graph's and
        // the scan's rounding order them alike.
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        let mut unit = || -> Vector {
            let v: Vec<f32> = (0..8).map(|_| rng.random_range(-1.0..1.0)).collect();
            crate::index::distance::normalised(&v).unwrap().into()
        };
        let points: Vec<(u64, Vector)> = (0..40).map(|p| (p, unit())).collect();
        let params = HnswParams {
            exact_limit: 10,
            target_recall: 0.0,
            ..HnswParams::default()
        };
        let index = AnnIndex::new(params, &points);
        let rows = points
            .iter()
            .filter_map(|(p, v)| Some((seq_at(*p)?, v.clone())))
            .collect();
        let flat = FlatRows::of_rows(rows, false);
        let q = points[7].1.to_vec();
        let graph = GraphSeqs {
            index: &index,
            seq_at: &seq_at,
        };
        let odd = |seq: u64| seq % 2 == 1;
        for accept in [None, Some(&odd as &Accept<'_>)] {
            let from_graph = graph.nearest(&q, 5, 256, accept).unwrap();
            let exact = flat.nearest(&q, 5, 0, accept).unwrap();
            let seqs = |h: &[(u64, f32)]| h.iter().map(|h| h.0).collect::<Vec<_>>();
            assert_eq!(seqs(&from_graph), seqs(&exact));
            assert!(!seqs(&from_graph).contains(&107), "the dead point");
        }
        let reads = |live, exact| match Nearest::choose(&index, &seq_at, &flat, live, exact) {
            Nearest::Graph(..) => "graph",
            Nearest::Exact(_) => "exact",
        };
        assert_eq!(reads(39, false), "graph");
        assert_eq!(reads(39, true), "exact", "asked for");
        assert_eq!(reads(10, false), "exact", "up to the exact limit");
        index.clear();
        assert_eq!(reads(39, false), "exact", "no graph");
    }
}
