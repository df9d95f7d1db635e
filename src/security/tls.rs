//! TLS on the gRPC and HTTP ports: rustls (ring provider) configs built
//! from the `[tls]` files, and re-built when the files change, so that a
//! renewed certificate (a cert-manager Secret update) takes effect without
//! a restart. New connections get the current config; open ones keep the
//! one they shook hands with.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::{read, SecurityError, TlsFiles};
use crate::telemetry::metrics;

/// Longest a client's TLS handshake may take, on either port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which port's config (ALPN) a connection gets.
#[derive(Debug, Clone, Copy)]
pub enum Port {
    Grpc,
    Http,
}

pub type Accepted = Result<TlsStream<TcpStream>, std::io::Error>;

/// Connections on `listener` after their TLS handshake, each with the
/// `port`'s config current when it connected (so a renewed certificate
/// serves new connections at once). Handshakes run concurrently, each at
/// most [`HANDSHAKE_TIMEOUT`]: a slow client holds up neither the accept
/// loop nor a socket for ever. Accepting stops, and the listener closes,
/// when the stream is dropped.
pub fn accept(listener: TcpListener, tls: Arc<Reloading>, port: Port) -> ReceiverStream<Accepted> {
    let (tx, rx) = mpsc::channel::<Accepted>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little.
                        tracing::warn!(error = %e, ?port, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            // Without TCP_NODELAY a response waits for the client's
            // delayed ACK (see api::server).
            let _ = tcp.set_nodelay(true);
            let config = match port {
                Port::Grpc => tls.grpc(),
                Port::Http => tls.http(),
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The two ports' configs: the same files, each port's ALPN.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// The leaf certificate both present.
    leaf: CertificateDer<'static>,
    /// Hash of the files' contents these configs were built from.
    stamp: [u8; 32],
}

/// The current TLS configs, reloaded by [`Reloading::watch`].
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Configs>,
}

impl Reloading {
    /// Reads and checks the files: a server with a broken `[tls]` does
    /// not start.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, SecurityError> {
        let (stamp, contents) = read_all(files)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(build(&contents, stamp)?),
        }))
    }

    /// The gRPC port's config (ALPN h2).
    pub fn grpc(&self) -> Arc<ServerConfig> {
        self.current.read().grpc.clone()
    }

    /// The HTTP port's config (ALPN http/1.1).
    pub fn http(&self) -> Arc<ServerConfig> {
        self.current.read().http.clone()
    }

    /// The leaf certificate new connections are served.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.current.read().leaf.clone()
    }

    /// Re-reads the files; swaps in new configs when their contents
    /// changed and they are valid. Ok(true) when it swapped. A renewal
    /// caught half-written (the new cert with the old key) fails here and
    /// is picked up by a later check; the old configs keep serving.
    pub fn reload_if_changed(&self) -> Result<bool, SecurityError> {
        let (stamp, contents) = read_all(&self.files)?;
        if stamp == self.current.read().stamp {
            return Ok(false);
        }
        let fresh = build(&contents, stamp)?;
        *self.current.write() = fresh;
        Ok(true)
    }

    /// Checks the files every `every` until the last server holding this
    /// is gone, logging each reload and each failure.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate: just loaded
            loop {
                tick.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                let checked = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
                let result = match checked {
                    Ok(Ok(false)) => continue,
                    Ok(Ok(true)) => {
                        tracing::info!("TLS certificate files changed: reloaded");
                        "reloaded"
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be loaded; still serving the previous certificate");
                        "failed"
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS reload task failed");
                        "failed"
                    }
                };
                metrics().tls_reloads.with_label_values(&[result]).inc();
            }
        });
    }
}

/// The files' contents (cert, key, client CA) and a hash of them all.
fn read_all(files: &TlsFiles) -> Result<([u8; 32], [Vec<u8>; 3]), SecurityError> {
    let ca = match &files.client_ca {
        Some(p) => read(p)?,
        None => Vec::new(),
    };
    let contents = [read(&files.cert)?, read(&files.key)?, ca];
    let mut h = Sha256::new();
    for c in &contents {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c);
    }
    Ok((h.finalize().into(), contents))
}

fn build(contents: &[Vec<u8>; 3], stamp: [u8; 32]) -> Result<Configs, SecurityError> {
    let [cert, key, ca] = contents;
    let ca = (!ca.is_empty()).then_some(&ca[..]);
    let mut grpc = config(cert, key, ca)?;
    let mut http = grpc.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    let leaf = CertificateDer::pem_slice_iter(cert)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| SecurityError::Rustls("tls.cert: no PEM certificate in the file".into()))?;
    Ok(Configs {
        grpc: Arc::new(grpc),
        http: Arc::new(http),
        leaf,
        stamp,
    })
}

fn config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<ServerConfig, SecurityError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| SecurityError::Rustls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("tls.cert", &e))?;
    if certs.is_empty() {
        return Err(bad("tls.cert", &"no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("tls.key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots
                    .add(c.map_err(|e| bad("tls.client_ca", &e))?)
                    .map_err(|e| bad("tls.client_ca", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("tls.client_ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls.cert/tls.key", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` and its key, as PEM.
    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_pair(dir: &std::path::Path, name: &str) {
        let (cert, key) = pair(name);
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    fn served_cert(tls: &Reloading) -> Vec<u8> {
        tls.certificate().to_vec()
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "old.example");
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
            reload_check_s: 0,
        };
        let tls = Reloading::load(&files).unwrap();
        let old = served_cert(&tls);
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

        write_pair(dir.path(), "new.example");
        assert!(tls.reload_if_changed().unwrap());
        let new = served_cert(&tls);
        assert_ne!(old, new);
        assert_eq!(tls.http().alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(tls.grpc().alpn_protocols, vec![b"h2".to_vec()]);

        // Half a renewal: a certificate whose key is not in the key file.
        std::fs::write(&files.cert, pair("x").0).unwrap();
        let err = tls.reload_if_changed().unwrap_err();
        assert!(err.to_string().contains("tls.cert/tls.key"), "{err}");
        assert_eq!(served_cert(&tls), new, "the previous pair keeps serving");
    }
}
