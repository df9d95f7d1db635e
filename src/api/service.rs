//! The `lookalike.v1.Retrieval` handlers: validate, call the engine and
//! the galleries, convert. Blocking work (store commits, searches) runs on
//! tokio's blocking pool.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, retrieval_server::Retrieval};
use crate::config::{Config, PostProcessingDefaults};
use crate::embed::Engine;
use crate::gallery::limits::MetadataLimits;
use crate::gallery::page as page_token;
use crate::gallery::{Galleries, Gallery, Metadata};
use crate::store::GalleryMeta;

use super::ingest;

pub struct RetrievalService {
    engine: Arc<Engine>,
    galleries: Arc<Galleries>,
    default_top_k: u32,
    max_top_k: u32,
    max_ef_search: u32,
    max_batch_queries: usize,
    metadata: MetadataLimits,
    pp: PostProcessingDefaults,
}

impl RetrievalService {
    pub fn new(engine: Arc<Engine>, galleries: Arc<Galleries>, cfg: &Config) -> Self {
        Self {
            engine,
            galleries,
            default_top_k: cfg.default_top_k,
            max_top_k: cfg.max_top_k,
            max_ef_search: cfg.index.max_ef_search,
            max_batch_queries: cfg.max_batch_queries,
            metadata: cfg.metadata,
            pp: cfg.post_processing.clone(),
        }
    }

    fn gallery(&self, name: &str) -> Result<Arc<Gallery>, Status> {
        Ok(self.galleries.get(name)?)
    }

    fn stats(&self, g: &Gallery) -> pb::GalleryStatsResponse {
        let s = g.stats();
        pb::GalleryStatsResponse {
            gallery: s.name,
            count: s.count as u64,
            dims: s.meta.dims,
            model_fingerprint: s.meta.model_fingerprint,
            execution_provider: self.engine.provider().name().to_string(),
            index: Some(pb::IndexState {
                points: s.index.points as u64,
                tombstones: s.tombstones as u64,
                rebuilding: s.index.rebuilding,
                generation: s.index.generation,
                stale_items: s.stale_items,
                post_processing_generation: s.post_generation,
                dba: s.dba,
                graph: s.index.built,
            }),
        }
    }
}

/// Image queries need the gallery to be of the serving model.
pub(super) fn check_model(engine: &Engine, g: &Gallery) -> Result<(), Status> {
    if g.meta().model_fingerprint != engine.fingerprint() {
        return Err(Status::failed_precondition(format!(
            "gallery {:?} was built with model {}, but the server runs model {}; \
             query it with descriptors of that model or re-index it",
            g.name(),
            g.meta().model_fingerprint,
            engine.fingerprint()
        )));
    }
    Ok(())
}

/// A client descriptor: fingerprint (if given) and dims must match.
pub(super) fn check_descriptor(g: &Gallery, d: &pb::Descriptor) -> Result<Vec<f32>, Status> {
    if !d.model_fingerprint.is_empty() && d.model_fingerprint != g.meta().model_fingerprint {
        return Err(Status::failed_precondition(format!(
            "descriptor is from model {}, gallery {:?} holds model {}",
            d.model_fingerprint,
            g.name(),
            g.meta().model_fingerprint
        )));
    }
    Ok(g.prepare(&d.values)?)
}

/// A request's `top_k`: 0 is the server default, above the cap is refused.
pub(super) fn top_k(k: u32, default: u32, max: u32) -> Result<usize, Status> {
    match k {
        0 => Ok(default as usize),
        k if k > max => Err(Status::invalid_argument(format!(
            "top_k {k} is over the limit of {max}"
        ))),
        k => Ok(k as usize),
    }
}

fn to_metadata(m: HashMap<String, String>) -> Metadata {
    m.into_iter().collect()
}

fn blocking_failed(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("worker task failed: {e}"))
}

#[tonic::async_trait]
impl Retrieval for RetrievalService {
    type AddToGalleryStream = Pin<Box<dyn Stream<Item = Result<pb::AddResponse, Status>> + Send>>;

