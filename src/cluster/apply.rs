//! Applying one gallery's stream on this replica: an ordered consumer
//! from the sequence after the one applied, whatever has arrived applied
//! in one transaction (`Gallery::apply`, the position with it), for as
//! long as the gallery is defined. A replica away for longer than the
//! tombstones live copies the gallery again from the stream, since the
//! removals it missed may be gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;

use super::catalog;
use super::message::Write;
use super::naming::Incarnation;
use super::{Cluster, ClusterError, Track};
use crate::gallery::Gallery;
use crate::store::{Change, Position};

/// Most messages applied in one transaction.
const BATCH: usize = 512;

/// How long a consumer may stay silent before the stream is asked
/// whether it moved on without it.
const STALL_CHECK: Duration = Duration::from_secs(3);

pub async fn replicate(
    c: Arc<Cluster>,
    mut g: Arc<Gallery>,
    inc: Incarnation,
    mut track: Arc<Track>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match run(&c, &g, &inc, &track).await {
            Ok(Stop::Recopy) => {
                tracing::warn!(gallery = %inc.gallery,
                    "away for longer than the tombstones live: copying the gallery again");
                match recopy(&c, &inc).await {
                    Ok(fresh) => {
                        g = fresh;
                        track = c.progress.start(&inc.gallery, 0);
                        continue;
                    }
                    Err(e) => tracing::error!(gallery = %inc.gallery, error = %e, "copying again"),
                }
            }
            Err(e) => {
                tracing::warn!(gallery = %inc.gallery, error = %e, applied = track.applied(),
                    "applying the stream; resuming");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

enum Stop {
    Recopy,
}

async fn run(
    c: &Cluster,
    g: &Arc<Gallery>,
    inc: &Incarnation,
    track: &Track,
) -> Result<Stop, ClusterError> {
    let stream =
        c.js.get_stream(inc.stream(&c.cfg.prefix))
            .await
            .map_err(ClusterError::nats)?;
    let last = stream
        .get_info()
        .await
        .map_err(ClusterError::nats)?
        .state
        .last_sequence;
    let position = {
        let g = g.clone();
        tokio::task::spawn_blocking(move || g.position())
            .await
            .map_err(ClusterError::nats)?
            .map_err(|e| ClusterError::Local(e.to_string()))?
    };
    let Some(position) = position else {
        return Err(ClusterError::Local("the local copy has no position".into()));
    };
    let ttl = c.cfg.tombstone_ttl().as_millis() as u64;
    if position.at_ms > 0
        && last > position.applied
        && now_ms().saturating_sub(position.at_ms) > ttl
    {
        return Ok(Stop::Recopy);
    }
    track.set_target(last);
    c.progress.recheck();

    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: position.applied + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(ClusterError::nats)?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(ClusterError::nats)?
        .ready_chunks(BATCH);
    let mut applied = position.applied;
    let mut reconnected = c.connects.subscribe();
    reconnected.mark_unchanged();
    let mut idle = tokio::time::interval(STALL_CHECK);
    idle.reset();
    loop {
        let chunk = tokio::select! {
            chunk = messages.next() => chunk,
            // The server that held the consumer may be gone: resume now
            // rather than after its missed heartbeats.
            _ = reconnected.changed() => return Err(ClusterError::Nats("reconnected".into())),
            _ = idle.tick() => {
                // Nothing arrived for a while: a stream that moved on
                // means the consumer was lost with its server.
                let info = tokio::time::timeout(STALL_CHECK, stream.get_info()).await;
                match info {
                    Ok(Ok(i)) if i.state.last_sequence <= applied => continue,
                    _ => return Err(ClusterError::Nats("the consumer stalled".into())),
                }
            }
        };
        idle.reset();
        let Some(chunk) = chunk else { break };
        let mut batch = Batch::default();
        let mut failed = None;
        for m in chunk {
            match m {
                Ok(m) => batch.push(&m, applied, &inc.gallery),
                Err(e) => {
                    failed = Some(ClusterError::nats(e));
                    break;
                }
            }
        }
        if let Some((last, pending)) = batch.last {
            apply(g, batch, inc.revision).await?;
            applied = last;
            track.advance(applied, pending);
            c.progress.recheck();
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Err(ClusterError::Nats("the stream's consumer ended".into()))
}

/// Messages that arrived together, as one transaction's changes.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    /// Each id's thumbnail after its last change (None: it has none).
    thumbs: HashMap<String, Option<Vec<u8>>>,
    /// The last sequence in the batch, and the messages after it.
    last: Option<(u64, u64)>,
    at_ms: u64,
}

impl Batch {
    fn push(&mut self, m: &async_nats::jetstream::Message, applied: u64, gallery: &str) {
        let Ok(info) = m.info() else {
            tracing::warn!(gallery, "a stream message without its metadata; skipped");
            return;
        };
        let seq = info.stream_sequence;
        if seq <= applied || self.last.is_some_and(|(l, _)| seq <= l) {
            return; // a consumer restart resent it
        }
        self.last = Some((seq, info.pending));
        self.at_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
        match Write::decode(&m.payload) {
            Ok(Write::Put {
                id,
                mut record,
                thumbnail,
            }) => {
                record.seq = seq;
                self.thumbs.insert(id.clone(), thumbnail);
                self.changes.push(Change::Put { id, record });
            }
            Ok(Write::Delete { id }) => {
                self.thumbs.insert(id.clone(), None);
                self.changes.push(Change::Delete { id });
            }
            // Skipped, but the position moves past it: one bad message
            // must not stop the gallery.
            Err(e) => tracing::error!(gallery, seq, error = %e, "stream message skipped"),
        }
    }
}

async fn apply(g: &Arc<Gallery>, batch: Batch, revision: u64) -> Result<(), ClusterError> {
    let Some((last, _)) = batch.last else {
        return Ok(());
    };
    let position = Position {
        incarnation: revision,
        applied: last,
        at_ms: batch.at_ms,
    };
    let g = g.clone();
    tokio::task::spawn_blocking(move || {
        // A change this replica cannot take (ids and dims are checked
        // before publishing: another writer's bug) is skipped, not the
        // batch; the position still moves past it.
        let (good, bad): (Vec<Change>, Vec<Change>) =
            batch.changes.into_iter().partition(|c| g.check_change(c).is_ok());
        for c in &bad {
            tracing::error!(gallery = %g.name(), id = %c.id(), "a change this gallery cannot take; skipped");
        }
        let thumbs: Vec<(&str, &[u8])> = batch
            .thumbs
            .iter()
            .filter(|(id, _)| !bad.iter().any(|c| c.id() == id.as_str()))
            .filter_map(|(id, t)| Some((id.as_str(), t.as_deref()?)))
            .collect();
        g.apply(good, &thumbs, position).map(|_| ())
    })
    .await
    .map_err(ClusterError::nats)?
    .map_err(|e| ClusterError::Local(e.to_string()))
}

/// Drops this replica's copy of `inc` and creates it empty at sequence 0.
async fn recopy(c: &Cluster, inc: &Incarnation) -> Result<Arc<Gallery>, ClusterError> {
    catalog::drop_local(c, &inc.gallery).await?;
    catalog::create_local(c, inc).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
