//! The writes a replica takes from clients (create and drop a gallery,
//! add, replace and remove items), as the cluster does them: defined or
//! published first, acknowledged by JetStream, then waited for on this
//! replica, so the client reads its own write here at once. Reads that
//! name a sequence wait for it (`wait_for`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{kv, stream};

use super::catalog::{self, bucket, Definition};
use super::message::Write;
use super::naming::{self, Incarnation};
use super::{Cluster, ClusterError};
use crate::gallery::{validate_gallery_name, Gallery, GalleryError, Metadata};
use crate::store::ItemRecord;

/// How long a write waits to be applied on the replica that took it.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a read naming a sequence waits for NATS to say which
/// definitions exist before it goes on with the local catalog.
const BARRIER_ASK: Duration = Duration::from_secs(1);

/// Stream messages JetStream remembers ids of, to drop a resent one.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// An item to publish: checked, its descriptor unit length.
pub struct Put {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
    pub thumbnail: Option<Vec<u8>>,
}

/// An acknowledged write: whether it replaced an item (as this replica
/// saw it), and its stream sequence (what reads may wait for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub replaced: bool,
    pub sequence: u64,
}

impl Cluster {
    /// The gallery `name` as this replica serves it: FAILED_PRECONDITION
    /// when it refuses it (another model), else the local copy.
    pub fn gallery(&self, name: &str) -> Result<Arc<Gallery>, ClusterError> {
        if let Some(why) = self.refused.read().get(name) {
            return Err(ClusterError::Refused(why.to_string()));
        }
        Ok(self.galleries.get(name)?)
    }

    fn incarnation_of(&self, name: &str) -> Result<Incarnation, ClusterError> {
        self.gallery(name)?;
        self.incarnation(name)
            .ok_or_else(|| ClusterError::LocalOnly(name.to_string()))
    }

