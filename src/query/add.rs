//! Adding items, whatever transport they came by: a round of items is
//! prepared (checked, embedded) concurrently, so the batcher can batch
//! them, then the valid ones are committed in one transaction per gallery
//! (thumbnails with them), with one outcome per item, in arrival order. An
//! outcome says `added` only after its item's transaction has committed,
//! or on a cluster once JetStream has acknowledged it (`cluster::writes`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::item::{Content, Prepared};
use super::service::Service;
use super::ServiceError;
use crate::cluster::{self, Cluster};
use crate::gallery::{Gallery, Metadata, NewItem};

/// Items prepared concurrently per round, so the batcher can batch them.
pub const ROUND: usize = 32;

/// One item as it arrived.
pub struct Incoming {
    /// Its position in the request.
    pub index: u64,
    pub id: String,
    /// Its gallery, or why it has none (its outcome then says so).
    pub gallery: Result<Arc<Gallery>, ServiceError>,
    pub content: Option<Content>,
    pub metadata: Metadata,
}

/// Prepares one round of items concurrently and commits the valid ones;
/// returns every item's outcome in the order given.
pub async fn add_round(service: &Service, items: Vec<Incoming>) -> Vec<Outcome> {
    let preparer = &service.preparer;
    let jobs = items.into_iter().map(|i| async move {
        let result = match i.gallery {
            Ok(g) => preparer
                .prepare(&g, &i.id, i.content, i.metadata)
                .await
                .map(|p| (g, p)),
            Err(e) => Err(e),
        };
        Pending {
            index: i.index,
            id: i.id,
            result,
        }
    });
    let pending = futures::future::join_all(jobs).await;
    commit(pending, service.cluster.as_deref()).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Added,
    Replaced,
    /// Not stored, but sending it again may work (the server was busy).
    RetryLater,
    /// Not stored; `reason` says why.
    Rejected,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// Position of the item in the request.
    pub index: u64,
    pub id: String,
    pub status: Status,
    /// Why the item was not stored (empty when it was).
    pub reason: String,
    /// On a cluster, the write's stream sequence: reads that name it as
    /// their minimum see it on every replica (0 on a single node).
    pub sequence: u64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub added: u64,
    pub replaced: u64,
    pub retry_later: u64,
    pub rejected: u64,
}

impl Summary {
    pub fn count(&mut self, o: &Outcome) {
        match o.status {
            Status::Added => self.added += 1,
            Status::Replaced => self.replaced += 1,
            Status::RetryLater => self.retry_later += 1,
            Status::Rejected => self.rejected += 1,
        }
    }
}

/// One item on its way: its gallery and the prepared item, or why it
/// cannot be stored.
struct Pending {
    index: u64,
    id: String,
    result: Result<(Arc<Gallery>, Prepared), ServiceError>,
}

/// One gallery's valid items, with their slots in the outcome list.
type Group = (Arc<Gallery>, Vec<(usize, Prepared)>);

/// Commits the valid items (one transaction per gallery, or published to
/// the cluster) and returns every item's outcome in the order given.
async fn commit(pending: Vec<Pending>, cluster: Option<&Cluster>) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(pending.len());
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (slot, p) in pending.into_iter().enumerate() {
        let mut outcome = Outcome {
            index: p.index,
            id: p.id,
            status: Status::Rejected,
            reason: String::new(),
            sequence: 0,
        };
        match p.result {
            Ok((g, item)) => groups
                .entry(g.name().to_string())
                .or_insert_with(|| (g, Vec::new()))
                .1
                .push((slot, item)),
            Err(e) => {
                if e.kind().retryable() {
                    outcome.status = Status::RetryLater;
                }
                outcome.reason = e.to_string();
            }
        }
        outcomes.push(outcome);
    }
    for (_, (g, items)) in groups {
        let (slots, items): (Vec<usize>, Vec<Prepared>) = items.into_iter().unzip();
        if let Some(c) = cluster {
            publish(c, &g, slots, items, &mut outcomes).await;
            continue;
        }
        let result = tokio::task::spawn_blocking(move || {
            let (items, thumbs): (Vec<NewItem>, Vec<Option<Vec<u8>>>) =
                items.into_iter().map(|p| (p.item, p.thumbnail)).unzip();
            let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
            let thumbs: Vec<(&str, &[u8])> = ids
                .iter()
                .zip(&thumbs)
                .filter_map(|(id, t)| Some((id.as_str(), t.as_deref()?)))
                .collect();
            g.upsert_with(items, &thumbs)
        })
        .await;
        match result {
            Ok(Ok(replaced)) => {
                for (slot, r) in slots.into_iter().zip(replaced) {
                    outcomes[slot].status = if r { Status::Replaced } else { Status::Added };
                }
            }
            Ok(Err(e)) => {
                // A full disk is no fault of the item: send it again later.
                let e = ServiceError::from(e).logged();
                for &s in &slots {
                    if e.kind().retryable() {
                        outcomes[s].status = Status::RetryLater;
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

/// One gallery's valid items, published to its stream.
async fn publish(
    c: &Cluster,
    g: &Gallery,
    slots: Vec<usize>,
    items: Vec<Prepared>,
    outcomes: &mut [Outcome],
) {
    let puts = items
        .into_iter()
        .map(|p| cluster::Put {
            id: p.item.id,
            vector: p.item.vector,
            metadata: p.item.metadata,
            thumbnail: p.thumbnail,
        })
        .collect();
    for (slot, written) in slots.into_iter().zip(c.add(g.name(), puts).await) {
        let o = &mut outcomes[slot];
        match written {
            Ok(w) => {
                o.status = if w.replaced {
                    Status::Replaced
                } else {
                    Status::Added
                };
                o.sequence = w.sequence;
            }
            Err(e) => {
                let e = ServiceError::from(e).logged();
                if e.kind().retryable() {
                    o.status = Status::RetryLater;
                }
                o.reason = e.to_string();
            }
        }
    }
}
