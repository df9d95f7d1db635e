//! Items: add (multipart images or JSON descriptors, one outcome per
//! item), list, get, remove, and the stored thumbnail.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{self, Body};
use super::search::DescriptorJson;
use super::App;
use crate::gallery::{GalleryError, Metadata};
use crate::query::add::{self, Incoming, Outcome, Summary};
use crate::query::item::Content;
use crate::query::{checks, gallery};
use crate::store::thumbnail::ThumbnailConfig;

/// Items to add as descriptors (images come as multipart).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddJson {
    pub items: Vec<AddJsonItem>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddJsonItem {
    pub id: String,
    pub descriptor: DescriptorJson,
    #[serde(default)]
    pub metadata: Metadata,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AddResponse {
    /// One per item, in request order.
    pub outcomes: Vec<Outcome>,
    pub summary: Summary,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Item {
    pub id: String,
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<DescriptorJson>,
    pub thumbnail: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Pass as `page_token` for the next page; empty after the last.
    pub next_page_token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Removed {
    pub removed: u64,
    /// On a cluster, the removal's stream sequence (0 on a single node).
    pub sequence: u64,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 0: 100; at most 1000.
    pub page_size: u32,
    pub page_token: String,
    /// On a cluster: wait (bounded) until this replica has applied this
    /// sequence of the gallery's stream (a write's `sequence`); 0: at once.
    pub min_sequence: u64,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    pub include_descriptor: bool,
    /// On a cluster: wait (bounded) until this replica has applied this
    /// sequence of the gallery's stream (a write's `sequence`); 0: at once.
    pub min_sequence: u64,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// On a cluster: wait (bounded) until this replica has applied this
    /// sequence of the gallery's stream (a write's `sequence`); 0: at once.
    pub min_sequence: u64,
}

/// Where a page shows item `id` from: its URL metadata, else its stored
/// thumbnail when thumbnails are on.
pub fn thumbnail_url(
    cfg: &ThumbnailConfig,
    gallery: &str,
    id: &str,
    metadata: &Metadata,
) -> Option<String> {
    if let Some(url) = (!cfg.url_key.is_empty())
        .then(|| metadata.get(&cfg.url_key))
        .flatten()
    {
        return Some(url.clone());
    }
    cfg.enabled.then(|| {
        format!(
            "/v1/galleries/{}/items/{}/thumbnail",
            encode_segment(gallery),
            encode_segment(id)
        )
    })
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// (id, content, metadata) of each item in the body.
type Received = Vec<(String, Content, Metadata)>;

fn from_form(parts: Vec<extract::Part>) -> Result<Received, ApiError> {
    let mut metadata: BTreeMap<String, Metadata> = match parts.iter().find(|p| p.name == "metadata")
    {
        Some(p) => extract::json(&p.bytes, "metadata part (an object of item id -> metadata)")?,
        None => BTreeMap::new(),
    };
    let mut items = Vec::new();
    for p in parts {
        match p.name.as_str() {
            "image" => {
                let id = p.file_name.filter(|n| !n.is_empty()).ok_or_else(|| {
                    ApiError::invalid("each image part needs a filename: it is the item id")
                })?;
                let meta = metadata.remove(&id).unwrap_or_default();
                items.push((id, Content::Image(p.bytes.to_vec()), meta));
            }
            "metadata" => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown form part {other:?}: send parts named image (filename = item id) and optionally metadata"
                )))
            }
        }
    }
    if let Some(id) = metadata.keys().next() {
        return Err(ApiError::invalid(format!(
            "the metadata part names item {id:?}, which is not in the form"
        )));
    }
    Ok(items)
}

