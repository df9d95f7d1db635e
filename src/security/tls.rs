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
