//! API keys: a tower layer in front of every service but Health. Keys are
//! kept as SHA-256 digests and compared in constant time (digests of
//! equal length, every key compared), so neither the key nor its length
//! leaks through timing.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tonic::Status;
use tower::{Layer, Service};

use super::{read, AuthConfig, SecurityError};

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// Methods a read-only key may not call.
const WRITES: [&str; 4] = [
    "/lookalike.v1.Retrieval/AddToGallery",
    "/lookalike.v1.Retrieval/RemoveFromGallery",
    "/lookalike.v1.Retrieval/CreateGallery",
    "/lookalike.v1.Retrieval/DropGallery",
];

/// Exempt: probes and load balancers check health without a key.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// (file in keys_dir, environment variable, access)
const SOURCES: [(&str, &str, Access); 3] = [
    ("read-write", "LOOKALIKE_API_KEY_RW", Access::ReadWrite),
    (
        "read-write-next",
        "LOOKALIKE_API_KEY_RW_NEXT",
        Access::ReadWrite,
    ),
    ("read-only", "LOOKALIKE_API_KEY_RO", Access::ReadOnly),
];

type KeyDigest = [u8; 32];

fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Vec<(KeyDigest, Access)>,
}

impl ApiKeys {
    /// The configured keys, None when there are none (auth off). `env`
    /// looks up an environment variable; a variable wins over its file.
    pub fn load(
        cfg: &AuthConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, SecurityError> {
        let mut keys = Vec::new();
        for (file, var, access) in SOURCES {
            let key = match env(var) {
                Some(v) => Some(v.into_bytes()),
                None => match &cfg.keys_dir {
                    Some(dir) => read_optional(&dir.join(file))?,
                    None => None,
                },
            };
            if let Some(k) = key
                .map(|k| k.trim_ascii().to_vec())
                .filter(|k| !k.is_empty())
            {
                keys.push((digest(&k), access));
            }
        }
        match (&cfg.keys_dir, keys.is_empty()) {
            // Asked for keys and found none: refuse to start open.
            (Some(dir), true) => Err(SecurityError::NoKeys(dir.clone())),
            (None, true) => Ok(None),
            _ => Ok(Some(Self { keys })),
        }
    }

    /// The access `presented` grants, if it is one of the keys.
    pub fn check(&self, presented: &[u8]) -> Option<Access> {
        let d = digest(presented);
        let mut rw = Choice::from(0);
        let mut ro = Choice::from(0);
        for (k, access) in &self.keys {
            let hit = k.ct_eq(&d);
            match access {
                Access::ReadWrite => rw |= hit,
                Access::ReadOnly => ro |= hit,
            }
        }
        if bool::from(rw) {
            Some(Access::ReadWrite)
        } else if bool::from(ro) {
            Some(Access::ReadOnly)
        } else {
            None
        }
    }

    /// The refusal for a gRPC call to `path` with these headers, if any.
    pub fn authorise(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        if path.starts_with(HEALTH) {
            return Ok(());
        }
        self.check_headers(headers, WRITES.contains(&path))
            .map_err(|e| crate::query::ServiceError::from(e).into())
    }

    /// The refusal for a call (a write when `write`) with these headers,
    /// if any: the one check both transports make.
    pub fn check_headers(&self, headers: &http::HeaderMap, write: bool) -> Result<(), AuthError> {
        let presented = presented_key(headers).ok_or(AuthError::Missing)?;
        match self.check(presented) {
            None => Err(AuthError::Invalid),
            Some(Access::ReadOnly) if write => Err(AuthError::ReadOnly),
            Some(_) => Ok(()),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: send `authorization: Bearer <key>` or `api-key: <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("this API key is read-only; writes need a read-write key")]
    ReadOnly,
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SecurityError> {
    match path.try_exists() {
        Ok(true) => read(path).map(Some),
        Ok(false) => Ok(None),
        Err(source) => Err(SecurityError::Read {
            path: path.into(),
            source,
        }),
    }
}

fn presented_key(h: &http::HeaderMap) -> Option<&[u8]> {
    if let Some(v) = h.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let scheme = b"bearer ";
        return (v.len() > scheme.len() && v[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| v[scheme.len()..].trim_ascii());
    }
    h.get("api-key").map(|v| v.as_bytes().trim_ascii())
}

#[derive(Clone)]
pub struct AuthLayer {
    keys: Option<Arc<ApiKeys>>,
}

impl AuthLayer {
    /// `None`: every call passes.
    pub fn new(keys: Option<ApiKeys>) -> Self {
        Self {
            keys: keys.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    keys: Option<Arc<ApiKeys>>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(keys) = &self.keys {
            if let Err(status) = keys.authorise(req.uri().path(), req.headers()) {
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> ApiKeys {
        let env: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ApiKeys::load(&AuthConfig::default(), |k| env.get(k).cloned())
            .unwrap()
            .unwrap()
    }

    fn headers(name: &'static str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn keys_grant_their_access_only() {
        let k = keys(&[
            ("LOOKALIKE_API_KEY_RW", "rw-secret"),
            ("LOOKALIKE_API_KEY_RW_NEXT", "rw-next"),
            ("LOOKALIKE_API_KEY_RO", "ro-secret"),
        ]);
        assert_eq!(k.check(b"rw-secret"), Some(Access::ReadWrite));
        assert_eq!(k.check(b"rw-next"), Some(Access::ReadWrite));
        assert_eq!(k.check(b"ro-secret"), Some(Access::ReadOnly));
        assert_eq!(k.check(b"rw-secre"), None);
        assert_eq!(k.check(b""), None);
    }

    #[test]
    fn bearer_or_api_key_header_and_health_exempt() {
        let k = keys(&[("LOOKALIKE_API_KEY_RO", "ro")]);
        let search = "/lookalike.v1.Retrieval/Search";
        let add = "/lookalike.v1.Retrieval/AddToGallery";
        let none = http::HeaderMap::new();
        assert_eq!(
            k.authorise(search, &none).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(k.authorise("/grpc.health.v1.Health/Check", &none).is_ok());
        assert!(k
            .authorise(search, &headers("authorization", "Bearer ro"))
            .is_ok());
        assert!(k.authorise(search, &headers("api-key", "ro")).is_ok());
        assert_eq!(
            k.authorise(search, &headers("authorization", "Basic ro"))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            k.authorise(add, &headers("api-key", "ro"))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn keys_dir_without_keys_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuthConfig {
            keys_dir: Some(dir.path().into()),
        };
        assert!(matches!(
            ApiKeys::load(&cfg, |_| None),
            Err(SecurityError::NoKeys(_))
        ));
        std::fs::write(dir.path().join("read-only"), "ro-from-file\n").unwrap();
        let k = ApiKeys::load(&cfg, |_| None).unwrap().unwrap();
        assert_eq!(k.check(b"ro-from-file"), Some(Access::ReadOnly));
        assert!(ApiKeys::load(&AuthConfig::default(), |_| None)
            .unwrap()
            .is_none());
    }
}