/// Adds or replaces items; per-item outcomes (a rejected item does not
/// fail the others).
#[utoipa::path(
    post, path = "/v1/galleries/{gallery}/items", tag = "items",
    params(("gallery" = String, Path, description = "Gallery name")),
    request_body(description = "multipart: parts `image` (the filename is the item id) and \
        optionally `metadata` (JSON object: item id -> {key: value}); or JSON with descriptors",
        content(("multipart/form-data"), (AddJson = "application/json"))),
    responses(
        (status = 200, description = "One outcome per item", body = AddResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 403, description = "Read-only API key", body = ErrorBody),
        (status = 404, description = "No such gallery", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
    )
)]
pub async fn add_items(
    State(app): State<App>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Json<AddResponse>, ApiError> {
    let g = app.service.gallery(&name)?;
    let items: Received = match extract::body(req, app.max_body).await? {
        Body::Form(parts) => from_form(parts)?,
        Body::Json(b) => extract::json::<AddJson>(&b, "add request")?
            .items
            .into_iter()
            .map(|i| (i.id, Content::Descriptor(i.descriptor.into()), i.metadata))
            .collect(),
        Body::Raw(_) => {
            return Err(ApiError::invalid(
                "send images as multipart/form-data (parts named image) or descriptors as JSON",
            ))
        }
    };
    let mut outcomes = Vec::with_capacity(items.len());
    let mut summary = Summary::default();
    let mut items = items.into_iter().enumerate().peekable();
    while items.peek().is_some() {
        let round = items
            .by_ref()
            .take(add::ROUND)
            .map(|(index, (id, content, metadata))| Incoming {
                index: index as u64,
                id,
                gallery: Ok(g.clone()),
                content: Some(content),
                metadata,
            })
            .collect();
        for o in add::add_round(&app.service, round).await {
            summary.count(&o);
            outcomes.push(o);
        }
    }
    Ok(Json(AddResponse { outcomes, summary }))
}

/// A page of items in id order.
#[utoipa::path(
    get, path = "/v1/galleries/{gallery}/items", tag = "items",
    params(("gallery" = String, Path, description = "Gallery name"), PageParams),
    responses(
        (status = 200, body = ItemPage),
        (status = 400, description = "A page token that was not issued", body = ErrorBody),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 404, description = "No such gallery", body = ErrorBody),
    )
)]
pub async fn list_items(
    State(app): State<App>,
    Path(name): Path<String>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<ItemPage>, ApiError> {
    let p = extract::params(params, app.max_body)?;
    let g = app.service.gallery_at(&name, p.min_sequence).await?;
    let (page, next_page_token) = gallery::page(&g, p.page_size, &p.page_token)?;
    let items = page
        .into_iter()
        .map(|(id, e)| Item {
            thumbnail: thumbnail_url(&app.thumbnails, &name, &id, &e.metadata),
            id,
            metadata: e.metadata,
            descriptor: None,
        })
        .collect();
    Ok(Json(ItemPage {
        items,
        next_page_token,
    }))
}

/// One item, optionally with its descriptor.
#[utoipa::path(
    get, path = "/v1/galleries/{gallery}/items/{id}", tag = "items",
    params(("gallery" = String, Path, description = "Gallery name"),
        ("id" = String, Path, description = "Item id (percent-encoded)"), GetParams),
    responses(
        (status = 200, body = Item),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 404, description = "No such gallery or item", body = ErrorBody),
    )
)]
pub async fn get_item(
    State(app): State<App>,
    Path((name, id)): Path<(String, String)>,
    params: Result<Query<GetParams>, QueryRejection>,
) -> Result<Json<Item>, ApiError> {
    let p = extract::params(params, app.max_body)?;
    let g = app.service.gallery_at(&name, p.min_sequence).await?;
    let e = checks::item(&g, &id)?;
    let descriptor = p.include_descriptor.then(|| DescriptorJson {
        values: e.vector.to_vec(),
        model_fingerprint: g.meta().model_fingerprint.clone(),
    });
    Ok(Json(Item {
        thumbnail: thumbnail_url(&app.thumbnails, &name, &id, &e.metadata),
        id,
        metadata: e.metadata,
        descriptor,
    }))
}

/// Removes one item (and its thumbnail).
#[utoipa::path(
    delete, path = "/v1/galleries/{gallery}/items/{id}", tag = "items",
    params(("gallery" = String, Path, description = "Gallery name"),
        ("id" = String, Path, description = "Item id (percent-encoded)")),
    responses(
        (status = 200, body = Removed),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 403, description = "Read-only API key", body = ErrorBody),
        (status = 404, description = "No such gallery or item", body = ErrorBody),
    )
)]
pub async fn remove_item(
    State(app): State<App>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Removed>, ApiError> {
    let g = app.service.gallery(&name)?;
    let (missing, sequence) = app.service.remove(g, vec![id.clone()]).await?;
    if !missing.is_empty() {
        return Err(GalleryError::NoItem { gallery: name, id }.into());
    }
    Ok(Json(Removed {
        removed: 1,
        sequence,
    }))
}

/// The JPEG thumbnail stored with the item.
#[utoipa::path(
    get, path = "/v1/galleries/{gallery}/items/{id}/thumbnail", tag = "items",
    params(("gallery" = String, Path, description = "Gallery name"),
        ("id" = String, Path, description = "Item id (percent-encoded)")),
    responses(
        (status = 200, description = "The thumbnail", content_type = "image/jpeg", body = Vec<u8>),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 404, description = "No such gallery or item, or no thumbnail", body = ErrorBody),
    )
)]
pub async fn thumbnail(
    State(app): State<App>,
    Path((name, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let g = app.service.gallery(&name)?;
    checks::item(&g, &id)?;
    let jpeg = tokio::task::spawn_blocking(move || g.thumbnail(&id)).await??;
    let jpeg = jpeg.ok_or_else(|| ApiError {
        kind: crate::query::Kind::NotFound,
        message: "this item has no thumbnail: it was added as a descriptor, with a URL in its metadata, or while thumbnails were off".into(),
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, no-cache"),
        ],
        jpeg,
    ))
}
