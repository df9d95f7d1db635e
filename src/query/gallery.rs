//! Gallery and item operations both transports call: create and drop a
//! gallery, its statistics, list a page of items, remove items.

use std::sync::Arc;

use serde::Serialize;

use super::ServiceError;
use crate::embed::Engine;
use crate::gallery::page as page_token;
use crate::gallery::{Entry, Galleries, Gallery};
use crate::store::GalleryMeta;

/// Creates gallery `name` for the serving model.
pub async fn create(
    engine: &Engine,
    galleries: &Arc<Galleries>,
    name: String,
) -> Result<Arc<Gallery>, ServiceError> {
    let meta = GalleryMeta {
        model_fingerprint: engine.fingerprint().to_string(),
        dims: engine.dims() as u32,
    };
    let galleries = galleries.clone();
    Ok(tokio::task::spawn_blocking(move || galleries.create(&name, meta)).await??)
}

/// Drops gallery `name`; returns how many items it held.
pub async fn drop(galleries: &Arc<Galleries>, name: String) -> Result<u64, ServiceError> {
    let galleries = galleries.clone();
    Ok(tokio::task::spawn_blocking(move || galleries.drop_gallery(&name)).await??)
}

/// Removes `ids`; returns those that were not there.
pub async fn remove(g: Arc<Gallery>, ids: Vec<String>) -> Result<Vec<String>, ServiceError> {
    Ok(tokio::task::spawn_blocking(move || g.remove(&ids)).await??)
}

/// One page of items in id order: `page_size` 0 is 100, at most 1000;
/// `page_token` empty for the first page. Returns the next page's token
/// (empty after the last page).
pub fn page(
    g: &Gallery,
    page_size: u32,
    page_token: &str,
) -> Result<(Vec<(String, Entry)>, String), ServiceError> {
    let size = match page_size {
        0 => 100,
        n => n.min(1000) as usize,
    };
    let after = match page_token {
        "" => None,
        t => Some(page_token::decode(t)?),
    };
    let (page, more) = g.list(after.as_deref(), size);
    let next = match page.last() {
        Some((id, _)) if more => page_token::encode(id),
        _ => String::new(),
    };
    Ok((page, next))
}

/// A gallery's statistics (`GalleryStats` on both transports).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GalleryStats {
    pub gallery: String,
    pub count: u64,
    pub dims: u32,
    pub model_fingerprint: String,
    pub execution_provider: String,
    pub index: IndexState,
    /// This replica's place in the gallery's stream (absent on a single
    /// node).
    pub replication: Option<ReplicationState>,
}

/// How far a cluster replica has applied a gallery's stream.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct ReplicationState {
    /// The last stream sequence applied here: reads that ask for at most
    /// this see every write up to it.
    pub applied_sequence: u64,
    /// Stream messages not applied here yet.
    pub lag: u64,
    /// Whether it has reached the stream's end once since starting.
    pub caught_up: bool,
    /// Whether this replica is connected to the NATS cluster.
    pub connected: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// `g`'s statistics; `provider` is the serving engine's execution provider.
pub fn stats(g: &Gallery, provider: &str) -> GalleryStats {
    let s = g.stats();
    let cal = s.index.calibration;
    GalleryStats {
        gallery: s.name,
        count: s.count as u64,
        dims: s.meta.dims,
        model_fingerprint: s.meta.model_fingerprint,
        execution_provider: provider.to_string(),
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
        replication: None,
    }
}
