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
use crate::config::Config;
use crate::embed::Engine;
use crate::gallery::{Galleries, Gallery, Metadata};
use crate::query::item::Preparer;
use crate::query::search::{Options, Searcher};
use crate::query::{checks, gallery};

use super::{convert, ingest};

pub struct RetrievalService {
    engine: Arc<Engine>,
    galleries: Arc<Galleries>,
    searcher: Searcher,
    max_batch_queries: usize,
    preparer: Preparer,
}

impl RetrievalService {
    pub fn new(engine: Arc<Engine>, galleries: Arc<Galleries>, cfg: &Config) -> Self {
        Self {
            searcher: Searcher::new(engine.clone(), cfg),
            engine: engine.clone(),
            galleries,
            max_batch_queries: cfg.max_batch_queries,
            preparer: Preparer {
                engine: engine.clone(),
                metadata: cfg.metadata,
                thumbnails: cfg.thumbnails.clone(),
            },
        }
    }

    fn gallery(&self, name: &str) -> Result<Arc<Gallery>, Status> {
        Ok(self.galleries.get(name)?)
    }

    fn stats(&self, g: &Gallery) -> pb::GalleryStatsResponse {
        let s = g.stats();
        let cal = s.index.calibration;
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
                projection_components: s.projection_components as u32,
                default_ef: g.default_ef() as u32,
                calibrated_recall: cal.map_or(0.0, |c| c.recall),
                calibration_sample: cal.map_or(0, |c| c.sample as u32),
                target_recall_reached: cal.is_some_and(|c| c.reached),
                build_seconds: cal.map_or(0.0, |c| c.build_seconds),
            }),
        }
    }
}

fn to_metadata(m: HashMap<String, String>) -> Metadata {
    m.into_iter().collect()
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
            preparer: self.preparer.clone(),
            galleries: self.galleries.clone(),
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
        let opts = Options {
            top_k: req.top_k,
            ef_search: req.ef_search,
            exact: req.exact,
            filter: to_metadata(req.filter),
            post: convert::post(req.post_processing),
        };
        let found = self
            .searcher
            .search(g, convert::query(req.query)?, opts)
            .await?;
        let hits = found
            .hits
            .into_iter()
            .map(|h| pb::Hit {
                id: h.id,
                distance: h.distance,
                metadata: h.metadata.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::SearchResponse {
            hits,
            timings: convert::timings(found.timings),
            stages: found.stages,
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
            default_top_k: self.searcher.default_top_k,
            max_top_k: self.searcher.max_top_k,
            max_queries: self.max_batch_queries,
            admission: self.searcher.admission.clone(),
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
        let not_found = gallery::remove(g, req.ids).await?;
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
        let e = checks::item(&g, &req.id)?;
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
        let (page, next_page_token) = gallery::page(&g, req.page_size, &req.page_token)?;
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
            timings: convert::timings(vec![("decode".into(), t.decode), ("embed".into(), t.infer)]),
        }))
    }

    async fn create_gallery(
        &self,
        request: Request<pb::CreateGalleryRequest>,
    ) -> Result<Response<pb::CreateGalleryResponse>, Status> {
        let name = request.into_inner().gallery;
        let g = gallery::create(&self.engine, &self.galleries, name).await?;
        Ok(Response::new(pb::CreateGalleryResponse {
            model_fingerprint: g.meta().model_fingerprint.clone(),
            dims: g.meta().dims,
        }))
    }

    async fn drop_gallery(
        &self,
        request: Request<pb::DropGalleryRequest>,
    ) -> Result<Response<pb::DropGalleryResponse>, Status> {
        let n = gallery::drop(&self.galleries, request.into_inner().gallery).await?;
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
