//! Brute-force search: the ground truth the ANN index is measured against,
//! and the path for small filtered candidate sets.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::distance::{dot, euclidean_from_cosine};

/// Max-heap entry ordered by distance, then seq, so the worst is on top.
#[derive(PartialEq)]
struct Scored(f32, u64);

impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// The `k` nearest of `candidates` to the unit vector `query`, as
/// (seq, Euclidean distance), nearest first; ties broken by seq.
pub fn top_k<'a>(
    query: &[f32],
    candidates: impl Iterator<Item = (u64, &'a [f32])>,
    k: usize,
) -> Vec<(u64, f32)> {
    euclidean(nearest(query, candidates, k))
}

/// `top_k` in cosine distance, as (distance, seq) pairs, nearest first:
/// the order every exact path ranks by (parts merged by it rank as one).
pub fn nearest<'a>(
    query: &[f32],
    candidates: impl Iterator<Item = (u64, &'a [f32])>,
    k: usize,
) -> Vec<(f32, u64)> {
    if k == 0 {
        return Vec::new();
    }
    let mut heap = BinaryHeap::with_capacity(k + 1);
    for (seq, v) in candidates {
        let d = (1.0 - dot(query, v)).max(0.0);
        if heap.len() < k {
            heap.push(Scored(d, seq));
        } else if let Some(worst) = heap.peek() {
            if Scored(d, seq) < *worst {
                heap.pop();
                heap.push(Scored(d, seq));
            }
        }
    }
    let mut out: Vec<_> = heap.into_vec();
    out.sort();
    out.into_iter().map(|Scored(d, s)| (d, s)).collect()
}

/// The k nearest of several `nearest` answers (each over its own rows).
pub fn merge(parts: impl IntoIterator<Item = Vec<(f32, u64)>>, k: usize) -> Vec<(f32, u64)> {
    let mut all: Vec<(f32, u64)> = parts.into_iter().flatten().collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.truncate(k);
    all
}

/// (seq, Euclidean distance) from (cosine distance, seq).
pub fn euclidean(hits: Vec<(f32, u64)>) -> Vec<(u64, f32)> {
    hits.into_iter()
        .map(|(d, s)| (s, euclidean_from_cosine(d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_nearest_in_order() {
        let items: Vec<(u64, Vec<f32>)> = vec![
            (1, vec![1.0, 0.0]),
            (2, vec![0.0, 1.0]),
            (3, vec![0.6, 0.8]),
            (4, vec![-1.0, 0.0]),
        ];
        let hits = top_k(
            &[1.0, 0.0],
            items.iter().map(|(s, v)| (*s, v.as_slice())),
            3,
        );
        let seqs: Vec<u64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(seqs, vec![1, 3, 2]);
        assert!(hits[0].1.abs() < 1e-6);
        assert!((hits[2].1 - 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn ties_break_by_seq_and_k_can_exceed_the_set() {
        let items: Vec<(u64, Vec<f32>)> = vec![(9, vec![0.0, 1.0]), (5, vec![0.0, 1.0])];
        let hits = top_k(
            &[1.0, 0.0],
            items.iter().map(|(s, v)| (*s, v.as_slice())),
            10,
        );
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![5, 9]);
    }
}
