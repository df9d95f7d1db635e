//! `SearchBatch` over gRPC: collect the streamed call, hand it to the
//! transport-free [`BatchSearcher`], stream the results back.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert;
use super::pb::{self, search_batch_response::Kind};
use crate::gallery::Gallery;
use crate::query::batch::{BatchOptions, BatchQuery};
use crate::query::service::Service;
use crate::query::ServiceError;

type Tx = mpsc::Sender<Result<pb::SearchBatchResponse, Status>>;

/// The call as collected from the stream.
struct Call {
    gallery: Arc<Gallery>,
    options: BatchOptions,
    queries: Vec<BatchQuery>,
}

pub(super) async fn run(service: Arc<Service>, stream: Streaming<pb::SearchBatchRequest>, tx: Tx) {
    match answer(&service, stream).await {
        Ok(responses) => {
            for r in responses {
                if tx.send(Ok(r)).await.is_err() {
                    return; // the client went away
                }
            }
        }
        Err(status) => {
            let _ = tx.send(Err(status)).await;
        }
    }
}

async fn answer(
    service: &Service,
    stream: Streaming<pb::SearchBatchRequest>,
) -> Result<Vec<pb::SearchBatchResponse>, Status> {
    let call = read(service, stream).await?;
    let (results, summary) = service
        .batch
        .run(call.gallery, call.options, call.queries)
        .await?;
    let mut out: Vec<pb::SearchBatchResponse> = results
        .into_iter()
        .map(|r| pb::SearchBatchResponse {
            kind: Some(Kind::Result(convert::batch_result(r))),
        })
        .collect();
    out.push(pb::SearchBatchResponse {
        kind: Some(Kind::Summary(convert::batch_summary(summary))),
    });
    Ok(out)
}

/// Collects the call: gallery and options from the first message, queries
/// from all, refused as soon as they pass `max_batch_queries`.
async fn read(
    service: &Service,
    mut stream: Streaming<pb::SearchBatchRequest>,
) -> Result<Call, Status> {
    let mut call: Option<Call> = None;
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(super::status::request_error)?;
        let (gallery, options, queries) = convert::batch_request(msg);
        let c = match &mut call {
            Some(c) => c,
            None => call.insert(Call {
                gallery: service.gallery(&gallery)?,
                options,
                queries: Vec::new(),
            }),
        };
        service.batch.check_count(c.queries.len() + queries.len())?;
        c.queries.extend(queries);
    }
    Ok(call.ok_or_else(|| ServiceError::Invalid("the stream held no request".into()))?)
}
