//! `SearchBatch`: many queries post-processed together, exactly as
//! `lookalike eval` does in batch (`rerank::pipeline`), against a
//! gallery's live items. The whole call is one computation: a query that
//! cannot be resolved fails the call, naming the query.

use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array2, ArrayView1};

use super::admission::SearchAdmission;
use super::checks::top_k;
use super::search::{resolve, Query};
use super::timing::{timings, Timing};
use super::ServiceError;
use crate::embed::Engine;
use crate::gallery::{Gallery, Hit};
use crate::rerank::pipeline::{parse_stages, Pipeline, StageOutput};

/// Queries embedded concurrently, so the batcher can batch them.
const EMBED_CHUNK: usize = 32;

/// A call's options.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// 0: the server default.
    pub top_k: u32,
    /// `lookalike eval --stages` syntax; empty: plain Euclidean ranking.
    pub stages: String,
    /// The DIGIX 2020 batch order instead of `stages`.
    pub digix: bool,
    pub dba_renormalise: bool,
}

/// One query of a call.
#[derive(Debug)]
pub struct BatchQuery {
    /// The caller's name for it, echoed in its result.
    pub id: String,
    /// The query, or why the request did not hold one.
    pub query: Result<Query, ServiceError>,
}

#[derive(Debug)]
pub struct BatchResult {
    pub id: String,
    /// Position of the query in the call (0-based).
    pub index: u64,
    pub hits: Vec<Hit>,
}

#[derive(Debug)]
pub struct BatchSummary {
    pub queries: u64,
    pub gallery_items: u64,
    pub timings: Vec<Timing>,
    /// The stage list that ran, as `lookalike eval` prints it.
    pub stages: Vec<String>,
}

/// The server's SearchBatch limits, and the search admission it shares.
pub struct BatchSearcher {
    pub engine: Arc<Engine>,
    pub default_top_k: u32,
    pub max_top_k: u32,
    /// Queries per call at most (`max_batch_queries`).
    pub max_queries: usize,
    pub admission: Arc<SearchAdmission>,
}

impl BatchSearcher {
    /// Refuses a call that would hold more than `max_queries` queries;
    /// transports check as the queries arrive, before holding them all.
    pub fn check_count(&self, queries: usize) -> Result<(), ServiceError> {
        if queries > self.max_queries {
            return Err(ServiceError::Invalid(format!(
                "SearchBatch takes at most {} queries per call (max_batch_queries); split the call",
                self.max_queries
            )));
        }
        Ok(())
    }

    /// Answers the call: one result per query, in order, then the summary.
    pub async fn run(
        &self,
        g: Arc<Gallery>,
        options: BatchOptions,
        queries: Vec<BatchQuery>,
    ) -> Result<(Vec<BatchResult>, BatchSummary), ServiceError> {
        if queries.is_empty() {
            return Err(ServiceError::Invalid(
                "SearchBatch needs at least one query".into(),
            ));
        }
        self.check_count(queries.len())?;
        let top_k = top_k(options.top_k, self.default_top_k, self.max_top_k)?;
        let pipeline = if options.digix {
            Pipeline::digix().with_top_n(top_k)
        } else {
            parse_stages(&options.stages)
                .and_then(|stages| Pipeline::new(stages, top_k, options.dba_renormalise))
                .map_err(ServiceError::Stages)?
        };
        let t = Instant::now();
        let (ids, rows) = self.resolve(&g, queries).await?;
        let mut spent = vec![("resolve_queries", t.elapsed())];
        let name = g.name().to_string();
        let (items, outputs, more) = self
            .admission
            .run(move || {
                let t = Instant::now();
                let span = tracing::debug_span!("stage", stage = "gallery_snapshot").entered();
                let (items, _) = g.list(None, usize::MAX);
                let mut gm = Array2::<f32>::zeros((items.len(), g.dims()));
                for (mut row, (_, e)) in gm.rows_mut().into_iter().zip(&items) {
                    row.assign(&ArrayView1::from(&e.vector[..]));
                }
                let snap = t.elapsed();
                drop(span);
                let t = Instant::now();
                let _span = tracing::debug_span!("stage", stage = "batch_pipeline").entered();
                let out = pipeline.run(rows.view(), gm.view());
                (items, out, [snap, t.elapsed()])
            })
            .await?;
        spent.push(("gallery_snapshot", more[0]));
        spent.push(("post_processing", more[1]));
        crate::telemetry::observe_stages(&spent);
        let outputs = outputs.map_err(|e| match e {
            crate::rerank::RerankError::Empty { .. } => {
                ServiceError::Precondition(format!("gallery {name:?} is empty"))
            }
            e => ServiceError::Pipeline(e),
        })?;
        let last = outputs
            .last()
            .ok_or_else(|| ServiceError::Internal("no ranking".into()))?;
        let results = ids
            .into_iter()
            .enumerate()
            .map(|(qi, id)| BatchResult {
                id,
                index: qi as u64,
                hits: last.ranking[qi]
                    .iter()
                    .zip(&last.distances[qi])
                    .take(top_k)
                    .map(|(&gi, &d)| {
                        let (id, e) = &items[gi];
                        Hit {
                            id: id.clone(),
                            seq: e.seq,
                            distance: d as f32,
                            metadata: e.metadata.clone(),
                        }
                    })
                    .collect(),
            })
            .collect::<Vec<_>>();
        let summary = BatchSummary {
            queries: results.len() as u64,
            gallery_items: items.len() as u64,
            timings: timings(spent),
            stages: stage_names(&outputs),
        };
        Ok((results, summary))
    }

    /// Each query as a unit descriptor of the gallery's model, with the
    /// callers' ids.
    async fn resolve(
        &self,
        g: &Gallery,
        queries: Vec<BatchQuery>,
    ) -> Result<(Vec<String>, Array2<f32>), ServiceError> {
        let name = |qi: usize, id: &str| {
            if id.is_empty() {
                format!("query {qi}")
            } else {
                format!("query {qi} ({id:?})")
            }
        };
        let mut rows = Array2::<f32>::zeros((queries.len(), g.dims()));
        let mut ids = Vec::with_capacity(queries.len());
        let mut queries = queries.into_iter().peekable();
        while queries.peek().is_some() {
            let chunk: Vec<BatchQuery> = queries.by_ref().take(EMBED_CHUNK).collect();
            let first = ids.len();
            ids.extend(chunk.iter().map(|q| q.id.clone()));
            let jobs = chunk.into_iter().map(|q| async move {
                Ok::<_, ServiceError>(resolve(&self.engine, g, q.query?).await?.0)
            });
            for (i, v) in futures::future::join_all(jobs)
                .await
                .into_iter()
                .enumerate()
            {
                let qi = first + i;
                let v = v.map_err(|e| ServiceError::InQuery {
                    query: name(qi, &ids[qi]),
                    source: Box::new(e),
                })?;
                rows.row_mut(qi).assign(&ArrayView1::from(&v[..]));
            }
        }
        Ok((ids, rows))
    }
}

fn stage_names(outputs: &[StageOutput]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| o.stage.map(|s| s.to_string()))
        .collect()
}
