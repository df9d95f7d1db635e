//! `[cluster]`: where the NATS JetStream cluster is and how this replica
//! uses it. Absent, the server is a single node on its own redb file.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (any of the cluster's nodes: the client
    /// learns the others from the first it reaches).
    pub urls: Vec<String>,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// TLS to NATS; plaintext when unset.
    pub tls: Option<ClusterTls>,
    /// Copies JetStream keeps of each gallery's stream and of the gallery
    /// definitions (1, 3 or 5; at most the cluster's node count).
    pub stream_replicas: usize,
    /// Names this deployment's streams, subjects and KV bucket, so that
    /// several deployments can share one NATS cluster.
    pub prefix: String,
    /// How long a read that names a minimum sequence waits for this
    /// replica to reach it before answering UNAVAILABLE.
    pub read_wait_ms: u64,
    /// How long a removed item's tombstone stays in its gallery's stream.
    /// A replica that was away for longer copies the gallery again from
    /// the stream instead of resuming.
    pub tombstone_ttl_s: u64,
    /// How long a write waits for JetStream's acknowledgement.
    pub ack_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// CA that signed the NATS servers' certificates.
    pub ca: PathBuf,
    /// Client certificate and key, where the servers ask for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".into()],
            credentials: None,
            tls: None,
            stream_replicas: 3,
            prefix: "lookalike".into(),
            read_wait_ms: 5000,
            tombstone_ttl_s: 7 * 24 * 3600,
            ack_timeout_ms: 5000,
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err("cluster.urls needs at least one NATS server".into());
        }
        if ![1, 3, 5].contains(&self.stream_replicas) {
            return Err("cluster.stream_replicas must be 1, 3 or 5".into());
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if self.prefix.is_empty() || self.prefix.len() > 32 || !self.prefix.chars().all(ok) {
            return Err("cluster.prefix must be 1-32 characters from A-Z a-z 0-9 _ -".into());
        }
        if self.tombstone_ttl_s < 60 {
            return Err("cluster.tombstone_ttl_s must be at least 60".into());
        }
        if self.ack_timeout_ms == 0 {
            return Err("cluster.ack_timeout_ms must be at least 1".into());
        }
        if let Some(t) = &self.tls {
            if t.cert.is_some() != t.key.is_some() {
                return Err("cluster.tls needs both cert and key, or neither".into());
            }
        }
        Ok(())
    }

    pub fn read_wait(&self) -> Duration {
        Duration::from_millis(self.read_wait_ms)
    }

    pub fn tombstone_ttl(&self) -> Duration {
        Duration::from_secs(self.tombstone_ttl_s)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}
