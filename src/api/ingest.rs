//! `AddToGallery` over gRPC: a stream of items in, one outcome per item
//! out, then a summary. Items that arrive together form a round
//! (`query::add::add_round`): embedded concurrently and committed in one
//! transaction per gallery; an outcome is sent only after its item's
//! transaction has committed.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert;
use super::pb::{self, add_response::Kind};
use super::status::request_error;
use crate::gallery::Gallery;
use crate::query::add::{self, Incoming};
use crate::query::service::Service;
use crate::query::ServiceError;

type Tx = mpsc::Sender<Result<pb::AddResponse, Status>>;

pub(super) async fn run(service: Arc<Service>, stream: Streaming<pb::AddItem>, tx: Tx) {
    let mut chunks = stream.ready_chunks(add::ROUND);
    // An item that names no gallery goes to the previous item's.
    let mut current_gallery = String::new();
    let mut next_index = 0u64;
    let mut summary = add::Summary::default();
    while let Some(chunk) = chunks.next().await {
        let mut items = Vec::with_capacity(chunk.len());
        let mut stream_error = None;
        for item in chunk {
            match item {
                Ok(item) => {
                    let (gallery, id, content, metadata) = convert::add_item(item);
                    if !gallery.is_empty() {
                        current_gallery = gallery;
                    }
                    items.push(Incoming {
                        index: next_index,
                        id,
                        gallery: gallery_of_item(&service, &current_gallery),
                        content,
                        metadata,
                    });
                    next_index += 1;
                }
                Err(status) => {
                    stream_error = Some(request_error(status));
                    break;
                }
            }
        }
        for o in add::add_round(&service, items).await {
            summary.count(&o);
            let response = pb::AddResponse {
                kind: Some(Kind::Outcome(convert::outcome(o))),
            };
            if tx.send(Ok(response)).await.is_err() {
                return; // client gone; what was committed stays committed
            }
        }
        if let Some(status) = stream_error {
            let _ = tx.send(Err(status)).await;
            return;
        }
    }
    let _ = tx
        .send(Ok(pb::AddResponse {
            kind: Some(Kind::Summary(convert::summary(summary))),
        }))
        .await;
}

fn gallery_of_item(service: &Service, name: &str) -> Result<Arc<Gallery>, ServiceError> {
    if name.is_empty() {
        return Err(ServiceError::Invalid(
            "no gallery named on this item or an earlier one".into(),
        ));
    }
    service.gallery(name).map_err(|_| {
        ServiceError::NotFound(format!("gallery {name:?} does not exist; create it first"))
    })
}
