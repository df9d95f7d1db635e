//! `SearchBatch`: many queries post-processed together, exactly as
//! `lookalike eval` does in batch (`rerank::pipeline`), against a
//! gallery's live items. The whole call is one computation: a query that
//! cannot be resolved fails the call, naming the query.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ndarray::{Array2, ArrayView1};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert;
use super::pb::{self, search_batch_response::Kind};
use crate::embed::Engine;
use crate::gallery::{Galleries, Gallery};
use crate::query::admission::SearchAdmission;
use crate::query::{checks::top_k, search::resolve, ServiceError};
use crate::rerank::pipeline::{parse_stages, Pipeline};

/// Queries embedded concurrently, so the batcher can batch them.
const EMBED_CHUNK: usize = 32;

pub(super) struct Batch {
    pub engine: Arc<Engine>,
    pub galleries: Arc<Galleries>,
    pub default_top_k: u32,
    pub max_top_k: u32,
    pub max_queries: usize,
    pub admission: Arc<SearchAdmission>,
}

type Tx = mpsc::Sender<Result<pb::SearchBatchResponse, Status>>;

struct Call {
    gallery: Arc<Gallery>,
    options: pb::BatchOptions,
    queries: Vec<pb::BatchQuery>,
}

impl Batch {
    pub async fn run(self, stream: Streaming<pb::SearchBatchRequest>, tx: Tx) {
        match self.answer(stream).await {
            Ok(responses) => {
                for r in responses {
                    if tx.send(Ok(r)).await.is_err() {
                        return; // the client went away
                    }
                }
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
            }
        }
    }

    async fn answer(
        &self,
        stream: Streaming<pb::SearchBatchRequest>,
    ) -> Result<Vec<pb::SearchBatchResponse>, Status> {
        let call = self.read(stream).await?;
        let top_k = top_k(call.options.top_k, self.default_top_k, self.max_top_k)?;
        let pipeline = if call.options.digix {
            Pipeline::digix().with_top_n(top_k)
        } else {
            let invalid = |e: crate::rerank::RerankError| {
                Status::from(ServiceError::Invalid(format!("options.stages: {e}")))
            };
            let stages = parse_stages(&call.options.stages).map_err(invalid)?;
            Pipeline::new(stages, top_k, call.options.dba_renormalise).map_err(invalid)?
        };
        let t = Instant::now();
        let queries = self.resolve(&call.gallery, &call.queries).await?;
        let mut timings = vec![("resolve_queries", t.elapsed())];
        let g = call.gallery.clone();
        let (ids, metas, outputs, more) = self
            .admission
            .run(move || {
                let t = Instant::now();
                let span = tracing::debug_span!("stage", stage = "gallery_snapshot").entered();
                let (items, _) = g.list(None, usize::MAX);
                let dims = g.dims();
                let mut gm = Array2::<f32>::zeros((items.len(), dims));
                for (mut row, (_, e)) in gm.rows_mut().into_iter().zip(&items) {
                    row.assign(&ArrayView1::from(&e.vector[..]));
                }
                let snap = t.elapsed();
                drop(span);
                let t = Instant::now();
                let _span = tracing::debug_span!("stage", stage = "batch_pipeline").entered();
                let out = pipeline.run(queries.view(), gm.view());
                let (ids, metas): (Vec<String>, Vec<_>) =
                    items.into_iter().map(|(id, e)| (id, e.metadata)).unzip();
                (ids, metas, out, [snap, t.elapsed()])
            })
            .await
            .map_err(Status::from)?;
        timings.push(("gallery_snapshot", more[0]));
        timings.push(("post_processing", more[1]));
        crate::telemetry::observe_stages(&timings);
        let outputs = outputs.map_err(|e| match e {
            crate::rerank::RerankError::Empty { .. } => {
                ServiceError::Precondition(format!("gallery {:?} is empty", call.gallery.name()))
            }
            e => ServiceError::Invalid(e.to_string()),
        })?;
        let last = outputs
            .last()
            .ok_or_else(|| ServiceError::Internal("no ranking".into()))?;
        let mut out: Vec<pb::SearchBatchResponse> = call
            .queries
            .iter()
            .enumerate()
            .map(|(qi, q)| {
                let hits = last.ranking[qi]
                    .iter()
                    .zip(&last.distances[qi])
                    .take(top_k)
                    .map(|(&gi, &d)| pb::Hit {
                        id: ids[gi].clone(),
                        distance: d as f32,
                        metadata: metas[gi].clone().into_iter().collect(),
                    })
                    .collect();
                pb::SearchBatchResponse {
                    kind: Some(Kind::Result(pb::BatchResult {
                        id: q.id.clone(),
                        index: qi as u64,
                        hits,
                    })),
                }
            })
            .collect();
        out.push(pb::SearchBatchResponse {
            kind: Some(Kind::Summary(pb::BatchSummary {
                queries: call.queries.len() as u64,
                gallery_items: ids.len() as u64,
                timings: timings
                    .into_iter()
                    .map(|(stage, d): (&str, Duration)| pb::StageTiming {
                        stage: stage.into(),
                        micros: d.as_micros() as u64,
                    })
                    .collect(),
                stages: pipeline_names(&outputs),
            })),
        });
        Ok(out)
    }

