//! Gallery and item operations both transports call: create and drop a
//! gallery, list a page of items, remove items.

use std::sync::Arc;

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
