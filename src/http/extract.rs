//! Reading a request body by its content type: JSON, multipart form (read
//! whole, within the body limit) or raw bytes (an image).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use super::error::{ApiError, Rejections};

pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub bytes: Bytes,
}

pub enum Body {
    Json(Bytes),
    Form(Vec<Part>),
    Raw(Bytes),
}

pub async fn body(req: Request, limit: usize) -> Result<Body, ApiError> {
    let r = Rejections { limit };
    let ctype = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| r.multipart(e))?;
        let mut parts = Vec::new();
        while let Some(field) = form.next_field().await.map_err(|e| r.part(e))? {
            let name = field.name().unwrap_or("").to_string();
            let file_name = field.file_name().map(str::to_string);
            let bytes = field.bytes().await.map_err(|e| r.part(e))?;
            parts.push(Part {
                name,
                file_name,
                bytes,
            });
        }
        return Ok(Body::Form(parts));
    }
    let json = ctype.starts_with("application/json");
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|e| r.bytes(e))?;
    Ok(if json {
        Body::Json(bytes)
    } else {
        Body::Raw(bytes)
    })
}

pub fn json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

/// The one image of a form (part `image`), or of a raw body.
pub fn one_image(parts: &[Part]) -> Result<Vec<u8>, ApiError> {
    let mut images = parts.iter().filter(|p| p.name == "image");
    match (images.next(), images.next()) {
        (Some(p), None) => Ok(p.bytes.to_vec()),
        (None, _) => Err(ApiError::invalid(
            "the form has no `image` part: send the photo as a part named image",
        )),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "the form has more than one `image` part; send one query image",
        )),
    }
}

/// Query-string parameters, a malformed or unknown one refused with 400.
pub fn params<T>(p: Result<Query<T>, QueryRejection>, limit: usize) -> Result<T, ApiError> {
    p.map(|q| q.0).map_err(|e| Rejections { limit }.query(e))
}
