//! Builds and runs the gRPC server: the Retrieval service, grpc.health.v1
//! and server reflection, on one port, until a shutdown signal; plus the
//! admin HTTP port when configured. Every call passes the metrics layer,
//! then the API-key check.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use super::health::Health;
use super::pb::{self, retrieval_server::RetrievalServer};
use super::service::RetrievalService;
use crate::config::Config;
use crate::embed::Engine;
use crate::gallery::Galleries;
use crate::security::auth::{ApiKeys, AuthLayer};
use crate::security::SecurityError;
use crate::telemetry::{layer::MetricsLayer, metrics, request_id::RequestIdLayer};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("admin port failed: {0}")]
    Admin(std::io::Error),
    #[error("HTTP port failed: {0}")]
    Http(std::io::Error),
}

/// A bound server: its addresses and the future that serves.
pub struct Bound<F> {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The HTTP/JSON API and console, when `http_listen` is set.
    pub http_addr: Option<SocketAddr>,
    pub serve: F,
}

/// Binds `cfg.listen` (port 0 picks a free port), `cfg.admin_listen` and
/// `cfg.http_listen`, and returns the bound addresses with the future that serves until
/// `shutdown` resolves; in-flight requests finish before it returns.
/// `keys` are the API keys (None: no authentication).
pub async fn bind(
    cfg: &Config,
    engine: Arc<Engine>,
    galleries: Arc<Galleries>,
    keys: Option<ApiKeys>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Bound<impl Future<Output = Result<(), ServeError>>>, ServeError> {
    let bind_err = |addr| move |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(bind_err(cfg.listen))?;
    let addr = listener.local_addr().map_err(bind_err(cfg.listen))?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter).await;
    health.follow_engine(engine.workers_ok());
    let m = metrics();
    m.provider
        .with_label_values(&[engine.provider().name()])
        .set(1);
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), engine.fingerprint()])
        .set(1);

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let (admin_addr, admin_serve) = match cfg.admin_listen {
        Some(at) => {
            let admin = crate::admin::Admin {
                engine: engine.clone(),
                galleries: galleries.clone(),
                health: health.clone(),
            };
            let stop = async move {
                let _ = admin_stopped.await;
            };
            let (a, serve) = crate::admin::bind(at, admin, stop)
                .await
                .map_err(bind_err(at))?;
            (Some(a), Some(serve))
        }
        None => (None, None),
    };

    // The HTTP port drains alongside gRPC: both stop accepting at once.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let (http_addr, http_serve) = match cfg.http_listen {
        Some(at) => {
            let app = crate::http::App::new(engine.clone(), galleries.clone(), cfg, keys.clone());
            let tls = match &cfg.tls {
                Some(files) => Some(Arc::new(crate::security::tls::rustls_config(files)?)),
                None => None,
            };
            let mut stopping = stopping.clone();
            let stop = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            let (a, serve) =
                crate::http::serve::bind(at, crate::http::router::router(app), tls, stop)
                    .await
                    .map_err(bind_err(at))?;
            (Some(a), Some(serve))
        }
        None => (None, None),
    };
    drop(stopping);

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = RetrievalServer::new(RetrievalService::new(engine, galleries, cfg))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let mut builder = Server::builder();
    if let Some(files) = &cfg.tls {
        builder = builder.tls_config(crate::security::tls::server_config(files)?)?;
    }
    let router = builder
        .layer(RequestIdLayer)
        .layer(MetricsLayer)
        .layer(AuthLayer::new(keys))
        .layer(tower::util::MapResponseLayer::new(remap_request_errors))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service);

    let serve = async move {
        let admin = admin_serve.map(tokio::spawn);
        let http = http_serve.map(tokio::spawn);
        let shutdown = async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
            // Load balancers see NOT_SERVING while in-flight calls drain.
            health.set(false, "shutting down").await;
        };
        // TCP_NODELAY: tonic sets it only for the listeners it binds itself.
        // Without it a response's frames wait for the client's delayed ACK
        // (40 ms on Linux) whenever the connection is otherwise idle: one
        // Embed at a time took 52 ms for 11 ms of work (BENCHMARKS.md).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Some(task) = http {
            match task.await {
                Ok(r) => r.map_err(ServeError::Http)?,
                Err(e) => return Err(ServeError::Http(std::io::Error::other(e))),
            }
        }
        // The admin port reports NOT_SERVING until the gRPC port is done.
        let _ = admin_stop.send(());
        if let Some(task) = admin {
            match task.await {
                Ok(r) => r.map_err(ServeError::Admin)?,
                Err(e) => return Err(ServeError::Admin(std::io::Error::other(e))),
            }
        }
        served?;
        Ok(())
    };
    Ok(Bound {
        addr,
        admin_addr,
        http_addr,
        serve,
    })
}

/// tonic answers a unary request it cannot read in a trailers-only
/// response: over the size limit with OUT_OF_RANGE (gRPC's convention is
/// RESOURCE_EXHAUSTED), not valid protobuf with INTERNAL (the client's
/// fault: INVALID_ARGUMENT). Streams map the same in `status::request_error`.
fn remap_request_errors<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let message = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    let code = match h.get("grpc-status").and_then(|v| v.to_str().ok()) {
        Some("11") if message.contains("message length too large") => "8",
        Some("13") if message.starts_with(super::status::UNDECODABLE) => "3",
        _ => return resp,
    };
    h.insert("grpc-status", http::HeaderValue::from_static(code));
    resp
}
