//! All galleries of one store: opening them, creating and dropping one,
//! and saving their derived state at shutdown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::post::PostConfig;
use super::{persist, validate_gallery_name, Gallery, GalleryError};
use crate::index::HnswParams;
use crate::store::{GalleryMeta, Position, Store, StoreError};

/// All galleries of one store.
pub struct Galleries {
    store: Arc<Store>,
    /// Where each gallery's derived state is saved at shutdown.
    index_dir: PathBuf,
    params: HnswParams,
    post: PostConfig,
    map: RwLock<BTreeMap<String, Arc<Gallery>>>,
}

impl Galleries {
    /// Opens the store and loads every gallery, with the derived state
    /// saved at the last shutdown where it matches (`index/` next to the
    /// store), else recomputed.
    pub fn open(path: &Path, params: HnswParams, post: PostConfig) -> Result<Self, GalleryError> {
        let store = Arc::new(Store::open(path)?);
        let index_dir = path.parent().unwrap_or(Path::new(".")).join("index");
        let mut map = BTreeMap::new();
        for (name, meta) in store.galleries()? {
            let t = std::time::Instant::now();
            let dir = index_dir.join(&name);
            let saved = persist::load(&dir, meta.dims as usize, &post, &params)
                .unwrap_or_else(|e| {
                    tracing::warn!(gallery = %name, error = %e, "saved state unusable; recomputing");
                    None
                });
            let g = Arc::new(Gallery::open(
                name.clone(),
                meta,
                store.clone(),
                params.clone(),
                post.clone(),
                saved,
            )?);
            // Before serving, so a restarted server answers as the batch
            // definition does; with a matching saved state only the
            // changes since it are applied.
            let restored = g.post_snapshot().is_some();
            // First, so that a graph build the refresh starts runs on it.
            g.start_worker();
            if let Err(e) = g.refresh_if_stale() {
                tracing::warn!(gallery = %name, error = %e, "post-processing state not computed");
                g.request_refresh();
            }
            // Without DBA the refresh indexes nothing: build the graph of
            // a large gallery from the raw descriptors (on the worker).
            g.maintain_index_now();
            tracing::info!(gallery = %name, items = g.len(), restored,
                ms = t.elapsed().as_millis() as u64, "gallery loaded");
            map.insert(name, g);
        }
        Ok(Self {
            store,
            index_dir,
            params,
            post,
            map: RwLock::new(map),
        })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Gallery>, GalleryError> {
        self.map
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| GalleryError::NoGallery(name.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Gallery>> {
        self.map.read().values().cloned().collect()
    }

    pub fn create(&self, name: &str, meta: GalleryMeta) -> Result<Arc<Gallery>, GalleryError> {
        self.create_at(name, meta, None)
    }

    /// `create`, for a cluster replica: the gallery starts at `position`
    /// of its stream.
    pub fn create_at(
        &self,
        name: &str,
        meta: GalleryMeta,
        position: Option<Position>,
    ) -> Result<Arc<Gallery>, GalleryError> {
        validate_gallery_name(name)?;
        let mut map = self.map.write();
        if map.contains_key(name) {
            return Err(GalleryError::Exists(name.to_string()));
        }
        self.store
            .create_gallery_at(name, &meta, position)
            .map_err(|e| match e {
                StoreError::GalleryExists(n) => GalleryError::Exists(n),
                e => e.into(),
            })?;
        let g = Arc::new(Gallery::open(
            name.to_string(),
            meta,
            self.store.clone(),
            self.params.clone(),
            self.post.clone(),
            None,
        )?);
        g.start_worker();
        map.insert(name.to_string(), g.clone());
        Ok(g)
    }

    /// Drops a gallery and its items; returns how many items it held.
    pub fn drop_gallery(&self, name: &str) -> Result<u64, GalleryError> {
        let mut map = self.map.write();
        let g = map
            .get(name)
            .cloned()
            .ok_or_else(|| GalleryError::NoGallery(name.to_string()))?;
        let w = g.writing();
        let n = self.store.drop_gallery(name)?;
        map.remove(name);
        drop(w);
        // Not joined: a graph build in progress finishes in the background
        // (its index is dropped with it), rather than holding up the call.
        drop(g.stop_worker());
        let dir = self.index_dir.join(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "saved state of a dropped gallery left behind");
            }
        }
        Ok(n)
    }

    /// At shutdown, after the last request: stops every gallery's
    /// maintenance worker, waiting for a graph build in progress, then
    /// saves the derived state (`save_all`). Returns how many were saved.
    pub fn shutdown(&self) -> usize {
        for g in self.list() {
            let Some(worker) = g.stop_worker() else {
                continue;
            };
            if worker.join().is_err() {
                tracing::error!(gallery = %g.name(), "the maintenance worker panicked");
            }
        }
        self.save_all()
    }

    /// Saves every gallery's derived state for the next start. A failure
    /// only costs that gallery a recomputation at the next start; it is
    /// logged and the others are still saved.
    pub fn save_all(&self) -> usize {
        let mut saved = 0;
        for g in self.list() {
            let t = std::time::Instant::now();
            match g.save(&self.index_dir.join(g.name())) {
                Ok(()) => {
                    saved += 1;
                    tracing::info!(gallery = %g.name(), items = g.len(),
                        ms = t.elapsed().as_millis() as u64, "derived state saved");
                }
                Err(e) => {
                    tracing::warn!(gallery = %g.name(), error = %e, "derived state not saved")
                }
            }
        }
        saved
    }
}
