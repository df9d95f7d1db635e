//! Protobuf messages to and from the transport-free request types.

use std::time::Duration;

use super::pb;
use crate::query::checks::Descriptor;
use crate::query::plan::{KrOptions, PostOptions, QeOptions};
use crate::query::search::{Query, NO_QUERY};
use crate::query::ServiceError;

pub fn descriptor(d: pb::Descriptor) -> Descriptor {
    Descriptor {
        values: d.values,
        model_fingerprint: d.model_fingerprint,
    }
}

pub fn query(q: Option<pb::search_request::Query>) -> Result<Query, ServiceError> {
    use pb::search_request::Query as Q;
    match q {
        Some(Q::Image(b)) => Ok(Query::Image(b)),
        Some(Q::Descriptor(d)) => Ok(Query::Descriptor(descriptor(d))),
        Some(Q::ItemId(id)) => Ok(Query::ItemId(id)),
        None => Err(ServiceError::Invalid(NO_QUERY.into())),
    }
}

pub fn batch_query(q: Option<pb::batch_query::Query>) -> Result<Query, ServiceError> {
    use pb::batch_query::Query as Q;
    match q {
        Some(Q::Image(b)) => Ok(Query::Image(b)),
        Some(Q::Descriptor(d)) => Ok(Query::Descriptor(descriptor(d))),
        Some(Q::ItemId(id)) => Ok(Query::ItemId(id)),
        None => Err(ServiceError::Invalid(NO_QUERY.into())),
    }
}

pub fn post(p: Option<pb::PostProcessing>) -> PostOptions {
    let p = p.unwrap_or_default();
    PostOptions {
        shortlist: p.shortlist,
        query_expansion: p.query_expansion.map(|q| QeOptions {
            enabled: q.enabled,
            k: Some(q.k),
            alpha: Some(q.alpha),
        }),
        k_reciprocal: p.k_reciprocal.map(|k| KrOptions {
            enabled: k.enabled,
            k1: Some(k.k1),
            k2: Some(k.k2),
            lambda: Some(k.lambda),
        }),
    }
}

pub fn timings(t: Vec<(String, Duration)>) -> Vec<pb::StageTiming> {
    t.into_iter()
        .map(|(stage, d)| pb::StageTiming {
            stage,
            micros: d.as_micros() as u64,
        })
        .collect()
}