    /// Collects the call: gallery and options from the first message,
    /// queries from all, at most `max_queries`.
    async fn read(&self, mut stream: Streaming<pb::SearchBatchRequest>) -> Result<Call, Status> {
        let mut call: Option<Call> = None;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(super::status::request_error)?;
            let c = match &mut call {
                Some(c) => c,
                None => call.insert(Call {
                    gallery: self.galleries.get(&msg.gallery)?,
                    options: msg.options.unwrap_or_default(),
                    queries: Vec::new(),
                }),
            };
            if c.queries.len() + msg.queries.len() > self.max_queries {
                return Err(ServiceError::Invalid(format!(
                    "SearchBatch takes at most {} queries per call (max_batch_queries); split the call",
                    self.max_queries
                ))
                .into());
            }
            c.queries.extend(msg.queries);
        }
        let invalid = |why: &str| Status::from(ServiceError::Invalid(why.into()));
        let call = call.ok_or_else(|| invalid("the stream held no request"))?;
        if call.queries.is_empty() {
            return Err(invalid("SearchBatch needs at least one query"));
        }
        Ok(call)
    }

    /// Each query as a unit descriptor of the gallery's model.
    async fn resolve(
        &self,
        g: &Gallery,
        queries: &[pb::BatchQuery],
    ) -> Result<Array2<f32>, Status> {
        let name = |qi: usize, q: &pb::BatchQuery| {
            if q.id.is_empty() {
                format!("query {qi}")
            } else {
                format!("query {qi} ({:?})", q.id)
            }
        };
        let mut rows = Array2::<f32>::zeros((queries.len(), g.dims()));
        for (c, chunk) in queries.chunks(EMBED_CHUNK).enumerate() {
            let jobs = chunk.iter().map(|q| async move {
                let query = convert::batch_query(q.query.clone())?;
                Ok::<_, ServiceError>(resolve(&self.engine, g, query).await?.0)
            });
            for (i, v) in futures::future::join_all(jobs)
                .await
                .into_iter()
                .enumerate()
            {
                let qi = c * EMBED_CHUNK + i;
                let v = v.map_err(|e| ServiceError::InQuery {
                    query: name(qi, &queries[qi]),
                    source: Box::new(e),
                })?;
                rows.row_mut(qi).assign(&ArrayView1::from(&v[..]));
            }
        }
        Ok(rows)
    }
}

/// The stage list that ran, as `lookalike eval` prints it.
fn pipeline_names(outputs: &[crate::rerank::pipeline::StageOutput]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| o.stage.map(|s| s.to_string()))
        .collect()
}
