//! The NATS connection: credentials and TLS from the config, reconnecting
//! for ever, and the time the connection went down (reads mark their
//! answers stale meanwhile, writes fail at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{ClusterConfig, ClusterError};
use crate::telemetry::metrics::metrics;

/// `disconnected` holds since when the connection is down; `connects`
/// counts the connections made (each one restarts the stream consumers,
/// which a lost server may have taken with it).
pub async fn connect(
    cfg: &ClusterConfig,
    disconnected: Arc<Mutex<Option<Instant>>>,
    connects: Arc<watch::Sender<u64>>,
) -> Result<async_nats::Client, ClusterError> {
    let on_event = move |event: Event| {
        let disconnected = disconnected.clone();
        let connects = connects.clone();
        async move {
            match event {
                Event::Connected => {
                    *disconnected.lock() = None;
                    connects.send_modify(|n| *n += 1);
                    metrics().replication_connected.set(1);
                    tracing::info!("connected to the NATS cluster");
                }
                Event::Disconnected | Event::Closed => {
                    disconnected.lock().get_or_insert_with(Instant::now);
                    metrics().replication_connected.set(0);
                    tracing::warn!(%event, "lost the NATS cluster; reads serve the local copy, writes fail");
                }
                other => tracing::warn!(event = %other, "NATS"),
            }
        }
    };
    let mut opts = ConnectOptions::new()
        .name("lookalike")
        // Start without NATS: the local copy serves (not ready) until it
        // connects, and reconnecting never gives up.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .event_callback(on_event);
    if let Some(path) = &cfg.credentials {
        opts = opts.credentials_file(path).await.map_err(|e| {
            ClusterError::Connect(format!("credentials file {}: {e}", path.display()))
        })?;
    }
    if let Some(tls) = &cfg.tls {
        opts = opts.require_tls(true).add_root_certificates(tls.ca.clone());
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    opts.connect(cfg.urls.clone())
        .await
        .map_err(|e| ClusterError::Connect(e.to_string()))
}
