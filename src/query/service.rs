//! The service object: everything a request needs, built once per server
//! and handed to every port (gRPC, HTTP/JSON, admin). Limits that span the
//! ports live here once: one search admission for Search, SearchBatch and
//! HTTP search alike, whichever port a search came by.

use std::sync::Arc;

use super::admission::SearchAdmission;
use super::batch::BatchSearcher;
use super::gallery::{self, GalleryStats};
use super::item::Preparer;
use super::search::Searcher;
use super::timing::{timings, Timing};
use super::ServiceError;
use crate::config::Config;
use crate::embed::Engine;
use crate::gallery::{Galleries, Gallery};

pub struct Service {
    pub engine: Arc<Engine>,
    pub galleries: Arc<Galleries>,
    pub searcher: Searcher,
    pub batch: BatchSearcher,
    pub preparer: Preparer,
}

/// An image's descriptor from the serving model.
pub struct Embedded {
    pub values: Vec<f32>,
    pub model_fingerprint: String,
    pub timings: Vec<Timing>,
}

impl Service {
    pub fn new(engine: Arc<Engine>, galleries: Arc<Galleries>, cfg: &Config) -> Arc<Self> {
        let admission = Arc::new(SearchAdmission::new(cfg.search));
        Arc::new(Self {
            searcher: Searcher::new(engine.clone(), cfg, admission.clone()),
            batch: BatchSearcher {
                engine: engine.clone(),
                default_top_k: cfg.default_top_k,
                max_top_k: cfg.max_top_k,
                max_queries: cfg.max_batch_queries,
                admission,
            },
            preparer: Preparer {
                engine: engine.clone(),
                metadata: cfg.metadata,
                thumbnails: cfg.thumbnails.clone(),
            },
            engine,
            galleries,
        })
    }

    /// The admission every search passes, whichever port it came by.
    pub fn admission(&self) -> &Arc<SearchAdmission> {
        &self.searcher.admission
    }

    pub fn gallery(&self, name: &str) -> Result<Arc<Gallery>, ServiceError> {
        Ok(self.galleries.get(name)?)
    }

    pub fn stats(&self, g: &Gallery) -> GalleryStats {
        gallery::stats(g, self.engine.provider().name())
    }

    /// Every gallery's statistics, in name order.
    pub fn list_stats(&self) -> Vec<GalleryStats> {
        self.galleries
            .list()
            .iter()
            .map(|g| self.stats(g))
            .collect()
    }

    /// Creates gallery `name` for the serving model.
    pub async fn create_gallery(&self, name: String) -> Result<Arc<Gallery>, ServiceError> {
        gallery::create(&self.engine, &self.galleries, name).await
    }

    /// Drops gallery `name`; returns how many items it held.
    pub async fn drop_gallery(&self, name: String) -> Result<u64, ServiceError> {
        gallery::drop(&self.galleries, name).await
    }

    pub async fn embed(&self, image: Vec<u8>) -> Result<Embedded, ServiceError> {
        let (values, t) = self.engine.embed(image).await?;
        Ok(Embedded {
            values,
            model_fingerprint: self.engine.fingerprint().to_string(),
            timings: timings(t.stages()),
        })
    }
}
