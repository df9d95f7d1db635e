//! Resolves a request's post-processing options against the server
//! defaults into a validated `online::Plan`.

use tonic::Status;

use super::pb;
use crate::config::PostProcessingDefaults;
use crate::gallery::online::{Plan, QueryExpansion};
use crate::rerank::kreciprocal::KrParams;

pub(super) struct Limits<'a> {
    pub pp: &'a PostProcessingDefaults,
    pub max_top_k: u32,
}

/// INVALID_ARGUMENT for anything a stage would reject later.
pub(super) fn plan(
    req: Option<pb::PostProcessing>,
    lim: &Limits<'_>,
    top_k: usize,
    ef: usize,
    exact: bool,
) -> Result<Plan, Status> {
    let pp = lim.pp;
    let req = req.unwrap_or_default();
    let bad = |m: String| Err(Status::invalid_argument(m));
    let shortlist = req.shortlist.unwrap_or(pp.shortlist);
    if shortlist == 0 || shortlist > pp.max_shortlist {
        return bad(format!(
            "post_processing.shortlist must be between 1 and {} (got {shortlist})",
            pp.max_shortlist
        ));
    }
    let qe = req.query_expansion.unwrap_or(pb::QueryExpansion {
        enabled: pp.query_expansion,
        k: pp.qe_k,
        alpha: pp.qe_alpha,
    });
    if qe.enabled && (qe.k == 0 || qe.k > lim.max_top_k) {
        return bad(format!(
            "query_expansion.k must be between 1 and {} (got {})",
            lim.max_top_k, qe.k
        ));
    }
    if qe.enabled && !(qe.alpha.is_finite() && qe.alpha >= 0.0) {
        return bad(format!(
            "query_expansion.alpha must be finite and >= 0 (got {})",
            qe.alpha
        ));
    }
    let kr = req.k_reciprocal.unwrap_or(pb::KReciprocal {
        enabled: pp.k_reciprocal,
        k1: pp.kr_k1,
        k2: pp.kr_k2,
        lambda: pp.kr_lambda,
    });
    let nk = pp.neighbours_k;
    if kr.enabled {
        if kr.k1 == 0 || kr.k1 > nk {
            return bad(format!(
                "k_reciprocal.k1 must be between 1 and {nk} (the stored neighbour lists; got {})",
                kr.k1
            ));
        }
        if kr.k2 == 0 || kr.k2 > nk + 1 {
            return bad(format!(
                "k_reciprocal.k2 must be between 1 and {} (got {})",
                nk + 1,
                kr.k2
            ));
        }
        if !(0.0..=1.0).contains(&kr.lambda) {
            return bad(format!(
                "k_reciprocal.lambda must be in [0, 1] (got {})",
                kr.lambda
            ));
        }
    }
    Ok(Plan {
        top_k,
        ef,
        exact,
        shortlist: (shortlist as usize).max(top_k),
        qe: qe.enabled.then_some(QueryExpansion {
            k: qe.k as usize,
            alpha: f64::from(qe.alpha),
        }),
        kr: kr.enabled.then_some(KrParams {
            k1: kr.k1 as usize,
            k2: kr.k2 as usize,
            lambda: f64::from(kr.lambda),
        }),
    })
}
