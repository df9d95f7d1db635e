//! The service object: everything a request needs, built once per server
//! and handed to every port (gRPC, HTTP/JSON, admin). Limits that span the
//! ports live here once: one search admission for Search, SearchBatch and
//! HTTP search alike, whichever port a search came by.

use std::sync::Arc;

use super::admission::SearchAdmission;
use super::batch::BatchSearcher;
use super::gallery::{self, GalleryStats, ReplicationState};
use super::item::Preparer;
use super::search::{Found, Options, Query, Searcher};
use super::timing::{timings, Timing};
use super::ServiceError;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::embed::Engine;
use crate::gallery::{Galleries, Gallery};

pub struct Service {
    pub engine: Arc<Engine>,
    pub galleries: Arc<Galleries>,
    pub searcher: Searcher,
    pub batch: BatchSearcher,
    pub preparer: Preparer,
    /// The replication this replica takes part in (None: a single node).
    pub cluster: Option<Arc<Cluster>>,
}

/// An image's descriptor from the serving model.
pub struct Embedded {
    pub values: Vec<f32>,
    pub model_fingerprint: String,
    pub timings: Vec<Timing>,
}

impl Service {
    pub fn new(
        engine: Arc<Engine>,
        galleries: Arc<Galleries>,
        cluster: Option<Arc<Cluster>>,
        cfg: &Config,
    ) -> Arc<Self> {
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
            cluster,
        })
    }

    /// The admission every search passes, whichever port it came by.
    pub fn admission(&self) -> &Arc<SearchAdmission> {
        &self.searcher.admission
    }

    pub fn gallery(&self, name: &str) -> Result<Arc<Gallery>, ServiceError> {
        match &self.cluster {
            Some(c) => Ok(c.gallery(name)?),
            None => Ok(self.galleries.get(name)?),
        }
    }

    /// Gallery `name` once this replica has applied `min_sequence` of its
    /// stream (read-your-writes across replicas; 0, or a single node: at
    /// once). UNAVAILABLE, with the lag, when it does not in time.
    pub async fn gallery_at(
        &self,
        name: &str,
        min_sequence: u64,
    ) -> Result<Arc<Gallery>, ServiceError> {
        if let Some(c) = &self.cluster {
            c.wait_for(name, min_sequence).await?;
        }
        self.gallery(name)
    }

    /// Searches gallery `name` once it has `min_sequence` applied; an
    /// answer from a replica cut off from the cluster says so.
    pub async fn search(
        &self,
        name: &str,
        min_sequence: u64,
        query: Query,
        opts: Options,
    ) -> Result<Found, ServiceError> {
        let g = self.gallery_at(name, min_sequence).await?;
        let mut found = self.searcher.search(g, query, opts).await?;
        found.degraded.extend(self.staleness());
        Ok(found)
    }

    /// Why this replica's answers may be stale (None: they are current).
    pub fn staleness(&self) -> Option<String> {
        self.cluster.as_ref().and_then(|c| c.staleness())
    }

    pub fn stats(&self, g: &Gallery) -> GalleryStats {
        let mut s = gallery::stats(g, self.engine.provider().name());
        s.replication = self.cluster.as_ref().map(|c| {
            let track = c.progress().get(g.name());
            ReplicationState {
                applied_sequence: track.as_ref().map_or(0, |t| t.applied()),
                lag: track.as_ref().map_or(0, |t| t.lag()),
                caught_up: track.as_ref().is_some_and(|t| t.caught_up()),
                connected: c.disconnected_for().is_none(),
            }
        });
        s
    }

    /// Every gallery's statistics, in name order.
    pub fn list_stats(&self) -> Vec<GalleryStats> {
        self.galleries
            .list()
            .iter()
            .map(|g| self.stats(g))
            .collect()
    }

    /// Creates gallery `name` for the serving model (on every replica).
    pub async fn create_gallery(&self, name: String) -> Result<Arc<Gallery>, ServiceError> {
        match &self.cluster {
            Some(c) => Ok(c.create_gallery(&name).await?),
            None => gallery::create(&self.engine, &self.galleries, name).await,
        }
    }

    /// Drops gallery `name` (on every replica); returns how many items it
    /// held.
    pub async fn drop_gallery(&self, name: String) -> Result<u64, ServiceError> {
        match &self.cluster {
            Some(c) => Ok(c.drop_gallery(&name).await?),
            None => gallery::drop(&self.galleries, name).await,
        }
    }

    /// Removes `ids` from `g`; returns those that were not there, and the
    /// write's stream sequence (0 on a single node).
    pub async fn remove(
        &self,
        g: Arc<Gallery>,
        ids: Vec<String>,
    ) -> Result<(Vec<String>, u64), ServiceError> {
        match &self.cluster {
            Some(c) => Ok(c.remove(g.name(), ids).await?),
            None => Ok((gallery::remove(g, ids).await?, 0)),
        }
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
