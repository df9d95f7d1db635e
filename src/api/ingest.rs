//! `AddToGallery`: a stream of items in, one outcome per item out, then a
//! summary. Items that arrive together are embedded concurrently (so the
//! batcher can batch them) and committed in one transaction per gallery;
//! an outcome is sent only after its item's transaction has committed.

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert;
use super::pb::{self, add_item::Content, add_response::Kind, item_outcome::Status as Outcome};
use super::status::request_error;
use crate::gallery::{Galleries, Gallery};
use crate::query::add::{self, Pending};
use crate::query::item::{self, Prepared, Preparer};
use crate::query::ServiceError;
use std::sync::Arc;

/// Items gathered from the stream per round when they arrive together.
const CHUNK: usize = 32;

pub(super) struct Ingest {
    pub preparer: Preparer,
    pub galleries: Arc<Galleries>,
}

type Tx = mpsc::Sender<Result<pb::AddResponse, Status>>;

impl Ingest {
    pub async fn run(self, stream: Streaming<pb::AddItem>, tx: Tx) {
        let mut chunks = stream.ready_chunks(CHUNK);
        let mut current_gallery = String::new();
        let mut next_index = 0u64;
        let mut summary = add::Summary::default();
        while let Some(chunk) = chunks.next().await {
            let mut items = Vec::with_capacity(chunk.len());
            let mut stream_error = None;
            for item in chunk {
                match item {
                    Ok(item) => items.push(item),
                    Err(status) => {
                        stream_error = Some(request_error(status));
                        break;
                    }
                }
            }
            let pending = self
                .prepare(items, &mut current_gallery, &mut next_index)
                .await;
            let outcomes = add::commit(pending).await;
            for o in outcomes {
                summary.count(&o);
                let o = outcome(o);
                if tx
                    .send(Ok(pb::AddResponse {
                        kind: Some(Kind::Outcome(o)),
                    }))
                    .await
                    .is_err()
                {
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
                kind: Some(Kind::Summary(pb::AddSummary {
                    added: summary.added,
                    replaced: summary.replaced,
                    rejected: summary.rejected,
                    retry_later: summary.retry_later,
                })),
            }))
            .await;
    }

    /// Validates and embeds one round of items, concurrently.
    async fn prepare(
        &self,
        items: Vec<pb::AddItem>,
        current: &mut String,
        next_index: &mut u64,
    ) -> Vec<Pending> {
        let jobs = items.into_iter().map(|item| {
            if !item.gallery.is_empty() {
                *current = item.gallery.clone();
            }
            let index = *next_index;
            *next_index += 1;
            let gallery_name = current.clone();
            async move {
                let gallery = self.galleries.get(&gallery_name).ok();
                let result = self
                    .item(
                        gallery.as_deref(),
                        &gallery_name,
                        item.content,
                        item.metadata,
                        &item.id,
                    )
                    .await;
                Pending {
                    index,
                    id: item.id,
                    gallery,
                    result,
                }
            }
        });
        futures::future::join_all(jobs).await
    }

    async fn item(
        &self,
        gallery: Option<&Gallery>,
        gallery_name: &str,
        content: Option<Content>,
        metadata: std::collections::HashMap<String, String>,
        id: &str,
    ) -> Result<Prepared, ServiceError> {
        let g = match gallery {
            Some(g) => g,
            None if gallery_name.is_empty() => {
                return Err(ServiceError::Invalid(
                    "no gallery named on this item or an earlier one".into(),
                ))
            }
            None => {
                return Err(ServiceError::NotFound(format!(
                    "gallery {gallery_name:?} does not exist; create it first"
                )))
            }
        };
        let content = content.map(|c| match c {
            Content::Image(b) => item::Content::Image(b),
            Content::Descriptor(d) => item::Content::Descriptor(convert::descriptor(d)),
        });
        let metadata = metadata.into_iter().collect();
        self.preparer.prepare(g, id, content, metadata).await
    }
}

fn outcome(o: add::Outcome) -> pb::ItemOutcome {
    let status = match o.status {
        add::Status::Added => Outcome::Added,
        add::Status::Replaced => Outcome::Replaced,
        add::Status::RetryLater => Outcome::RetryLater,
        add::Status::Rejected => Outcome::Rejected,
    };
    pb::ItemOutcome {
        id: o.id,
        status: status as i32,
        reason: o.reason,
        index: o.index,
    }
}