    async fn add_to_gallery(
        &self,
        request: Request<Streaming<pb::AddItem>>,
    ) -> Result<Response<Self::AddToGalleryStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let ctx = ingest::Ingest {
            engine: self.engine.clone(),
            galleries: self.galleries.clone(),
            metadata: self.metadata,
        };
        tokio::spawn(ctx.run(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let req = request.into_inner();
        let g = self.gallery(&req.gallery)?;
        let k = top_k(req.top_k, self.default_top_k, self.max_top_k)?;
        let mut timings = Vec::new();
        let mut exclude = None;
        let query = match req.query {
            Some(pb::search_request::Query::Image(bytes)) => {
                check_model(&self.engine, &g)?;
                let (v, t) = self.engine.embed(bytes).await?;
                timings.push(pb::StageTiming {
                    stage: "decode".into(),
                    micros: t.decode.as_micros() as u64,
                });
                timings.push(pb::StageTiming {
                    stage: "embed".into(),
                    micros: t.infer.as_micros() as u64,
                });
                v
            }
            Some(pb::search_request::Query::Descriptor(d)) => check_descriptor(&g, &d)?,
            Some(pb::search_request::Query::ItemId(id)) => {
                let e = g.get(&id).ok_or_else(|| {
                    Status::not_found(format!("item {id:?} is not in gallery {:?}", g.name()))
                })?;
                exclude = Some(id);
                e.vector.to_vec()
            }
            None => {
                return Err(Status::invalid_argument(
                    "set one of image, descriptor or item_id as the query",
                ))
            }
        };
        let ef = match req.ef_search {
            0 => g.default_ef(),
            ef if ef > self.max_ef_search => {
                return Err(Status::invalid_argument(format!(
                    "ef_search {ef} is over the limit of {} (index.max_ef_search)",
                    self.max_ef_search
                )))
            }
            ef => ef as usize,
        };
        let limits = super::search::Limits {
            pp: &self.pp,
            max_top_k: self.max_top_k,
        };
        let plan = super::search::plan(req.post_processing, &limits, k, ef, req.exact)?;
        let filter = to_metadata(req.filter);
        let out = tokio::task::spawn_blocking(move || {
            crate::gallery::online::search(&g, &query, &plan, &filter, exclude.as_deref())
        })
        .await
        .map_err(blocking_failed)??;
        crate::telemetry::observe_stages(&out.timings);
        timings.extend(out.timings.into_iter().map(|(stage, d)| pb::StageTiming {
            stage: stage.to_string(),
            micros: d.as_micros() as u64,
        }));
        let hits = out
            .hits
            .into_iter()
            .map(|h| pb::Hit {
                id: h.id,
                distance: h.distance,
                metadata: h.metadata.into_iter().collect(),
            })
            .collect();
        let stages = out.stages.iter().map(|s| s.to_string()).collect();
        Ok(Response::new(pb::SearchResponse {
            hits,
            timings,
            stages,
        }))
    }

    type SearchBatchStream =
        Pin<Box<dyn Stream<Item = Result<pb::SearchBatchResponse, Status>> + Send>>;

    async fn search_batch(
        &self,
        request: Request<Streaming<pb::SearchBatchRequest>>,
    ) -> Result<Response<Self::SearchBatchStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let batch = super::batch::Batch {
            engine: self.engine.clone(),
            galleries: self.galleries.clone(),
            default_top_k: self.default_top_k,
            max_top_k: self.max_top_k,
            max_queries: self.max_batch_queries,
        };
        tokio::spawn(batch.run(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn remove_from_gallery(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let req = request.into_inner();
        let g = self.gallery(&req.gallery)?;
        let n = req.ids.len();
        let not_found = tokio::task::spawn_blocking(move || g.remove(&req.ids))
            .await
            .map_err(blocking_failed)??;
        Ok(Response::new(pb::RemoveResponse {
            removed: (n - not_found.len()) as u64,
            not_found,
        }))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        let req = request.into_inner();
        let g = self.gallery(&req.gallery)?;
        let e = g.get(&req.id).ok_or_else(|| {
            Status::not_found(format!(
                "item {:?} is not in gallery {:?}",
                req.id, req.gallery
            ))
        })?;
        let descriptor = req.include_descriptor.then(|| pb::Descriptor {
            values: e.vector.to_vec(),
            model_fingerprint: g.meta().model_fingerprint.clone(),
        });
        Ok(Response::new(pb::Item {
            id: req.id,
            metadata: e.metadata.into_iter().collect(),
            descriptor,
        }))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let req = request.into_inner();
        let g = self.gallery(&req.gallery)?;
        let size = match req.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(page_token::decode(t)?),
        };
        let (page, more) = g.list(after.as_deref(), size);
        let next_page_token = match page.last() {
            Some((id, _)) if more => page_token::encode(id),
            _ => String::new(),
        };
        let items = page
            .into_iter()
            .map(|(id, e)| pb::Item {
                id,
                metadata: e.metadata.into_iter().collect(),
                descriptor: None,
            })
            .collect();
        Ok(Response::new(pb::ListItemsResponse {
            items,
            next_page_token,
        }))
    }

    async fn gallery_stats(
        &self,
        request: Request<pb::GalleryStatsRequest>,
    ) -> Result<Response<pb::GalleryStatsResponse>, Status> {
        let g = self.gallery(&request.into_inner().gallery)?;
        Ok(Response::new(self.stats(&g)))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let (values, t) = self.engine.embed(request.into_inner().image).await?;
        Ok(Response::new(pb::EmbedResponse {
            descriptor: Some(pb::Descriptor {
                values,
                model_fingerprint: self.engine.fingerprint().to_string(),
            }),
            timings: vec![
                pb::StageTiming {
                    stage: "decode".into(),
                    micros: t.decode.as_micros() as u64,
                },
                pb::StageTiming {
                    stage: "embed".into(),
                    micros: t.infer.as_micros() as u64,
                },
            ],
        }))
    }

    async fn create_gallery(
        &self,
        request: Request<pb::CreateGalleryRequest>,
    ) -> Result<Response<pb::CreateGalleryResponse>, Status> {
        let name = request.into_inner().gallery;
        let meta = GalleryMeta {
            model_fingerprint: self.engine.fingerprint().to_string(),
            dims: self.engine.dims() as u32,
        };
        let galleries = self.galleries.clone();
        let g = tokio::task::spawn_blocking(move || galleries.create(&name, meta))
            .await
            .map_err(blocking_failed)??;
        Ok(Response::new(pb::CreateGalleryResponse {
            model_fingerprint: g.meta().model_fingerprint.clone(),
            dims: g.meta().dims,
        }))
    }

    async fn drop_gallery(
        &self,
        request: Request<pb::DropGalleryRequest>,
    ) -> Result<Response<pb::DropGalleryResponse>, Status> {
        let name = request.into_inner().gallery;
        let galleries = self.galleries.clone();
        let n = tokio::task::spawn_blocking(move || galleries.drop_gallery(&name))
            .await
            .map_err(blocking_failed)??;
        Ok(Response::new(pb::DropGalleryResponse { removed_items: n }))
    }

    async fn list_galleries(
        &self,
        _: Request<pb::ListGalleriesRequest>,
    ) -> Result<Response<pb::ListGalleriesResponse>, Status> {
        let galleries = self
            .galleries
            .list()
            .iter()
            .map(|g| self.stats(g))
            .collect();
        Ok(Response::new(pb::ListGalleriesResponse { galleries }))
    }
}
