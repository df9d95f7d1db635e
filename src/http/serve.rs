//! Serving the HTTP app on a bound listener, in plaintext (axum::serve)
//! or TLS (rustls, the `[tls]` files gRPC uses, reloaded on renewal),
//! until `shutdown`; in-flight requests finish first.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use futures::StreamExt;

use crate::security::tls::{self, Reloading};

/// Binds `addr` and returns the bound address with the future that serves.
pub async fn bind(
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<Reloading>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let serve = async move {
        match tls {
            None => {
                // Without TCP_NODELAY a response waits for the client's
                // delayed ACK (see api::server).
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(tls) => serve_tls(listener, app, tls, shutdown).await,
        }
    };
    Ok((bound, serve))
}

async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<Reloading>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut incoming = tls::accept(listener, tls, tls::Port::Http);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some(Ok(s)) => s,
                Some(Err(_)) | None => break,
            },
            _ = &mut shutdown => break,
        };
        let peer = stream.get_ref().0.peer_addr().ok();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(?peer, error = %e, "http connection ended");
            }
        });
    }
    // Stops accepting and closes the listener.
    drop(incoming);
    graceful.shutdown().await;
    Ok(())
}
