//! `POST /v1/galleries/{gallery}/search` and `POST /v1/embed`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{self, Body};
use super::items::thumbnail_url;
use super::App;
use crate::gallery::Metadata;
use crate::query::checks::Descriptor;
use crate::query::plan::{KrOptions, PostOptions, QeOptions};
use crate::query::search::{Options, Query as SearchQuery, NO_QUERY};
use crate::query::timing::Timing;

/// A descriptor, as `POST /v1/embed` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DescriptorJson {
    pub values: Vec<f32>,
    /// Checked against the gallery's model when not empty.
    #[serde(default)]
    pub model_fingerprint: String,
}

impl From<DescriptorJson> for Descriptor {
    fn from(d: DescriptorJson) -> Self {
        Descriptor {
            values: d.values,
            model_fingerprint: d.model_fingerprint,
        }
    }
}

/// A JSON search (with `descriptor` or `item_id`), or the `options` part
/// of a multipart search (with the image in part `image`). Zeros and
/// unset fields take the server defaults.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SearchRequest {
    /// Search by a stored item; it is left out of its own results.
    pub item_id: Option<String>,
    pub descriptor: Option<DescriptorJson>,
    pub top_k: u32,
    pub ef_search: u32,
    /// Exact search instead of the HNSW graph.
    pub exact: bool,
    /// Only items whose metadata has all these key/value pairs.
    pub filter: Metadata,
    pub post_processing: PostOptions,
}