    /// Defines gallery `name` for this replica's model and creates its
    /// stream; returns this replica's copy once it has it.
    pub async fn create_gallery(&self, name: &str) -> Result<Arc<Gallery>, ClusterError> {
        validate_gallery_name(name)?;
        if let Some(down) = self.disconnected_for() {
            return Err(ClusterError::Unreachable(format!(
                "disconnected for {:.1} s",
                down.as_secs_f64()
            )));
        }
        let kv = bucket(self).await?;
        let key = naming::key(name);
        if kv
            .entry(&key)
            .await
            .map_err(ClusterError::nats)?
            .is_some_and(|e| e.operation == kv::Operation::Put)
        {
            return Err(GalleryError::Exists(name.to_string()).into());
        }
        let def = Definition {
            model_fingerprint: self.meta.model_fingerprint.clone(),
            dims: self.meta.dims,
            stream_token: naming::new_stream_token(),
        };
        // The stream first, then the definition that names it.
        let mut inc = Incarnation {
            gallery: name.to_string(),
            revision: 0,
            stream_token: def.stream_token.clone(),
        };
        let stream_name = inc.stream(&self.cfg.prefix);
        self.js
            .create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![inc.subjects(&self.cfg.prefix)],
                // The latest write of each item, a removal as a tombstone
                // that expires: the stream holds the live items.
                max_messages_per_subject: 1,
                allow_message_ttl: true,
                num_replicas: self.cfg.stream_replicas,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(ClusterError::nats)?;
        let json = serde_json::to_vec(&def).map_err(|e| ClusterError::Local(e.to_string()))?;
        let created = kv.create(&key, json.into()).await;
        inc.revision = match created {
            Ok(revision) => revision,
            Err(e) => {
                // Another writer defined it first: its stream is the one.
                if let Err(undo) = self.js.delete_stream(&stream_name).await {
                    tracing::warn!(stream = %stream_name, error = %undo, "an unused stream is left behind");
                }
                return Err(if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    GalleryError::Exists(name.to_string()).into()
                } else {
                    ClusterError::nats(e)
                });
            }
        };
        self.wait_catalog(|c| c.incarnation(name).as_ref() == Some(&inc))
            .await?;
        self.gallery(name)
    }

    /// Drops gallery `name` on every replica; returns how many items this
    /// replica's copy held.
    pub async fn drop_gallery(&self, name: &str) -> Result<u64, ClusterError> {
        let inc = self.incarnation_of(name)?;
        let held = self.galleries.get(name).map_or(0, |g| g.len() as u64);
        let kv = bucket(self).await?;
        kv.delete_expect_revision(naming::key(name), Some(inc.revision))
            .await
            .map_err(|_| ClusterError::Changed(name.to_string()))?;
        if let Err(e) = self.js.delete_stream(inc.stream(&self.cfg.prefix)).await {
            tracing::warn!(gallery = %name, error = %e, "the dropped gallery's stream is left behind");
        }
        self.wait_catalog(|c| c.incarnation(name).as_ref() != Some(&inc))
            .await?;
        Ok(held)
    }

    /// Publishes puts to gallery `name`; returns each one's outcome.
    pub async fn add(&self, name: &str, items: Vec<Put>) -> Vec<Result<Written, ClusterError>> {
        let (inc, g) = match self
            .incarnation_of(name)
            .and_then(|i| Ok((i, self.gallery(name)?)))
        {
            Ok(v) => v,
            Err(e) => {
                let why = e.to_string();
                return items
                    .iter()
                    .map(|_| Err(ClusterError::Refused(why.clone())))
                    .collect();
            }
        };
        let replaced: Vec<bool> = items.iter().map(|i| g.contains(&i.id)).collect();
        let writes = items
            .into_iter()
            .map(|i| Write::Put {
                id: i.id,
                record: ItemRecord {
                    seq: 0,
                    descriptor: i.vector,
                    metadata: i.metadata,
                },
                thumbnail: i.thumbnail,
            })
            .collect();
        let acks = self.publish(&inc, writes).await;
        self.settle(name, acks.iter().flatten().copied().max())
            .await;
        acks.into_iter()
            .zip(replaced)
            .map(|(ack, replaced)| ack.map(|sequence| Written { replaced, sequence }))
            .collect()
    }

    /// Publishes the removal of `ids` from gallery `name`; returns those
    /// this replica did not hold, and the last removal's sequence.
    pub async fn remove(
        &self,
        name: &str,
        ids: Vec<String>,
    ) -> Result<(Vec<String>, u64), ClusterError> {
        let inc = self.incarnation_of(name)?;
        let g = self.gallery(name)?;
        let missing: Vec<String> = ids.iter().filter(|id| !g.contains(id)).cloned().collect();
        // Published for every id: a replica behind may not hold one yet.
        let writes = ids.into_iter().map(|id| Write::Delete { id }).collect();
        let acks = self.publish(&inc, writes).await;
        let mut last = 0;
        for ack in acks {
            last = last.max(ack?);
        }
        self.settle(name, Some(last)).await;
        Ok((missing, last))
    }

    /// Waits, briefly, for this replica to apply `sequence`, so that the
    /// writer reads its write here; the write stands either way (and a
    /// read naming its sequence waits for it).
    async fn settle(&self, name: &str, sequence: Option<u64>) {
        let Some(seq) = sequence.filter(|s| *s > 0) else {
            return;
        };
        let Some(track) = self.progress.get(name) else {
            return;
        };
        if let Err(applied) = track.wait_for(seq, SETTLE).await {
            let e = format!("applied {applied} of {seq}");
            tracing::warn!(gallery = %name, error = %e, "acknowledged, not yet applied here");
        }
    }

    /// Waits up to `read_wait_ms` for this replica to have applied
    /// `sequence` of gallery `name` (0: no wait).
    pub async fn wait_for(&self, name: &str, sequence: u64) -> Result<(), ClusterError> {
        if sequence == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let budget = self.read_wait();
        // A sequence counts in the incarnation the writer wrote to: learn
        // of every drop and re-creation made before this read first, so a
        // copy of an older one is not taken as having reached it.
        self.catalog_barrier(budget).await;
        let behind = |applied: u64| ClusterError::Behind {
            gallery: name.to_string(),
            applied,
            wanted: sequence,
            behind: sequence.saturating_sub(applied),
            waited_ms: started.elapsed().as_millis() as u64,
        };
        loop {
            let changed = self.catalog_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let left = budget.saturating_sub(started.elapsed());
            let Some(track) = self.progress.get(name) else {
                self.gallery(name)?;
                if tokio::time::timeout(left, changed).await.is_err() {
                    return Err(behind(0));
                }
                continue;
            };
            tokio::select! {
                reached = track.wait_for(sequence, left) => return reached.map_err(behind),
                // Dropped or created again meanwhile? Wait on its track now.
                _ = &mut changed => {}
            }
        }
    }

    /// Waits, within `budget`, until the catalog has acted on every
    /// definition change NATS holds now. Gives up quietly when NATS does
    /// not answer: the local copy serves then, marked stale.
    async fn catalog_barrier(&self, budget: Duration) {
        if self.disconnected_for().is_some() {
            return;
        }
        let started = Instant::now();
        let ask = tokio::time::timeout(budget.min(BARRIER_ASK), catalog::latest_revision(self));
        let latest = match ask.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return tracing::debug!(error = %e, "definitions revision unknown"),
            Err(_) => return tracing::debug!("definitions revision: no answer"),
        };
        loop {
            let changed = self.catalog_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.catalog_revision.load(Ordering::Acquire) >= latest {
                return;
            }
            let left = budget.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, changed).await.is_err() {
                return;
            }
        }
    }

    /// Waits (up to `read_wait_ms`) for the catalog to satisfy `done`.
    async fn wait_catalog(&self, done: impl Fn(&Self) -> bool) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            let changed = self.catalog_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return Ok(());
            }
            let left = self.read_wait().saturating_sub(started.elapsed());
            if tokio::time::timeout(left, changed).await.is_err() {
                return Err(ClusterError::NotApplied(
                    started.elapsed().as_millis() as u64
                ));
            }
        }
    }

    /// What a read on this replica should say about its copy: stale while
    /// the connection to NATS is down.
    pub fn staleness(&self) -> Option<String> {
        self.disconnected_for().map(|d| {
            format!(
                "replication: this replica lost the NATS cluster {:.0} s ago and answers from its own copy, which may miss writes made since",
                d.as_secs_f64()
            )
        })
    }
}
