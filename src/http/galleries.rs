//! Galleries: list, create, stats, drop.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody, Rejections};
use super::items::ReadParams;
use super::{extract, App};
use crate::query::gallery::GalleryStats;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GalleryList {
    pub galleries: Vec<GalleryStats>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGallery {
    /// 1-64 characters from A-Z a-z 0-9 . _ -
    pub gallery: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    pub gallery: String,
    pub model_fingerprint: String,
    pub dims: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Dropped {
    pub removed_items: u64,
}

/// Every gallery with its statistics.
#[utoipa::path(
    get, path = "/v1/galleries", tag = "galleries",
    responses(
        (status = 200, body = GalleryList),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
    )
)]
pub async fn list_galleries(State(app): State<App>) -> Json<GalleryList> {
    Json(GalleryList {
        galleries: app.service.list_stats(),
    })
}

/// Creates an empty gallery for the serving model.
#[utoipa::path(
    post, path = "/v1/galleries", tag = "galleries",
    request_body = CreateGallery,
    responses(
        (status = 201, body = Created),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 403, description = "Read-only API key", body = ErrorBody),
        (status = 409, description = "Gallery exists", body = ErrorBody),
    )
)]
pub async fn create_gallery(
    State(app): State<App>,
    body: Result<Json<CreateGallery>, JsonRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let rej = Rejections {
        limit: app.max_body,
    };
    let name = body.map_err(|e| rej.json(e))?.0.gallery;
    let g = app.service.create_gallery(name).await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            gallery: g.name().to_string(),
            model_fingerprint: g.meta().model_fingerprint.clone(),
            dims: g.meta().dims,
        }),
    ))
}

/// Items, dimensions, model, execution provider and index state.
#[utoipa::path(
    get, path = "/v1/galleries/{gallery}", tag = "galleries",
    params(("gallery" = String, Path, description = "Gallery name"), ReadParams),
    responses(
        (status = 200, body = GalleryStats),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 404, description = "No such gallery", body = ErrorBody),
    )
)]
pub async fn gallery_stats(
    State(app): State<App>,
    Path(name): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Json<GalleryStats>, ApiError> {
    let p = extract::params(params, app.max_body)?;
    let g = app.service.gallery_at(&name, p.min_sequence).await?;
    Ok(Json(app.service.stats(&g)))
}

/// Drops a gallery with all its items.
#[utoipa::path(
    delete, path = "/v1/galleries/{gallery}", tag = "galleries",
    params(("gallery" = String, Path, description = "Gallery name")),
    responses(
        (status = 200, body = Dropped),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 403, description = "Read-only API key", body = ErrorBody),
        (status = 404, description = "No such gallery", body = ErrorBody),
    )
)]
pub async fn drop_gallery(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Json<Dropped>, ApiError> {
    let removed_items = app.service.drop_gallery(name).await?;
    Ok(Json(Dropped { removed_items }))
}
