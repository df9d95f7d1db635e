//! One search request, transport-free: resolve the query to a unit vector
//! (embed an image, check a descriptor, or look up a stored item), plan
//! the post-processing, and run it off the executor.

use std::sync::Arc;
use std::time::Duration;

use super::admission::SearchAdmission;
use super::checks::{self, Descriptor};
use super::plan::{self, PostOptions};
use super::timing::{timings, Timing};
use super::ServiceError;
use crate::config::{Config, PostProcessingDefaults};
use crate::embed::Engine;
use crate::gallery::{Gallery, Hit, Metadata};

/// The refusal of a request that names no query, or more than one.
pub const NO_QUERY: &str = "set one of image, descriptor or item_id as the query";

/// What to search with.
#[derive(Debug, Clone)]
pub enum Query {
    Image(Vec<u8>),
    Descriptor(Descriptor),
    /// A stored item; it is left out of its own results.
    ItemId(String),
}

/// A request's options; zeros take the server defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub top_k: u32,
    pub ef_search: u32,
    pub exact: bool,
    pub filter: Metadata,
    pub post: PostOptions,
}

#[derive(Debug)]
pub struct Found {
    pub hits: Vec<Hit>,
    /// Every stage that took time, decode and embed first for images.
    pub timings: Vec<Timing>,
    /// The stages that shaped the ranking, in order.
    pub stages: Vec<String>,
    /// Stages the request asked for that did not run, each with why.
    pub degraded: Vec<String>,
}

/// The server's search limits and defaults.
#[derive(Clone)]
pub struct Searcher {
    pub engine: Arc<Engine>,
    pub default_top_k: u32,
    pub max_top_k: u32,
    pub max_ef_search: u32,
    pub pp: PostProcessingDefaults,
    /// The server's one admission, shared with SearchBatch, whichever
    /// port a search came by (`Service::new` hands the same to both).
    pub admission: Arc<SearchAdmission>,
}

impl Searcher {
    pub fn new(engine: Arc<Engine>, cfg: &Config, admission: Arc<SearchAdmission>) -> Self {
        Self {
            engine,
            default_top_k: cfg.default_top_k,
            max_top_k: cfg.max_top_k,
            max_ef_search: cfg.index.max_ef_search,
            pp: cfg.post_processing.clone(),
            admission,
        }
    }

    pub async fn search(
        &self,
        g: Arc<Gallery>,
        query: Query,
        opts: Options,
    ) -> Result<Found, ServiceError> {
        let k = checks::top_k(opts.top_k, self.default_top_k, self.max_top_k)?;
        let ef = checks::ef_search(opts.ef_search, &g, self.max_ef_search)?;
        let limits = plan::Limits {
            pp: &self.pp,
            max_top_k: self.max_top_k,
        };
        let plan = plan::plan(opts.post, &limits, k, ef, opts.exact)?;
        let (q, exclude, embedded) = resolve(&self.engine, &g, query).await?;
        let filter = opts.filter;
        let out = self
            .admission
            .run(move || super::online::search(&g, &q, &plan, &filter, exclude.as_deref()))
            .await??;
        crate::telemetry::observe_stages(&out.timings);
        Ok(Found {
            hits: out.hits,
            timings: timings(embedded.into_iter().chain(out.timings)),
            stages: out.stages.iter().map(|s| s.to_string()).collect(),
            degraded: out.degraded,
        })
    }
}

/// What a query resolved to: the unit vector, the item to leave out of
/// the results (a search by item id), and the time embedding took.
pub type Resolved = (Vec<f32>, Option<String>, Vec<(&'static str, Duration)>);

/// Resolves `query` against `g`: embeds an image (gallery of the serving
/// model), checks a descriptor, or looks up a stored item.
pub async fn resolve(engine: &Engine, g: &Gallery, query: Query) -> Result<Resolved, ServiceError> {
    Ok(match query {
        Query::Image(bytes) => {
            checks::check_model(engine, g)?;
            let (v, t) = engine.embed(bytes).await?;
            (v, None, t.stages().to_vec())
        }
        Query::Descriptor(d) => (checks::check_descriptor(g, &d)?, None, Vec::new()),
        Query::ItemId(id) => {
            let e = checks::item(g, &id)?;
            (e.vector.to_vec(), Some(id), Vec::new())
        }
    })
}
