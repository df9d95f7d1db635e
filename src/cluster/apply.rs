//! Applying one gallery's stream on this replica: an ordered consumer
//! from the sequence after the one applied, whatever has arrived applied
//! in one transaction (`Gallery::apply`, the position with it), for as
//! long as the gallery is defined. A replica away for longer than the
//! tombstones live (counted from when it last saw itself caught up)
//! copies the gallery again from the stream, since the removals it missed
//! may be gone.

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

/// How often an idle, caught-up replica records that it still is (one
/// small redb commit per gallery).
const CONFIRM_EVERY: Duration = Duration::from_secs(60);

/// Taken off the tombstone TTL (at most a tenth of it) for the clocks of
/// this replica and the NATS servers, and the time a message takes.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// Whether a replica at `p` must copy the gallery again: the stream moved
/// past it (`last`) and a tombstone published since it last knew itself
/// complete (`p.at_ms`) may have expired.
fn must_recopy(p: &Position, last: u64, now_ms: u64, ttl: Duration) -> bool {
    let ttl_ms = (ttl - CLOCK_MARGIN.min(ttl / 10)).as_millis() as u64;
    p.at_ms > 0 && last > p.applied && now_ms.saturating_sub(p.at_ms) > ttl_ms
}

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
    if must_recopy(&position, last, now_ms(), c.cfg.tombstone_ttl()) {
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
    let mut complete_at = position.at_ms;
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
                let asked_ms = now_ms();
                let info = tokio::time::timeout(STALL_CHECK, stream.get_info()).await;
                match info {
                    Ok(Ok(i)) if i.state.last_sequence <= applied => {
                        let since = Duration::from_millis(asked_ms.saturating_sub(complete_at));
                        if since > CONFIRM_EVERY {
                            let p = Position { incarnation: inc.revision, applied, at_ms: asked_ms };
                            confirm(g, p).await?;
                            complete_at = asked_ms;
                        }
                        continue;
                    }
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
            complete_at = batch.at_ms;
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
        let published = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
        // Nothing pending after it: the stream was complete on delivery.
        self.at_ms = if info.pending == 0 {
            published.max(now_ms())
        } else {
            published
        };
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

async fn confirm(g: &Arc<Gallery>, p: Position) -> Result<(), ClusterError> {
    let g = g.clone();
    tokio::task::spawn_blocking(move || g.confirm_position(&p))
        .await
        .map_err(ClusterError::nats)?
        .map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;

    fn at(applied: u64, at_ms: u64) -> Position {
        Position {
            incarnation: 1,
            applied,
            at_ms,
        }
    }

    /// Counted from when the replica last knew itself complete, not from
    /// the last write: an idle gallery confirmed an hour ago is resumed.
    #[test]
    fn a_replica_copies_again_only_when_a_missed_tombstone_may_have_expired() {
        let ttl = Duration::from_millis(7 * DAY_MS);
        let now = 30 * DAY_MS;
        // Behind, complete 8 days ago: a removal it missed may be gone.
        assert!(must_recopy(&at(10, now - 8 * DAY_MS), 11, now, ttl));
        // Behind, but caught up an hour ago (its last write is older).
        assert!(!must_recopy(&at(10, now - 3_600_000), 11, now, ttl));
        // Not behind: nothing to miss, however long ago.
        assert!(!must_recopy(&at(10, now - 8 * DAY_MS), 10, now, ttl));
        // Never applied anything: it holds nothing a removal could hit.
        assert!(!must_recopy(&at(0, 0), 11, now, ttl));
        // Within the clock margin of the TTL counts as expired.
        let edge = now - 7 * DAY_MS + 30_000;
        assert!(must_recopy(&at(10, edge), 11, now, ttl));
    }
}
