//! Galleries: list, create, stats, drop.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody, Rejections};
use super::App;
use crate::gallery::Gallery;
use crate::query::gallery;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GalleryStats {
    pub gallery: String,
    pub count: u64,
    pub dims: u32,
    pub model_fingerprint: String,
    pub execution_provider: String,
    pub index: IndexState,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IndexState {
    pub points: u64,
    pub tombstones: u64,
    pub rebuilding: bool,
    pub generation: u64,
    /// Changes not yet in the neighbour lists (a refresh is pending).
    pub stale_items: u64,
    pub post_processing_generation: u64,
    pub dba: bool,
    /// Whether an HNSW graph exists (else searches are exact).
    pub graph: bool,
    pub projection_components: u32,
    /// The ef a search uses when it names none (calibrated after a build).
    pub default_ef: u32,
    /// Recall@10 of `default_ef` on a sample of the gallery's own items
    /// (0: not calibrated), the sample size, and whether it reached
    /// `index.target_recall`.
    pub calibrated_recall: f64,
    pub calibration_sample: u32,
    pub target_recall_reached: bool,
    /// Seconds the last graph build took (0: none yet).
    pub build_seconds: f64,
}

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

fn stats(app: &App, g: &Gallery) -> GalleryStats {
    let s = g.stats();
    let cal = s.index.calibration;
    GalleryStats {
        gallery: s.name,
        count: s.count as u64,
        dims: s.meta.dims,
        model_fingerprint: s.meta.model_fingerprint,
        execution_provider: app.engine.provider().name().to_string(),
        index: IndexState {
            points: s.index.points as u64,
            tombstones: s.tombstones as u64,
            rebuilding: s.index.rebuilding,
            generation: s.index.generation,
            stale_items: s.stale_items,
            post_processing_generation: s.post_generation,
            dba: s.dba,
            graph: s.index.built,
            projection_components: s.projection_components as u32,
            default_ef: g.default_ef() as u32,
            calibrated_recall: cal.map_or(0.0, |c| c.recall),
            calibration_sample: cal.map_or(0, |c| c.sample as u32),
            target_recall_reached: cal.is_some_and(|c| c.reached),
            build_seconds: cal.map_or(0.0, |c| c.build_seconds),
        },
    }
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
    let galleries = app
        .galleries
        .list()
        .iter()
        .map(|g| stats(&app, g))
        .collect();
    Json(GalleryList { galleries })
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
    let g = gallery::create(&app.engine, &app.galleries, name).await?;
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
    params(("gallery" = String, Path, description = "Gallery name")),
    responses(
        (status = 200, body = GalleryStats),
        (status = 401, description = "No or wrong API key", body = ErrorBody),
        (status = 404, description = "No such gallery", body = ErrorBody),
    )
)]
pub async fn gallery_stats(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Json<GalleryStats>, ApiError> {
    let g = app.galleries.get(&name)?;
    Ok(Json(stats(&app, &g)))
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
    let removed_items = gallery::drop(&app.galleries, name).await?;
    Ok(Json(Dropped { removed_items }))
}
