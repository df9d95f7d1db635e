//! Builds and runs the gRPC server: the Retrieval service, grpc.health.v1
//! and server reflection, on one port, until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use super::pb::{self, retrieval_server::RetrievalServer};
use super::service::RetrievalService;
use crate::config::Config;
use crate::embed::Engine;
use crate::gallery::Galleries;

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
}

/// Binds `cfg.listen` (port 0 picks a free port) and returns the bound
/// address with the future that serves until `shutdown` resolves; in-flight
/// requests finish before it returns.
pub async fn bind(
    cfg: &Config,
    engine: Arc<Engine>,
    galleries: Arc<Galleries>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServeError>>), ServeError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RetrievalServer<RetrievalService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = RetrievalServer::new(RetrievalService::new(engine, galleries, cfg))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);

    let serve = async move {
        let shutdown = async move {
            shutdown.await;
            // Load balancers see NOT_SERVING while in-flight calls drain.
            health_reporter
                .set_not_serving::<RetrievalServer<RetrievalService>>()
                .await;
        };
        Server::builder()
            .layer(tower::util::MapResponseLayer::new(remap_too_large))
            .add_service(health)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    };
    Ok((addr, serve))
}

/// tonic answers an over-limit unary message with OUT_OF_RANGE in a
/// trailers-only response; gRPC's convention is RESOURCE_EXHAUSTED.
fn remap_too_large<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message").is_some_and(|m| {
            m.to_str()
                .unwrap_or("")
                .contains("message%20length%20too%20large")
                || m.to_str()
                    .unwrap_or("")
                    .contains("message length too large")
        });
    if too_large {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}
