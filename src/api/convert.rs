//! Protobuf messages to and from the transport-free request types. Every
//! message is destructured or built field by field, so a field added to
//! the proto or to a domain type breaks the build here instead of being
//! silently dropped.

use super::pb;
use crate::gallery::{Hit, Metadata};
use crate::query::add::{Outcome, Status, Summary};
use crate::query::batch::{BatchOptions, BatchQuery, BatchResult, BatchSummary};
use crate::query::checks::Descriptor;
use crate::query::gallery::{GalleryStats, IndexState, ReplicationState};
use crate::query::item::Content;
use crate::query::plan::{KrOptions, PostOptions, QeOptions};
use crate::query::search::{Found, Options, Query, NO_QUERY};
use crate::query::service::Embedded;
use crate::query::timing::Timing;
use crate::query::ServiceError;

fn metadata(m: std::collections::HashMap<String, String>) -> Metadata {
    m.into_iter().collect()
}

pub fn descriptor(d: pb::Descriptor) -> Descriptor {
    let pb::Descriptor {
        values,
        model_fingerprint,
    } = d;
    Descriptor {
        values,
        model_fingerprint,
    }
}

/// A search's gallery, query (or why it has none) and options.
/// A Search call: the gallery, the minimum sequence to wait for, the
/// query and the options.
pub type SearchCall = (String, u64, Result<Query, ServiceError>, Options);

pub fn search_request(r: pb::SearchRequest) -> SearchCall {
    let pb::SearchRequest {
        gallery,
        min_sequence,
        query,
        top_k,
        filter,
        post_processing,
        ef_search,
        exact,
    } = r;
    use pb::search_request::Query as Q;
    let query = match query {
        Some(Q::Image(b)) => Ok(Query::Image(b)),
        Some(Q::Descriptor(d)) => Ok(Query::Descriptor(descriptor(d))),
        Some(Q::ItemId(id)) => Ok(Query::ItemId(id)),
        None => Err(ServiceError::Invalid(NO_QUERY.into())),
    };
    let opts = Options {
        top_k,
        ef_search,
        exact,
        filter: metadata(filter),
        post: post(post_processing),
    };
    (gallery, min_sequence, query, opts)
}

fn post(p: Option<pb::PostProcessing>) -> PostOptions {
    let pb::PostProcessing {
        shortlist,
        query_expansion,
        k_reciprocal,
    } = p.unwrap_or_default();
    PostOptions {
        shortlist,
        query_expansion: query_expansion.map(|q| {
            let pb::QueryExpansion { enabled, k, alpha } = q;
            QeOptions {
                enabled,
                k: Some(k),
                alpha: Some(alpha),
            }
        }),
        k_reciprocal: k_reciprocal.map(|k| {
            let pb::KReciprocal {
                enabled,
                k1,
                k2,
                lambda,
            } = k;
            KrOptions {
                enabled,
                k1: Some(k1),
                k2: Some(k2),
                lambda: Some(lambda),
            }
        }),
    }
}

/// One SearchBatch message: its gallery and options (read from the first
/// message only) and its queries.
pub fn batch_request(r: pb::SearchBatchRequest) -> (String, BatchOptions, Vec<BatchQuery>) {
    let pb::SearchBatchRequest {
        gallery,
        options,
        queries,
    } = r;
    let pb::BatchOptions {
        top_k,
        stages,
        digix,
        dba_renormalise,
    } = options.unwrap_or_default();
    let options = BatchOptions {
        top_k,
        stages,
        digix,
        dba_renormalise,
    };
    let queries = queries
        .into_iter()
        .map(|q| {
            let pb::BatchQuery { id, query } = q;
            use pb::batch_query::Query as Q;
            let query = match query {
                Some(Q::Image(b)) => Ok(Query::Image(b)),
                Some(Q::Descriptor(d)) => Ok(Query::Descriptor(descriptor(d))),
                Some(Q::ItemId(id)) => Ok(Query::ItemId(id)),
                None => Err(ServiceError::Invalid(NO_QUERY.into())),
            };
            BatchQuery { id, query }
        })
        .collect();
    (gallery, options, queries)
}

