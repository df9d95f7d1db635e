//! The gRPC port's TLS (rustls with the ring provider, through tonic).

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::{read, SecurityError, TlsFiles};

pub fn server_config(files: &TlsFiles) -> Result<ServerTlsConfig, SecurityError> {
    let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    let mut cfg = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(cfg)
}

/// The same files as rustls config for the HTTP port (HTTP/1.1).
pub fn rustls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, SecurityError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| SecurityError::Rustls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("tls.cert", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| bad("tls.key", &e))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                roots
                    .add(c.map_err(|e| bad("tls.client_ca", &e))?)
                    .map_err(|e| bad("tls.client_ca", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("tls.client_ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls.cert/tls.key", &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
