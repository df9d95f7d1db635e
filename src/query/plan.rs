//! Resolves a request's post-processing options against the server
//! defaults into a validated `online::Plan`.

use serde::{Deserialize, Serialize};

use super::online::{Plan, QueryExpansion};
use super::ServiceError;
use crate::config::PostProcessingDefaults;
use crate::rerank::kreciprocal::KrParams;

/// A request's post-processing options; unset fields take the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PostOptions {
    pub shortlist: Option<u32>,
    pub query_expansion: Option<QeOptions>,
    pub k_reciprocal: Option<KrOptions>,
}

/// Query expansion; unset parameters take the server's defaults.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QeOptions {
    pub enabled: bool,
    pub k: Option<u32>,
    /// 0 = AQE, > 0 = alpha-QE.
    pub alpha: Option<f32>,
}

/// k-reciprocal re-ranking; unset parameters take the server's defaults.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KrOptions {
    pub enabled: bool,
    pub k1: Option<u32>,
    pub k2: Option<u32>,
    pub lambda: Option<f32>,
}

struct QeResolved {
    enabled: bool,
    k: u32,
    alpha: f32,
}

struct KrResolved {
    enabled: bool,
    k1: u32,
    k2: u32,
    lambda: f32,
}

pub struct Limits<'a> {
    pub pp: &'a PostProcessingDefaults,
    pub max_top_k: u32,
}

/// INVALID_ARGUMENT for anything a stage would reject later.
pub fn plan(
    req: PostOptions,
    lim: &Limits<'_>,
    top_k: usize,
    ef: usize,
    exact: bool,
) -> Result<Plan, ServiceError> {
    let pp = lim.pp;
    let bad = |m: String| Err(ServiceError::Invalid(m));
    let shortlist = req.shortlist.unwrap_or(pp.shortlist);
    if shortlist == 0 || shortlist > pp.max_shortlist {
        return bad(format!(
            "post_processing.shortlist must be between 1 and {} (got {shortlist})",
            pp.max_shortlist
        ));
    }
    let qe = req
        .query_expansion
        .map_or((pp.query_expansion, pp.qe_k, pp.qe_alpha), |q| {
            (
                q.enabled,
                q.k.unwrap_or(pp.qe_k),
                q.alpha.unwrap_or(pp.qe_alpha),
            )
        });
    let qe = QeResolved {
        enabled: qe.0,
        k: qe.1,
        alpha: qe.2,
    };
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
    let kr = req.k_reciprocal.map_or(
        KrResolved {
            enabled: pp.k_reciprocal,
            k1: pp.kr_k1,
            k2: pp.kr_k2,
            lambda: pp.kr_lambda,
        },
        |k| KrResolved {
            enabled: k.enabled,
            k1: k.k1.unwrap_or(pp.kr_k1),
            k2: k.k2.unwrap_or(pp.kr_k2),
            lambda: k.lambda.unwrap_or(pp.kr_lambda),
        },
    );
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