/// An item to add: its gallery name (empty: the previous item's), id,
/// content and metadata.
pub fn add_item(i: pb::AddItem) -> (String, String, Option<Content>, Metadata) {
    let pb::AddItem {
        gallery,
        id,
        content,
        metadata: meta,
    } = i;
    use pb::add_item::Content as C;
    let content = content.map(|c| match c {
        C::Image(b) => Content::Image(b),
        C::Descriptor(d) => Content::Descriptor(descriptor(d)),
    });
    (gallery, id, content, metadata(meta))
}

pub fn hit(h: Hit) -> pb::Hit {
    let Hit {
        id,
        seq: _,
        distance,
        metadata,
    } = h;
    pb::Hit {
        id,
        distance,
        metadata: metadata.into_iter().collect(),
    }
}

pub fn timings(t: Vec<Timing>) -> Vec<pb::StageTiming> {
    t.into_iter()
        .map(|Timing { stage, micros }| pb::StageTiming { stage, micros })
        .collect()
}

pub fn found(f: Found) -> pb::SearchResponse {
    let Found {
        hits,
        timings: t,
        stages,
        degraded,
    } = f;
    pb::SearchResponse {
        hits: hits.into_iter().map(hit).collect(),
        timings: timings(t),
        stages,
        degraded,
    }
}

pub fn embedded(e: Embedded) -> pb::EmbedResponse {
    let Embedded {
        values,
        model_fingerprint,
        timings: t,
    } = e;
    pb::EmbedResponse {
        descriptor: Some(pb::Descriptor {
            values,
            model_fingerprint,
        }),
        timings: timings(t),
    }
}

pub fn stats(s: GalleryStats) -> pb::GalleryStatsResponse {
    let GalleryStats {
        gallery,
        count,
        dims,
        model_fingerprint,
        execution_provider,
        index,
        replication,
    } = s;
    let IndexState {
        points,
        tombstones,
        rebuilding,
        generation,
        stale_items,
        post_processing_generation,
        dba,
        graph,
        projection_components,
        default_ef,
        calibrated_recall,
        calibration_sample,
        target_recall_reached,
        build_seconds,
    } = index;
    pb::GalleryStatsResponse {
        gallery,
        count,
        dims,
        model_fingerprint,
        execution_provider,
        index: Some(pb::IndexState {
            points,
            tombstones,
            rebuilding,
            generation,
            stale_items,
            post_processing_generation,
            dba,
            graph,
            projection_components,
            default_ef,
            calibrated_recall,
            calibration_sample,
            target_recall_reached,
            build_seconds,
        }),
        replication: replication.map(|r| {
            let ReplicationState {
                applied_sequence,
                lag,
                caught_up,
                connected,
            } = r;
            pb::ReplicationState {
                applied_sequence,
                lag,
                caught_up,
                connected,
            }
        }),
    }
}

pub fn outcome(o: Outcome) -> pb::ItemOutcome {
    let Outcome {
        index,
        id,
        status,
        reason,
        sequence,
    } = o;
    use pb::item_outcome::Status as S;
    let status = match status {
        Status::Added => S::Added,
        Status::Replaced => S::Replaced,
        Status::RetryLater => S::RetryLater,
        Status::Rejected => S::Rejected,
    };
    pb::ItemOutcome {
        id,
        status: status as i32,
        reason,
        index,
        sequence,
    }
}

pub fn summary(s: Summary) -> pb::AddSummary {
    let Summary {
        added,
        replaced,
        retry_later,
        rejected,
    } = s;
    pb::AddSummary {
        added,
        replaced,
        rejected,
        retry_later,
    }
}

pub fn batch_result(r: BatchResult) -> pb::BatchResult {
    let BatchResult { id, index, hits } = r;
    pb::BatchResult {
        id,
        index,
        hits: hits.into_iter().map(hit).collect(),
    }
}

pub fn batch_summary(s: BatchSummary) -> pb::BatchSummary {
    let BatchSummary {
        queries,
        gallery_items,
        timings: t,
        stages,
    } = s;
    pb::BatchSummary {
        queries,
        gallery_items,
        timings: timings(t),
        stages,
    }
}
