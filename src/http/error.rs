//! HTTP errors: a [`ServiceError`]'s kind gives the status (the one
//! mapping in `query::error`), its message the body, the same text the
//! gRPC status carries. Rejections of malformed requests (body over the
//! limit, bad JSON, bad multipart) get the same shape.

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::query::{Kind, ServiceError};

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `invalid_argument`, `too_large`, `not_found`, `already_exists`,
    /// `failed_precondition`, `overloaded`, `storage_full`, `unavailable`,
    /// `unauthenticated`, `permission_denied` or `internal`
    /// (`query::Kind::name`).
    pub code: String,
    /// For a person: what went wrong and what to do about it.
    pub message: String,
    /// Whether the same request may succeed later unchanged.
    pub retryable: bool,
}

#[derive(Debug)]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::InvalidArgument,
            message: message.into(),
        }
    }

    /// A request body over `max_message_bytes`.
    pub fn body_too_large(limit: usize) -> Self {
        Self {
            kind: Kind::TooLarge,
            message: format!(
                "request body is over the limit of {limit} bytes; send smaller or fewer images, or raise max_message_bytes"
            ),
        }
    }

    /// A rejection by an axum extractor: 413 stays 413, the rest is the
    /// client's mistake.
    fn rejection(status: StatusCode, text: String, limit: usize) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::body_too_large(limit)
        } else {
            Self::invalid(text)
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let e = e.logged();
        Self {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

macro_rules! via_service_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ServiceError::from(e).into()
            }
        }
    )*};
}
via_service_error!(
    crate::embed::EmbedError,
    crate::gallery::GalleryError,
    crate::security::auth::AuthError,
    tokio::task::JoinError
);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.http_status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind.name().into(),
                message: self.message,
                retryable: self.kind.retryable(),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if self.kind.retryable() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // Refused before the rest of the body was read: the connection
            // cannot carry another request, so tell the client not to reuse it.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

/// Maps extractor rejections, knowing the body limit for the message.
pub struct Rejections {
    pub limit: usize,
}

impl Rejections {
    pub fn bytes(&self, r: BytesRejection) -> ApiError {
        ApiError::rejection(r.status(), r.body_text(), self.limit)
    }
    pub fn json(&self, r: JsonRejection) -> ApiError {
        ApiError::rejection(r.status(), r.body_text(), self.limit)
    }
    pub fn query(&self, r: QueryRejection) -> ApiError {
        ApiError::rejection(r.status(), r.body_text(), self.limit)
    }
    pub fn multipart(&self, r: MultipartRejection) -> ApiError {
        ApiError::rejection(r.status(), r.body_text(), self.limit)
    }
    pub fn part(&self, e: MultipartError) -> ApiError {
        ApiError::rejection(e.status(), e.body_text(), self.limit)
    }
}

/// Unknown paths get the JSON error shape too.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError {
        kind: Kind::NotFound,
        message: format!("no such route {:?}; see /v1/openapi.json", uri.path()),
    }
}
