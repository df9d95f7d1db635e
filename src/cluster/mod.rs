//! Replicated galleries on NATS JetStream (`[cluster]`).
//!
//! Every gallery has a stream holding the latest write of each of its
//! items (one subject per item, `max_messages_per_subject` 1; a removal
//! is a tombstone that expires after `tombstone_ttl_s`), and a definition
//! (model fingerprint, dims) in a KV bucket whose revision names the
//! gallery's incarnation. A write is acknowledged to the client only after
//! JetStream's PubAck (`publish`). Every replica, the writer included,
//! applies each stream in order into its own redb store and index through
//! the one write path (`Gallery::apply`), recording the applied sequence
//! in the same transaction (`apply`), so a restart resumes and nothing is
//! applied twice. The catalog (`catalog`) follows the definitions: it
//! creates, drops and refuses galleries on this replica. Reads that name
//! a minimum sequence wait for it (`progress`).

mod apply;
mod catalog;
mod config;
mod connect;
mod error;
pub mod message;
pub mod naming;
mod progress;
mod publish;
mod writes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

pub use config::{ClusterConfig, ClusterTls};
pub use error::ClusterError;
pub use message::Write;
pub use naming::Incarnation;
pub use progress::{Progress, Track};
pub use writes::{Put, Written};

use crate::gallery::Galleries;
use crate::store::GalleryMeta;

/// This replica's part in the cluster.
pub struct Cluster {
    cfg: ClusterConfig,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    galleries: Arc<Galleries>,
    /// What this replica's model makes: galleries of another are refused.
    meta: GalleryMeta,
    progress: Progress,
    /// The incarnation of every gallery this replica applies, and its task.
    replicating: Mutex<HashMap<String, Replicating>>,
    /// Galleries defined for another model, with why they are refused.
    refused: RwLock<HashMap<String, ClusterError>>,
    /// Since when the connection is down (None: connected).
    disconnected: Arc<Mutex<Option<Instant>>>,
    /// Connections made so far: a new one restarts the consumers.
    connects: Arc<tokio::sync::watch::Sender<u64>>,
    /// Woken whenever the catalog changes (a gallery appears or goes, or
    /// it has seen a later definition revision).
    catalog_changed: tokio::sync::Notify,
    /// The definitions revision the catalog has acted on.
    catalog_revision: AtomicU64,
}

struct Replicating {
    incarnation: Incarnation,
    task: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Connects (in the background: the local copy serves meanwhile) and
    /// starts following the gallery definitions.
    pub async fn start(
        cfg: ClusterConfig,
        galleries: Arc<Galleries>,
        meta: GalleryMeta,
    ) -> Result<Arc<Self>, ClusterError> {
        let disconnected = Arc::new(Mutex::new(Some(Instant::now())));
        let connects = Arc::new(tokio::sync::watch::Sender::new(0));
        let client = connect::connect(&cfg, disconnected.clone(), connects.clone()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let cluster = Arc::new(Self {
            cfg,
            client,
            js,
            galleries,
            meta,
            progress: Progress::default(),
            replicating: Mutex::default(),
            refused: RwLock::default(),
            disconnected,
            connects,
            catalog_changed: tokio::sync::Notify::new(),
            catalog_revision: AtomicU64::new(0),
        });
        tokio::spawn(catalog::follow(cluster.clone()));
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The incarnation this replica applies for `gallery`.
    pub fn incarnation(&self, gallery: &str) -> Option<Incarnation> {
        self.replicating
            .lock()
            .get(gallery)
            .map(|r| r.incarnation.clone())
    }

    /// Why this replica refuses `gallery`, if it does.
    pub fn refusal(&self, gallery: &str) -> Option<String> {
        self.refused.read().get(gallery).map(|e| e.to_string())
    }

    /// The catalog has acted on every definition change through `revision`.
    fn seen_revision(&self, revision: u64) {
        self.catalog_revision.fetch_max(revision, Ordering::Release);
        self.catalog_changed.notify_waiters();
    }

    /// How long the connection to NATS has been down (None: connected).
    pub fn disconnected_for(&self) -> Option<std::time::Duration> {
        self.disconnected.lock().map(|t| t.elapsed())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in self.replicating.get_mut().values() {
            r.task.abort();
        }
    }
}
