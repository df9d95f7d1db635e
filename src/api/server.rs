//! The gRPC port: the Retrieval service, grpc.health.v1 and server
//! reflection on one listener, behind the request-id, metrics and API-key
//! layers; TLS from the reloading `[tls]` configs when set. The ports
//! around it are composed in `crate::server`.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};

use super::pb::{self, retrieval_server::RetrievalServer};
use super::service::RetrievalService;
use crate::config::Config;
use crate::query::service::Service;
use crate::security::auth::{ApiKeys, AuthLayer};
use crate::security::tls::{self, Reloading};
use crate::server::ServeError;
use crate::telemetry::{layer::MetricsLayer, request_id::RequestIdLayer};

/// The future that serves gRPC on `listener` until `shutdown` resolves;
/// in-flight calls finish first.
pub fn serve<H: HealthApi>(
    listener: TcpListener,
    cfg: &Config,
    service: Arc<Service>,
    keys: Option<ApiKeys>,
    health: HealthServer<H>,
    tls: Option<Arc<Reloading>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), ServeError>>, ServeError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let retrieval = RetrievalServer::new(RetrievalService::new(service))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let router = Server::builder()
        .layer(RequestIdLayer)
        .layer(MetricsLayer)
        .layer(AuthLayer::new(keys))
        .layer(tower::util::MapResponseLayer::new(remap_request_errors))
        .add_service(health)
        .add_service(reflection)
        .add_service(retrieval);
    Ok(async move {
        match tls {
            None => {
                // TCP_NODELAY: tonic sets it only for the listeners it
                // binds itself. Without it a response's frames wait for the
                // client's delayed ACK (40 ms on Linux) whenever the
                // connection is otherwise idle: one Embed at a time took
                // 52 ms for 11 ms of work (BENCHMARKS.md).
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await?
            }
            Some(tls) => {
                let incoming = tls::accept(listener, tls, tls::Port::Grpc);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await?
            }
        }
        Ok(())
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