/// Options of a search whose body is the raw image.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RawSearchParams {
    pub top_k: u32,
    pub ef_search: u32,
    pub exact: bool,
    pub shortlist: Option<u32>,
    /// Query expansion on or off (server default when unset).
    pub query_expansion: Option<bool>,
    /// k-reciprocal re-ranking on or off (server default when unset).
    pub k_reciprocal: Option<bool>,
    /// On a cluster: wait (bounded) until this replica has applied this
    /// sequence of the gallery's stream (a write's `sequence`); 0: at once.
    pub min_sequence: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Hit {
    pub id: String,
    /// Cosine distance after the stages that ran; lower is closer.
    pub distance: f32,
    pub metadata: Metadata,
    /// Where to show it from: the item's `thumbnails.url_key` metadata, or
    /// its stored thumbnail (absent when thumbnails are off).
    pub thumbnail: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<Hit>,
    /// Every stage that took time, decode and embed first for images.
    pub timings: Vec<Timing>,
    /// The stages that shaped the ranking, in order.
    pub stages: Vec<String>,
    /// Stages the request asked for that did not run, each with why.
    pub degraded: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmbedResponse {
    pub descriptor: DescriptorJson,
    pub timings: Vec<Timing>,
}

impl SearchRequest {
    /// The options, and the query unless an image comes with them.
    fn split(self, image: Option<Vec<u8>>) -> Result<(SearchQuery, Options), ApiError> {
        let query = match (image, self.descriptor, self.item_id) {
            (Some(b), None, None) => SearchQuery::Image(b),
            (None, Some(d), None) => SearchQuery::Descriptor(d.into()),
            (None, None, Some(id)) => SearchQuery::ItemId(id),
            _ => return Err(ApiError::invalid(NO_QUERY)),
        };
        let opts = Options {
            top_k: self.top_k,
            ef_search: self.ef_search,
            exact: self.exact,
            filter: self.filter,
            post: self.post_processing,
        };
        Ok((query, opts))
    }
}

impl From<RawSearchParams> for Options {
    fn from(p: RawSearchParams) -> Self {
        Options {
            top_k: p.top_k,
            ef_search: p.ef_search,
            exact: p.exact,
            filter: Metadata::new(),
            post: PostOptions {
                shortlist: p.shortlist,
                query_expansion: p.query_expansion.map(|enabled| QeOptions {
                    enabled,
                    k: None,
                    alpha: None,
                }),
                k_reciprocal: p.k_reciprocal.map(|enabled| KrOptions {
                    enabled,
                    k1: None,
                    k2: None,
                    lambda: None,
                }),
            },
        }
    }
}

/// Ranked gallery items for an image, a descriptor or a stored item.
#[utoipa::path(
    post, path = "/v1/galleries/{gallery}/search", tag = "search",
    params(("gallery" = String, Path, description = "Gallery name"), RawSearchParams),
    request_body(description = "The image as the body (options in the query string); \
        or multipart with parts `image` and `options` (a SearchRequest); \
        or a SearchRequest as JSON with `descriptor` or `item_id`",
        content(
            (SearchRequest = "application/json"),
            ("multipart/form-data"),
            ("application/octet-stream"),
            ("image/jpeg"),
        )),
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, description = "Invalid query or options", body = ErrorBody),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 404, description = "No such gallery or item", body = ErrorBody),
        (status = 409, description = "Gallery or descriptor of another model", body = ErrorBody),
        (status = 413, description = "Image or body over the limit", body = ErrorBody),
        (status = 429, description = "Embedding queue full; retry", body = ErrorBody),
        (status = 503, description = "Shutting down or inference down", body = ErrorBody),
    )
)]
pub async fn search(
    State(app): State<App>,
    Path(gallery): Path<String>,
    params: Result<Query<RawSearchParams>, QueryRejection>,
    req: Request,
) -> Result<Json<SearchResponse>, ApiError> {
    let params = extract::params(params, app.max_body)?;
    let min_sequence = params.min_sequence;
    // Checked before the body is read: a missing gallery fails fast.
    app.service.gallery(&gallery)?;
    let (query, opts) = match extract::body(req, app.max_body).await? {
        Body::Json(b) => extract::json::<SearchRequest>(&b, "search request")?.split(None)?,
        Body::Form(parts) => {
            let image = extract::one_image(&parts)?;
            let options = match parts.iter().find(|p| p.name == "options") {
                Some(p) => extract::json::<SearchRequest>(&p.bytes, "options part")?,
                None => SearchRequest::default(),
            };
            options.split(Some(image))?
        }
        Body::Raw(b) => (SearchQuery::Image(b.to_vec()), params.into()),
    };
    let found = app
        .service
        .search(&gallery, min_sequence, query, opts)
        .await?;
    let hits = found
        .hits
        .into_iter()
        .map(|h| Hit {
            thumbnail: thumbnail_url(&app.thumbnails, &gallery, &h.id, &h.metadata),
            id: h.id,
            distance: h.distance,
            metadata: h.metadata,
        })
        .collect();
    Ok(Json(SearchResponse {
        hits,
        timings: found.timings,
        stages: found.stages,
        degraded: found.degraded,
    }))
}

/// The serving model's descriptor of an image.
#[utoipa::path(
    post, path = "/v1/embed", tag = "search",
    request_body(description = "The image as the body, or multipart with part `image`",
        content(("application/octet-stream"), ("image/jpeg"), ("multipart/form-data"))),
    responses(
        (status = 200, body = EmbedResponse),
        (status = 400, description = "Not a decodable image", body = ErrorBody),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 413, description = "Image or body over the limit", body = ErrorBody),
        (status = 429, description = "Embedding queue full; retry", body = ErrorBody),
        (status = 503, description = "Shutting down or inference down", body = ErrorBody),
    )
)]
pub async fn embed(State(app): State<App>, req: Request) -> Result<Json<EmbedResponse>, ApiError> {
    let image = match extract::body(req, app.max_body).await? {
        Body::Form(parts) => extract::one_image(&parts)?,
        Body::Raw(b) => b.to_vec(),
        Body::Json(_) => {
            return Err(ApiError::invalid(
                "send the image as the body or as a multipart part named image, not as JSON",
            ))
        }
    };
    let e = app.service.embed(image).await?;
    Ok(Json(EmbedResponse {
        descriptor: DescriptorJson {
            values: e.values,
            model_fingerprint: e.model_fingerprint,
        },
        timings: e.timings,
    }))
}
