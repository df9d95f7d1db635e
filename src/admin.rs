//! The admin HTTP port (`admin_listen`): Prometheus metrics at /metrics
//! and HTTP health (200 SERVING, 503 NOT_SERVING) at /healthz (ready:
//! on a cluster, caught up) and /livez (alive), for scrapers and for
//! probes where the gRPC port speaks TLS.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::api::health::Health;
use crate::query::service::Service;
use crate::telemetry::metrics;

#[derive(Clone)]
pub struct Admin {
    /// The server's one service, as the gRPC and HTTP ports have it.
    pub service: Arc<Service>,
    pub health: Health,
}

/// Binds `addr` and returns the bound address with the future that serves
/// until `shutdown` resolves.
pub async fn bind(
    addr: SocketAddr,
    admin: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(admin);
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((bound, serve))
}

/// Readiness: alive and (on a cluster) caught up.
async fn healthz(State(a): State<Admin>) -> impl IntoResponse {
    up(a.health.is_ready())
}

/// Liveness: the process can answer (a replica catching up is alive).
async fn livez(State(a): State<Admin>) -> impl IntoResponse {
    up(a.health.is_serving())
}

fn up(yes: bool) -> (StatusCode, &'static str) {
    if yes {
        (StatusCode::OK, "SERVING\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
    }
}

async fn scrape(State(a): State<Admin>) -> impl IntoResponse {
    let m = metrics();
    m.queue_depth.set(a.service.engine.in_flight() as i64);
    // Rebuilt each scrape so dropped galleries disappear.
    m.gallery_items.reset();
    m.gallery_stale_items.reset();
    m.gallery_tombstones.reset();
    for g in a.service.galleries.list() {
        let s = g.stats();
        let name = [s.name.as_str()];
        m.gallery_items.with_label_values(&name).set(s.count as i64);
        m.gallery_stale_items
            .with_label_values(&name)
            .set(s.stale_items as i64);
        m.gallery_tombstones
            .with_label_values(&name)
            .set(s.tombstones as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}
