//! The gallery definitions (KV bucket `<prefix>_galleries`, one key per
//! gallery, its revision naming the incarnation) and what this replica
//! makes of them: it creates the galleries of its model, applies their
//! streams, drops those dropped, and refuses those of another model.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::naming::{self, Incarnation};
use super::{apply, Cluster, ClusterError, Replicating};
use crate::gallery::{Gallery, GalleryError};
use crate::store::{GalleryMeta, Position};

/// A gallery as the cluster defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub model_fingerprint: String,
    pub dims: u32,
    /// Names the gallery's stream (`Incarnation::stream_token`).
    pub stream_token: String,
}

impl Definition {
    /// Whether this replica's model makes this gallery's descriptors.
    fn fits(&self, m: &GalleryMeta) -> bool {
        self.model_fingerprint == m.model_fingerprint && self.dims == m.dims
    }
}

/// The definitions bucket, created on first use.
pub async fn bucket(c: &Cluster) -> Result<kv::Store, ClusterError> {
    let name = naming::bucket(&c.cfg.prefix);
    if let Ok(store) = c.js.get_key_value(&name).await {
        return Ok(store);
    }
    c.js.create_key_value(kv::Config {
        bucket: name,
        description: "lookalike gallery definitions".into(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: c.cfg.stream_replicas,
        ..Default::default()
    })
    .await
    .map_err(ClusterError::nats)
}

/// Follows the definitions for as long as the server runs.
pub async fn follow(c: Arc<Cluster>) {
    loop {
        if let Err(e) = follow_once(&c).await {
            tracing::warn!(error = %e, "following the gallery definitions; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The revision of the last change to the definitions, as NATS has it
/// now (one request).
pub async fn latest_revision(c: &Cluster) -> Result<u64, ClusterError> {
    let stream = format!("KV_{}", naming::bucket(&c.cfg.prefix));
    let s = c.js.get_stream(stream).await.map_err(ClusterError::nats)?;
    Ok(s.cached_info().state.last_sequence)
}

async fn follow_once(c: &Arc<Cluster>) -> Result<(), ClusterError> {
    let kv = bucket(c).await?;
    // Taken before the listing, so that nothing defined meanwhile is
    // missed: the watch replays from here (a change seen twice is a no-op).
    let start = latest_revision(c).await?;
    let mut current = HashMap::new();
    let mut keys = kv.keys().await.map_err(ClusterError::nats)?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(ClusterError::nats)?;
        if let Some(e) = kv.entry(&key).await.map_err(ClusterError::nats)? {
            if e.operation == kv::Operation::Put {
                current.insert(key, e);
            }
        }
    }
    // Replicated galleries no longer defined were dropped meanwhile.
    for g in c.galleries.list() {
        let key = naming::key(g.name());
        if !current.contains_key(&key) && position(&g).await?.is_some() {
            forget(c, g.name()).await;
        }
    }
    for e in current.values() {
        on_entry(c, e).await;
    }
    c.progress.catalog_loaded();
    c.seen_revision(start);
    let mut watch = kv
        .watch_all_from_revision(start + 1)
        .await
        .map_err(ClusterError::nats)?;
    while let Some(e) = watch.next().await {
        let e = e.map_err(ClusterError::nats)?;
        on_entry(c, &e).await;
        c.seen_revision(e.revision);
    }
    Err(ClusterError::Nats("the definitions watch ended".into()))
}

async fn on_entry(c: &Arc<Cluster>, e: &kv::Entry) {
    let Some(name) = naming::gallery_of_key(&e.key) else {
        tracing::warn!(key = %e.key, "not a gallery definition; ignored");
        return;
    };
    match e.operation {
        kv::Operation::Put => match serde_json::from_slice::<Definition>(&e.value) {
            Ok(def) => ensure(c, &name, def, e.revision).await,
            Err(err) => {
                tracing::error!(gallery = %name, error = %err, "unreadable gallery definition; ignored")
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => forget(c, &name).await,
    }
}

async fn position(g: &Arc<Gallery>) -> Result<Option<Position>, ClusterError> {
    let g = g.clone();
    tokio::task::spawn_blocking(move || g.position())
        .await
        .map_err(ClusterError::nats)?
        .map_err(|e| ClusterError::Local(e.to_string()))
}

/// Applies `name`'s incarnation `revision` on this replica, unless it
/// already does or the gallery is of another model.
async fn ensure(c: &Arc<Cluster>, name: &str, def: Definition, revision: u64) {
    let incarnation = Incarnation {
        gallery: name.to_string(),
        revision,
        stream_token: def.stream_token.clone(),
    };
    if c.incarnation(name).as_ref() == Some(&incarnation) {
        return;
    }
    if !def.fits(&c.meta) {
        // No copy of this incarnation was ever made here: any is older.
        forget(c, name).await;
        tracing::error!(gallery = %name, theirs = %def.model_fingerprint, ours = %c.meta.model_fingerprint,
            "gallery of another model: not served by this replica");
        c.refused.write().insert(
            name.to_string(),
            ClusterError::OtherModel {
                gallery: name.to_string(),
                theirs: def.model_fingerprint,
                dims: def.dims,
                ours: c.meta.model_fingerprint.clone(),
            },
        );
        c.catalog_changed.notify_waiters();
        return;
    }
    // The local copy stays: after a restart it is this very incarnation
    // and resumes from its position (`open_or_create` replaces any other).
    stop_applying(c, name);
    match open_or_create(c, &incarnation).await {
        Ok((g, applied)) => {
            let track = c.progress.start(name, applied);
            let task = tokio::spawn(apply::replicate(c.clone(), g, incarnation.clone(), track));
            c.replicating
                .lock()
                .insert(name.to_string(), Replicating { incarnation, task });
        }
        Err(e) => {
            tracing::error!(gallery = %name, error = %e, "cannot replicate gallery");
            c.refused.write().insert(name.to_string(), e);
        }
    }
    c.catalog_changed.notify_waiters();
}

/// This replica's copy of `inc` and the sequence it has applied: the one
/// on disk, or a new empty one (replacing a copy of another incarnation).
async fn open_or_create(
    c: &Arc<Cluster>,
    inc: &Incarnation,
) -> Result<(Arc<Gallery>, u64), ClusterError> {
    if let Ok(g) = c.galleries.get(&inc.gallery) {
        match position(&g).await? {
            Some(p) if p.incarnation == inc.revision => return Ok((g, p.applied)),
            Some(_) => drop_local(c, &inc.gallery).await?,
            None => return Err(ClusterError::LocalOnly(inc.gallery.clone())),
        }
    }
    Ok((create_local(c, inc).await?, 0))
}

/// A new, empty local copy of `inc`, at sequence 0.
pub async fn create_local(c: &Cluster, inc: &Incarnation) -> Result<Arc<Gallery>, ClusterError> {
    tracing::info!(gallery = %inc.gallery, incarnation = inc.revision,
        "copying the gallery from its stream's first message");
    crate::telemetry::metrics()
        .replication_copies
        .with_label_values(&[inc.gallery.as_str()])
        .inc();
    let galleries = c.galleries.clone();
    let (name, meta, revision) = (inc.gallery.clone(), c.meta.clone(), inc.revision);
    tokio::task::spawn_blocking(move || {
        let start = Position {
            incarnation: revision,
            applied: 0,
            at_ms: 0,
        };
        galleries.create_at(&name, meta, Some(start))
    })
    .await
    .map_err(ClusterError::nats)?
    .map_err(|e| ClusterError::Local(e.to_string()))
}

/// Stops applying (or refusing) `name` on this replica.
fn stop_applying(c: &Cluster, name: &str) {
    if let Some(r) = c.replicating.lock().remove(name) {
        r.task.abort();
    }
    c.progress.stop(name);
    c.refused.write().remove(name);
}

/// Stops applying `name` and drops this replica's copy of it.
pub async fn forget(c: &Arc<Cluster>, name: &str) {
    stop_applying(c, name);
    let replicated = match c.galleries.get(name) {
        Ok(g) => position(&g).await.ok().flatten().is_some(),
        Err(_) => false,
    };
    if replicated {
        if let Err(e) = drop_local(c, name).await {
            tracing::error!(gallery = %name, error = %e, "dropping the local copy");
        }
    }
    c.catalog_changed.notify_waiters();
}

pub async fn drop_local(c: &Cluster, name: &str) -> Result<(), ClusterError> {
    let galleries = c.galleries.clone();
    let name = name.to_string();
    let dropped = tokio::task::spawn_blocking(move || galleries.drop_gallery(&name))
        .await
        .map_err(ClusterError::nats)?;
    match dropped {
        Ok(_) | Err(GalleryError::NoGallery(_)) => Ok(()),
        Err(e) => Err(ClusterError::Local(e.to_string())),
    }
}
