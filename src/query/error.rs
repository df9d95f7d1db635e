//! The service's errors and the single mapping of their kind to a gRPC
//! code and an HTTP status. Messages are written for a person and are the
//! same on both transports.

use crate::cluster::ClusterError;
use crate::embed::preprocess::ImageError;
use crate::embed::EmbedError;
use crate::gallery::GalleryError;
use crate::rerank::RerankError;
use crate::security::auth::AuthError;

use super::admission::AdmissionError;
use super::online::OnlineError;

/// What went wrong, as a client needs to tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    /// Input over a size limit (an image over `embed.limits.max_bytes`).
    TooLarge,
    NotFound,
    AlreadyExists,
    /// Descriptor or gallery of another model.
    FailedPrecondition,
    /// Retry later: the embedding queue or the search admission is full.
    Overloaded,
    /// The disk holding the store is full: retry once space is freed.
    StorageFull,
    /// Retry: shutting down, an inference worker died, or a gallery's
    /// projection kept changing under a search.
    Unavailable,
    /// No API key or a wrong one.
    Unauthenticated,
    /// A read-only key on a write.
    PermissionDenied,
    Internal,
}

impl Kind {
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            // gRPC's contract predates the HTTP API: an oversized image is
            // INVALID_ARGUMENT there.
            Kind::InvalidArgument | Kind::TooLarge => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::AlreadyExists => Code::AlreadyExists,
            Kind::FailedPrecondition => Code::FailedPrecondition,
            // gRPC's own example of RESOURCE_EXHAUSTED: "the entire file
            // system is out of space".
            Kind::Overloaded | Kind::StorageFull => Code::ResourceExhausted,
            Kind::Unavailable => Code::Unavailable,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::PermissionDenied => Code::PermissionDenied,
            Kind::Internal => Code::Internal,
        }
    }

    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Kind::InvalidArgument => S::BAD_REQUEST,
            Kind::TooLarge => S::PAYLOAD_TOO_LARGE,
            Kind::NotFound => S::NOT_FOUND,
            Kind::AlreadyExists | Kind::FailedPrecondition => S::CONFLICT,
            Kind::Overloaded => S::TOO_MANY_REQUESTS,
            Kind::StorageFull => S::INSUFFICIENT_STORAGE,
            Kind::Unavailable => S::SERVICE_UNAVAILABLE,
            Kind::Unauthenticated => S::UNAUTHORIZED,
            Kind::PermissionDenied => S::FORBIDDEN,
            Kind::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Kind::Overloaded | Kind::StorageFull | Kind::Unavailable
        )
    }

    /// The name clients see (HTTP `error.code`, `ItemOutcome` reasons).
    pub fn name(self) -> &'static str {
        match self {
            Kind::InvalidArgument => "invalid_argument",
            Kind::TooLarge => "too_large",
            Kind::NotFound => "not_found",
            Kind::AlreadyExists => "already_exists",
            Kind::FailedPrecondition => "failed_precondition",
            Kind::Overloaded => "overloaded",
            Kind::StorageFull => "storage_full",
            Kind::Unavailable => "unavailable",
            Kind::Unauthenticated => "unauthenticated",
            Kind::PermissionDenied => "permission_denied",
            Kind::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Gallery(#[from] GalleryError),
    #[error(transparent)]
    Cluster(ClusterError),
    #[error(transparent)]
    Online(#[from] OnlineError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// SearchBatch's stage list does not parse or fit together.
    #[error("options.stages: {0}")]
    Stages(RerankError),
    /// SearchBatch's pipeline refused the call's data.
    #[error("{0}")]
    Pipeline(RerankError),
    /// One query of a batch call failed; `query` names it.
    #[error("{query}: {source}")]
    InQuery {
        query: String,
        source: Box<ServiceError>,
    },
}

impl ServiceError {
    pub fn kind(&self) -> Kind {
        match self {
            ServiceError::Invalid(_) => Kind::InvalidArgument,
            ServiceError::NotFound(_) => Kind::NotFound,
            ServiceError::Precondition(_) => Kind::FailedPrecondition,
            ServiceError::Internal(_) => Kind::Internal,
            ServiceError::Embed(e) => match e {
                EmbedError::Image(ImageError::TooLarge { .. }) => Kind::TooLarge,
                EmbedError::Image(_) => Kind::InvalidArgument,
                EmbedError::Overloaded(_) => Kind::Overloaded,
                EmbedError::ShuttingDown | EmbedError::WorkerDied => Kind::Unavailable,
                EmbedError::Manifest { .. } | EmbedError::Runtime(_) => Kind::Internal,
            },
            ServiceError::Gallery(e) => gallery_kind(e),
            ServiceError::Cluster(e) => match e {
                ClusterError::Unreachable(_)
                | ClusterError::NotAcknowledged { .. }
                | ClusterError::Behind { .. }
                | ClusterError::Changed(_)
                | ClusterError::NotApplied(_)
                | ClusterError::Nats(_)
                | ClusterError::Connect(_) => Kind::Unavailable,
                ClusterError::OtherModel { .. }
                | ClusterError::Refused(_)
                | ClusterError::LocalOnly(_) => Kind::FailedPrecondition,
                ClusterError::TooLarge { .. } => Kind::InvalidArgument,
                ClusterError::Local(_) => Kind::Internal,
                ClusterError::Gallery(e) => gallery_kind(e),
            },
            ServiceError::Online(e) => match e {
                // Parameters are validated up front; what is left is a bug.
                OnlineError::Rerank(_) => Kind::Internal,
                // The gallery's space moved under three tries in a row.
                OnlineError::SpaceChanged => Kind::Unavailable,
            },
            ServiceError::Auth(AuthError::ReadOnly) => Kind::PermissionDenied,
            ServiceError::Auth(_) => Kind::Unauthenticated,
            ServiceError::Admission(_) => Kind::Overloaded,
            ServiceError::Stages(_) | ServiceError::Pipeline(_) => Kind::InvalidArgument,
            ServiceError::InQuery { source, .. } => source.kind(),
        }
    }

    /// Logs internal errors (clients only see the message); returns self.
    pub fn logged(self) -> Self {
        if self.kind() == Kind::Internal {
            tracing::error!(error = %self, "request failed");
        }
        self
    }
}

fn gallery_kind(e: &GalleryError) -> Kind {
    match e {
        GalleryError::NoGallery(_) | GalleryError::NoItem { .. } => Kind::NotFound,
        GalleryError::Exists(_) => Kind::AlreadyExists,
        GalleryError::InvalidName { .. }
        | GalleryError::Dims { .. }
        | GalleryError::Degenerate
        | GalleryError::PageToken(_) => Kind::InvalidArgument,
        GalleryError::Store(s) if s.is_disk_full() => Kind::StorageFull,
        GalleryError::Store(_) | GalleryError::Post(_) | GalleryError::Persist(_) => Kind::Internal,
    }
}

/// A gallery error from the cluster is the gallery error itself.
impl From<ClusterError> for ServiceError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Gallery(g) => ServiceError::Gallery(g),
            e => ServiceError::Cluster(e),
        }
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for ServiceError {
    fn from(e: tokio::task::JoinError) -> Self {
        ServiceError::Internal(format!("worker task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_both_transports() {
        let over = ServiceError::Embed(EmbedError::Overloaded(3));
        assert_eq!(over.kind().grpc_code(), tonic::Code::ResourceExhausted);
        assert_eq!(over.kind().http_status(), 429);
        assert!(over.kind().retryable());
        let big = ServiceError::Embed(EmbedError::Image(ImageError::TooLarge { size: 2, max: 1 }));
        assert_eq!(big.kind().grpc_code(), tonic::Code::InvalidArgument);
        assert_eq!(big.kind().http_status(), 413);
        let none = ServiceError::Gallery(GalleryError::NoGallery("g".into()));
        assert_eq!(none.kind().http_status(), 404);
        assert_eq!(none.to_string(), "gallery \"g\" does not exist");
        let exists = ServiceError::Gallery(GalleryError::Exists("g".into()));
        assert_eq!(exists.kind().http_status(), 409);
        assert!(!ServiceError::Invalid("x".into()).kind().retryable());
        assert_eq!(
            ServiceError::Embed(EmbedError::WorkerDied)
                .kind()
                .http_status(),
            503
        );
    }
}
