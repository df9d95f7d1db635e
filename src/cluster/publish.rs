//! Publishing writes to a gallery's stream. A write counts once JetStream
//! acknowledges it (after `sync_interval: always`, on disk on a quorum of
//! the stream's replicas). Each write carries a `Nats-Msg-Id`, so the one
//! retry after a lost acknowledgement is stored once.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use super::message::Write;
use super::naming::Incarnation;
use super::{Cluster, ClusterError};
use crate::telemetry::metrics::metrics;

/// Room left in a message for the headers (msg id, TTL).
const HEADER_ROOM: usize = 256;

impl Cluster {
    /// Publishes `writes` to `inc`'s stream concurrently; returns, per
    /// write, its stream sequence once acknowledged. Fails every write at
    /// once, publishing none, while the connection is down.
    pub(super) async fn publish(
        &self,
        inc: &Incarnation,
        writes: Vec<Write>,
    ) -> Vec<Result<u64, ClusterError>> {
        if let Some(down) = self.disconnected_for() {
            let why = format!("disconnected for {:.1} s", down.as_secs_f64());
            return writes
                .iter()
                .map(|_| Err(ClusterError::Unreachable(why.clone())))
                .collect();
        }
        let max = self.client.server_info().max_payload;
        let jobs = writes.into_iter().map(|w| self.publish_one(inc, w, max));
        futures::future::join_all(jobs).await
    }

    async fn publish_one(
        &self,
        inc: &Incarnation,
        w: Write,
        max: usize,
    ) -> Result<u64, ClusterError> {
        let payload = Bytes::from(fit(w.clone(), max)?);
        let subject = inc.subject(&self.cfg.prefix, w.id());
        let msg_id = hex::encode(rand::random::<[u8; 16]>());
        let timeout = self.cfg.ack_timeout();
        let mut why = String::new();
        // One retry, with the same id: the first may have been stored.
        for _ in 0..2 {
            let mut msg = PublishMessage::build()
                .payload(payload.clone())
                .message_id(&msg_id);
            if matches!(w, Write::Delete { .. }) {
                msg = msg.ttl(self.cfg.tombstone_ttl());
            }
            let sent = async {
                let ack = self
                    .js
                    .send_publish(subject.clone(), msg)
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(ack)) => {
                    let result = if ack.duplicate { "duplicate" } else { "acked" };
                    metrics()
                        .replication_publishes
                        .with_label_values(&[result])
                        .inc();
                    return Ok(ack.sequence);
                }
                Ok(Err(e)) => why = e,
                Err(_) => why = "timed out".into(),
            }
        }
        metrics()
            .replication_publishes
            .with_label_values(&["failed"])
            .inc();
        Err(ClusterError::NotAcknowledged {
            ms: timeout.as_millis() as u64,
            why,
        })
    }

    /// How long a read may wait for this replica to catch up.
    pub fn read_wait(&self) -> Duration {
        self.cfg.read_wait()
    }
}

/// The write encoded within `max` bytes: a thumbnail that does not fit is
/// left out (the item matters more than its preview).
fn fit(w: Write, max: usize) -> Result<Vec<u8>, ClusterError> {
    let bytes = w.encode();
    if bytes.len() + HEADER_ROOM <= max {
        return Ok(bytes);
    }
    let item = w.id().to_string();
    let too_large = |bytes: usize| ClusterError::TooLarge {
        id: item.clone(),
        bytes,
        max,
    };
    match w {
        Write::Put {
            id,
            record,
            thumbnail: Some(_),
        } => {
            tracing::warn!(id = %id, bytes = bytes.len(), max,
                "thumbnail left out: the item would not fit in one NATS message");
            let lean = Write::Put {
                id,
                record,
                thumbnail: None,
            }
            .encode();
            if lean.len() + HEADER_ROOM <= max {
                Ok(lean)
            } else {
                Err(too_large(lean.len()))
            }
        }
        _ => Err(too_large(bytes.len())),
    }
}
