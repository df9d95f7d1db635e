//! Retrieval metrics of spec section 2: Top-1, AP@10 / mAP@10, P@10 and the
//! DIGIX 2020 score.

use thiserror::Error;

/// Cut-off of AP@10 and P@10.
pub const CUTOFF: usize = 10;

#[derive(Debug, Error, PartialEq)]
pub enum MetricsError {
    #[error("no queries to evaluate")]
    Empty,
    #[error("length mismatch: {what} has {got} entries, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// The protocol requires every query to have at least one relevant gallery item.
    #[error("query {query} has R_q = 0 (no gallery item of its class)")]
    NoRelevant { query: usize },
    #[error("query {query}: {found} relevant items in its top {CUTOFF} but R_q = {r_q}")]
    RelevantExceedsRq {
        query: usize,
        found: usize,
        r_q: usize,
    },
}

/// Means over the query set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub top1: f64,
    pub map10: f64,
    pub p10: f64,
    /// 0.5 * top1 + 0.5 * map10.
    pub score: f64,
    pub n_queries: usize,
}

/// AP@10 of one query from its relevance flags in rank order (only the
/// first 10 are read; a list shorter than 10 counts the missing ranks as
/// non-relevant).
pub fn ap_at_10(rel: &[bool], r_q: usize) -> Result<f64, MetricsError> {
    if r_q == 0 {
        return Err(MetricsError::NoRelevant { query: 0 });
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (k, &r) in rel.iter().take(CUTOFF).enumerate() {
        if r {
            hits += 1;
            sum += hits as f64 / (k + 1) as f64;
        }
    }
    if hits > r_q {
        return Err(MetricsError::RelevantExceedsRq {
            query: 0,
            found: hits,
            r_q,
        });
    }
    Ok(sum / r_q.min(CUTOFF) as f64)
}

/// P@10 of one query: relevant items in the first 10, divided by 10.
pub fn p_at_10(rel: &[bool]) -> f64 {
    rel.iter().take(CUTOFF).filter(|&&r| r).count() as f64 / CUTOFF as f64
}

/// R_q for every query: the number of gallery items sharing its label.
pub fn relevant_counts<L: PartialEq>(query_labels: &[L], gallery_labels: &[L]) -> Vec<usize> {
    query_labels
        .iter()
        .map(|q| gallery_labels.iter().filter(|g| *g == q).count())
        .collect()
}

/// Metrics over a query set. `ranked_labels[q]` are the labels of query q's
/// ranked gallery list (at least the first 10 are needed), `r_q[q]` its
/// number of relevant gallery items.
pub fn evaluate<L: PartialEq>(
    query_labels: &[L],
    ranked_labels: &[Vec<L>],
    r_q: &[usize],
) -> Result<Metrics, MetricsError> {
    let n = query_labels.len();
    if n == 0 {
        return Err(MetricsError::Empty);
    }
    for (what, got) in [("ranked_labels", ranked_labels.len()), ("r_q", r_q.len())] {
        if got != n {
            return Err(MetricsError::LengthMismatch {
                what,
                got,
                expected: n,
            });
        }
    }
    let (mut top1, mut map, mut p10) = (0.0, 0.0, 0.0);
    for (qi, (label, ranked)) in query_labels.iter().zip(ranked_labels).enumerate() {
        let rel: Vec<bool> = ranked.iter().take(CUTOFF).map(|g| g == label).collect();
        let ap = ap_at_10(&rel, r_q[qi]).map_err(|e| match e {
            MetricsError::NoRelevant { .. } => MetricsError::NoRelevant { query: qi },
            MetricsError::RelevantExceedsRq { found, r_q, .. } => MetricsError::RelevantExceedsRq {
                query: qi,
                found,
                r_q,
            },
            other => other,
        })?;
        top1 += if rel.first() == Some(&true) { 1.0 } else { 0.0 };
        map += ap;
        p10 += p_at_10(&rel);
    }
    let nf = n as f64;
    let (top1, map10, p10) = (top1 / nf, map / nf, p10 / nf);
    Ok(Metrics {
        top1,
        map10,
        p10,
        score: 0.5 * top1 + 0.5 * map10,
        n_queries: n,
    })
}

/// Convenience: metrics from ranked gallery indices and label arrays.
pub fn evaluate_indices<L: PartialEq + Clone>(
    query_labels: &[L],
    gallery_labels: &[L],
    ranking: &[Vec<usize>],
) -> Result<Metrics, MetricsError> {
    let ranked: Vec<Vec<L>> = ranking
        .iter()
        .map(|r| {
            r.iter()
                .take(CUTOFF)
                .filter_map(|&g| gallery_labels.get(g).cloned())
                .collect()
        })
        .collect();
    let r_q = relevant_counts(query_labels, gallery_labels);
    evaluate(query_labels, &ranked, &r_q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn ap_hand_checked() {
        // rel = 1,0,1,0,... R_q = 2: (1/1 + 2/3) / 2
        let rel = [true, false, true, false];
        assert!(close(ap_at_10(&rel, 2).unwrap(), (1.0 + 2.0 / 3.0) / 2.0));
        // R_q = 5, only 2 found in the top 10: divide by 5.
        assert!(close(ap_at_10(&rel, 5).unwrap(), (1.0 + 2.0 / 3.0) / 5.0));
        // R_q = 30: divide by min(30, 10) = 10.
        assert!(close(ap_at_10(&rel, 30).unwrap(), (1.0 + 2.0 / 3.0) / 10.0));
        // Hits past rank 10 are ignored.
        let mut long = vec![false; 12];
        long[10] = true;
        assert_eq!(ap_at_10(&long, 1).unwrap(), 0.0);
        // Perfect list.
        assert!(close(ap_at_10(&[true; 10], 10).unwrap(), 1.0));
    }

    #[test]
    fn r_q_zero_is_error() {
        assert_eq!(
            ap_at_10(&[false], 0),
            Err(MetricsError::NoRelevant { query: 0 })
        );
        let err = evaluate(&[1, 2], &[vec![1], vec![1]], &[1, 0]).unwrap_err();
        assert_eq!(err, MetricsError::NoRelevant { query: 1 });
    }

    #[test]
    fn inconsistent_r_q_is_error() {
        let err = evaluate(&[1], &[vec![1, 1]], &[1]).unwrap_err();
        assert!(matches!(
            err,
            MetricsError::RelevantExceedsRq { query: 0, .. }
        ));
    }

    #[test]
    fn evaluate_hand_checked() {
        // q0 label 7: ranked 7,3,7 ; R=2 -> top1 1, AP (1 + 2/3)/2, P@10 0.2
        // q1 label 3: ranked 7,3   ; R=1 -> top1 0, AP (1/2)/1,    P@10 0.1
        let m = evaluate(&[7, 3], &[vec![7, 3, 7], vec![7, 3]], &[2, 1]).unwrap();
        let ap0 = (1.0 + 2.0 / 3.0) / 2.0;
        let ap1 = 0.5;
        assert!(close(m.top1, 0.5));
        assert!(close(m.map10, (ap0 + ap1) / 2.0));
        assert!(close(m.p10, 0.15));
        assert!(close(m.score, 0.25 + 0.5 * (ap0 + ap1) / 2.0));
        assert_eq!(m.n_queries, 2);
    }

    #[test]
    fn evaluate_from_indices() {
        let gallery = ["a", "b", "a", "c"];
        let queries = ["a", "c"];
        let m = evaluate_indices(&queries, &gallery, &[vec![2, 1, 0, 3], vec![3, 0]]).unwrap();
        // q0: rel 1,0,1,0 R=2 -> (1+2/3)/2 ; q1: rel 1,0 R=1 -> 1
        assert!(close(m.top1, 1.0));
        assert!(close(m.map10, ((1.0 + 2.0 / 3.0) / 2.0 + 1.0) / 2.0));
        assert!(close(m.p10, (0.2 + 0.1) / 2.0));
    }

    #[test]
    fn bad_shapes() {
        assert_eq!(
            evaluate::<u8>(&[], &[], &[]).unwrap_err(),
            MetricsError::Empty
        );
        assert!(matches!(
            evaluate(&[1], &[], &[1]).unwrap_err(),
            MetricsError::LengthMismatch { .. }
        ));
    }
}
