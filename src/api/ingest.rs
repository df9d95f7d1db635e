//! `AddToGallery`: a stream of items in, one outcome per item out, then a
//! summary. Items that arrive together are embedded concurrently (so the
//! batcher can batch them) and committed in one transaction per gallery;
//! an outcome is sent only after its item's transaction has committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert;
use super::pb::{self, add_item::Content, add_response::Kind, item_outcome::Status as Outcome};
use super::status::{is_message_too_large, too_large};
use crate::embed::Engine;
use crate::gallery::limits::MetadataLimits;
use crate::gallery::{Galleries, Gallery, NewItem};
use crate::query::{item, ServiceError};

/// Items gathered from the stream per round when they arrive together.
const CHUNK: usize = 32;

pub(super) struct Ingest {
    pub engine: Arc<Engine>,
    pub galleries: Arc<Galleries>,
    pub metadata: MetadataLimits,
}

/// One gallery's valid items of a round, with their slots in the outcome list.
type Group = (Arc<Gallery>, Vec<(usize, NewItem)>);

type Tx = mpsc::Sender<Result<pb::AddResponse, Status>>;

/// One item on its way through a round.
struct Pending {
    index: u64,
    id: String,
    gallery: Option<Arc<Gallery>>,
    result: Result<NewItem, ServiceError>,
}

impl Ingest {
    pub async fn run(self, stream: Streaming<pb::AddItem>, tx: Tx) {
        let mut chunks = stream.ready_chunks(CHUNK);
        let mut current_gallery = String::new();
        let mut next_index = 0u64;
        let mut summary = pb::AddSummary::default();
        while let Some(chunk) = chunks.next().await {
            let mut items = Vec::with_capacity(chunk.len());
            let mut stream_error = None;
            for item in chunk {
                match item {
                    Ok(item) => items.push(item),
                    Err(status) => {
                        stream_error = Some(if is_message_too_large(&status) {
                            too_large(&status)
                        } else {
                            status
                        });
                        break;
                    }
                }
            }
            let pending = self
                .prepare(items, &mut current_gallery, &mut next_index)
                .await;
            let outcomes = self.commit(pending).await;
            for o in outcomes {
                match Outcome::try_from(o.status) {
                    Ok(Outcome::Added) => summary.added += 1,
                    Ok(Outcome::Replaced) => summary.replaced += 1,
                    Ok(Outcome::RetryLater) => summary.retry_later += 1,
                    _ => summary.rejected += 1,
                }
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
                kind: Some(Kind::Summary(summary)),
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
    ) -> Result<NewItem, ServiceError> {
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
        item::prepare(&self.engine, &self.metadata, g, id, content, metadata).await
    }

    /// Commits the valid items (one transaction per gallery) and returns
    /// every item's outcome in stream order.
    async fn commit(&self, pending: Vec<Pending>) -> Vec<pb::ItemOutcome> {
        let mut outcomes: Vec<pb::ItemOutcome> = Vec::with_capacity(pending.len());
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for (slot, p) in pending.into_iter().enumerate() {
            let mut outcome = pb::ItemOutcome {
                id: p.id,
                status: Outcome::Rejected as i32,
                reason: String::new(),
                index: p.index,
            };
            match (p.result, p.gallery) {
                (Ok(item), Some(g)) => groups
                    .entry(g.name().to_string())
                    .or_insert_with(|| (g, Vec::new()))
                    .1
                    .push((slot, item)),
                (Err(e), _) => {
                    if e.kind().retryable() {
                        outcome.status = Outcome::RetryLater as i32;
                    }
                    outcome.reason = e.to_string();
                }
                (Ok(_), None) => outcome.reason = "gallery disappeared".into(),
            }
            outcomes.push(outcome);
        }
        for (_, (g, items)) in groups {
            let (slots, items): (Vec<usize>, Vec<NewItem>) = items.into_iter().unzip();
            let result = tokio::task::spawn_blocking(move || g.upsert(items)).await;
            match result {
                Ok(Ok(replaced)) => {
                    for (slot, r) in slots.into_iter().zip(replaced) {
                        outcomes[slot].status =
                            if r { Outcome::Replaced } else { Outcome::Added } as i32;
                    }
                }
                Ok(Err(e)) => {
                    // A full disk is no fault of the item: send it again later.
                    let e = ServiceError::from(e).logged();
                    for &s in &slots {
                        if e.kind().retryable() {
                            outcomes[s].status = Outcome::RetryLater as i32;
                        }
                        outcomes[s].reason = e.to_string();
                    }
                }
                Err(e) => slots
                    .iter()
                    .for_each(|&s| outcomes[s].reason = format!("commit task failed: {e}")),
            }
        }
        outcomes
    }
}
