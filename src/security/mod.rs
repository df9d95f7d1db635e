//! Optional TLS on the gRPC and HTTP ports ([`tls`], reloaded on renewal)
//! and API keys ([`auth`]).

pub mod auth;
pub mod tls;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[tls]`: PEM files. With `client_ca`, clients must present a
/// certificate signed by it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// Seconds between checks of the files for a renewal (they are
    /// reloaded when their contents change); 0 = 10.
    #[serde(default)]
    pub reload_check_s: u64,
}

impl TlsFiles {
    pub fn reload_check(&self) -> std::time::Duration {
        std::time::Duration::from_secs(match self.reload_check_s {
            0 => 10,
            s => s,
        })
    }
}

/// `[auth]`: API keys, from files in `keys_dir` (`read-write`,
/// `read-write-next`, `read-only`: a Kubernetes Secret mounted as a
/// folder) or from `LOOKALIKE_API_KEY_RW`, `LOOKALIKE_API_KEY_RW_NEXT`,
/// `LOOKALIKE_API_KEY_RO`. No key anywhere: no authentication.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub keys_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.keys_dir {0} holds none of read-write, read-write-next, read-only")]
    NoKeys(PathBuf),
    #[error("TLS: {0}")]
    Rustls(String),
}

pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        path: path.into(),
        source,
    })
}
