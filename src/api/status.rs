//! Every library error maps to one gRPC status here, with the error's own
//! message, which is written for a person.

use tonic::{Code, Status};

use crate::embed::EmbedError;
use crate::gallery::GalleryError;

impl From<EmbedError> for Status {
    fn from(e: EmbedError) -> Self {
        let code = match &e {
            EmbedError::Image(_) => Code::InvalidArgument,
            EmbedError::Overloaded(_) => Code::ResourceExhausted,
            EmbedError::ShuttingDown | EmbedError::WorkerDied => Code::Unavailable,
            EmbedError::Manifest { .. } | EmbedError::Runtime(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "embedding failed");
        }
        Status::new(code, e.to_string())
    }
}

impl From<GalleryError> for Status {
    fn from(e: GalleryError) -> Self {
        let code = match &e {
            GalleryError::NoGallery(_) | GalleryError::NoItem { .. } => Code::NotFound,
            GalleryError::Exists(_) => Code::AlreadyExists,
            GalleryError::InvalidName { .. }
            | GalleryError::Dims { .. }
            | GalleryError::Degenerate
            | GalleryError::PageToken(_) => Code::InvalidArgument,
            GalleryError::Store(_) | GalleryError::Post(_) | GalleryError::Persist(_) => {
                Code::Internal
            }
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "storage failed");
        }
        Status::new(code, e.to_string())
    }
}

/// tonic reports a message over the size limit as OUT_OF_RANGE; gRPC's
/// convention (and our contract) is RESOURCE_EXHAUSTED.
pub fn is_message_too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

pub fn too_large(status: &Status) -> Status {
    Status::resource_exhausted(format!(
        "{}; send smaller images or raise max_message_bytes",
        status.message()
    ))
}

impl From<crate::gallery::online::OnlineError> for Status {
    fn from(e: crate::gallery::online::OnlineError) -> Self {
        use crate::gallery::online::OnlineError;
        let code = match &e {
            // Parameters are validated up front; what is left is a bug.
            OnlineError::Rerank(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
