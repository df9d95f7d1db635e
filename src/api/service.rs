//! The `lookalike.v1.Retrieval` handlers: convert, call the shared
//! [`Service`], convert back. Blocking work (store commits, searches) runs
//! on tokio's blocking pool inside the service.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, retrieval_server::Retrieval};
use super::{convert, ingest};
use crate::query::service::Service;
use crate::query::{checks, gallery};

pub struct RetrievalService {
    service: Arc<Service>,
}

impl RetrievalService {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl Retrieval for RetrievalService {
    type AddToGalleryStream = Pin<Box<dyn Stream<Item = Result<pb::AddResponse, Status>> + Send>>;

    async fn add_to_gallery(
        &self,
        request: Request<Streaming<pb::AddItem>>,
    ) -> Result<Response<Self::AddToGalleryStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(ingest::run(self.service.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let (gallery, min_sequence, query, opts) = convert::search_request(request.into_inner());
        let found = self
            .service
            .search(&gallery, min_sequence, query?, opts)
            .await?;
        Ok(Response::new(convert::found(found)))
    }

    type SearchBatchStream =
        Pin<Box<dyn Stream<Item = Result<pb::SearchBatchResponse, Status>> + Send>>;

    async fn search_batch(
        &self,
        request: Request<Streaming<pb::SearchBatchRequest>>,
    ) -> Result<Response<Self::SearchBatchStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(super::batch::run(
            self.service.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn remove_from_gallery(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let pb::RemoveRequest { gallery, ids } = request.into_inner();
        let g = self.service.gallery(&gallery)?;
        let n = ids.len();
        let (not_found, sequence) = self.service.remove(g, ids).await?;
        Ok(Response::new(pb::RemoveResponse {
            removed: (n - not_found.len()) as u64,
            not_found,
            sequence,
        }))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        let pb::GetItemRequest {
            gallery,
            id,
            include_descriptor,
            min_sequence,
        } = request.into_inner();
        let g = self.service.gallery_at(&gallery, min_sequence).await?;
        let e = checks::item(&g, &id)?;
        let descriptor = include_descriptor.then(|| pb::Descriptor {
            values: e.vector.to_vec(),
            model_fingerprint: g.meta().model_fingerprint.clone(),
        });
        Ok(Response::new(pb::Item {
            id,
            metadata: e.metadata.into_iter().collect(),
            descriptor,
        }))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let pb::ListItemsRequest {
            gallery,
            page_size,
            page_token,
            min_sequence,
        } = request.into_inner();
        let g = self.service.gallery_at(&gallery, min_sequence).await?;
        let (page, next_page_token) = gallery::page(&g, page_size, &page_token)?;
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
        let pb::GalleryStatsRequest {
            gallery,
            min_sequence,
        } = request.into_inner();
        let g = self.service.gallery_at(&gallery, min_sequence).await?;
        Ok(Response::new(convert::stats(self.service.stats(&g))))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let pb::EmbedRequest { image } = request.into_inner();
        Ok(Response::new(convert::embedded(
            self.service.embed(image).await?,
        )))
    }

    async fn create_gallery(
        &self,
        request: Request<pb::CreateGalleryRequest>,
    ) -> Result<Response<pb::CreateGalleryResponse>, Status> {
        let pb::CreateGalleryRequest { gallery } = request.into_inner();
        let g = self.service.create_gallery(gallery).await?;
        Ok(Response::new(pb::CreateGalleryResponse {
            model_fingerprint: g.meta().model_fingerprint.clone(),
            dims: g.meta().dims,
        }))
    }

    async fn drop_gallery(
        &self,
        request: Request<pb::DropGalleryRequest>,
    ) -> Result<Response<pb::DropGalleryResponse>, Status> {
        let pb::DropGalleryRequest { gallery } = request.into_inner();
        let removed_items = self.service.drop_gallery(gallery).await?;
        Ok(Response::new(pb::DropGalleryResponse { removed_items }))
    }

    async fn list_galleries(
        &self,
        _: Request<pb::ListGalleriesRequest>,
    ) -> Result<Response<pb::ListGalleriesResponse>, Status> {
        let galleries = self
            .service
            .list_stats()
            .into_iter()
            .map(convert::stats)
            .collect();
        Ok(Response::new(pb::ListGalleriesResponse { galleries }))
    }
}
