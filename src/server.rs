//! The composition root: binds every port over the one [`Service`] it is
//! handed — gRPC (Retrieval, grpc.health.v1 and reflection), the HTTP/JSON
//! API and console when `http_listen` is set, and the admin port when
//! `admin_listen` is set — and serves until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::health::Health;
use crate::config::Config;
use crate::query::service::Service;
use crate::security::auth::ApiKeys;
use crate::security::SecurityError;
use crate::telemetry::metrics;

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
/// `cfg.http_listen`, and returns the bound addresses with the future that
/// serves until `shutdown` resolves; in-flight requests finish before it
/// returns. `keys` are the API keys (None: no authentication).
pub async fn bind(
    cfg: &Config,
    service: Arc<Service>,
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
    health.follow_engine(service.engine.workers_ok());
    if let Some(c) = &service.cluster {
        health.follow_replication(c.progress().ready()).await;
    }
    let m = metrics();
    m.provider
        .with_label_values(&[service.engine.provider().name()])
        .set(1);
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), service.engine.fingerprint()])
        .set(1);
    let tls = match &cfg.tls {
        Some(files) => {
            let tls = crate::security::tls::Reloading::load(files)?;
            tls.watch(files.reload_check());
            Some(tls)
        }
        None => None,
    };

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let (admin_addr, admin_serve) = match cfg.admin_listen {
        Some(at) => {
            let admin = crate::admin::Admin {
                service: service.clone(),
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
            let app = crate::http::App::new(service.clone(), cfg, keys.clone());
            let mut stopping = stopping.clone();
            let stop = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            let (a, serve) =
                crate::http::serve::bind(at, crate::http::router::router(app), tls.clone(), stop)
                    .await
                    .map_err(bind_err(at))?;
            (Some(a), Some(serve))
        }
        None => (None, None),
    };
    drop(stopping);

    let grpc_shutdown = {
        let health = health.clone();
        async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
            // Load balancers see NOT_SERVING while in-flight calls drain.
            health.set(false, "shutting down").await;
        }
    };
    let grpc = crate::api::server::serve(
        listener,
        cfg,
        service,
        keys,
        health_service,
        tls,
        grpc_shutdown,
    )?;

    let serve = async move {
        let admin = admin_serve.map(tokio::spawn);
        let http = http_serve.map(tokio::spawn);
        let served = grpc.await;
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
