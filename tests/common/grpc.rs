//! gRPC request helpers shared by the reliability tests.
#![allow(dead_code)]

use std::collections::HashMap;

use lookalike::api::pb::{self, add_item::Content, add_response::Kind};
use tonic::transport::Channel;

pub type Client = pb::retrieval_client::RetrievalClient<Channel>;

/// A unit vector from `seed` (xorshift: deterministic, no dependency).
pub fn unit_vector(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

pub fn descriptor_item(gallery: &str, id: &str, values: Vec<f32>) -> pb::AddItem {
    pb::AddItem {
        gallery: gallery.into(),
        id: id.into(),
        content: Some(Content::Descriptor(pb::Descriptor {
            values,
            model_fingerprint: String::new(),
        })),
        metadata: HashMap::new(),
    }
}

pub fn image_item(gallery: &str, id: &str, bytes: Vec<u8>) -> pb::AddItem {
    pb::AddItem {
        gallery: gallery.into(),
        id: id.into(),
        content: Some(Content::Image(bytes)),
        metadata: HashMap::new(),
    }
}

/// Creates `name`; returns the dimension of its descriptors.
pub async fn create_gallery(client: &mut Client, name: &str) -> usize {
    let r = client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: name.into(),
        })
        .await
        .unwrap();
    r.into_inner().dims as usize
}

/// Sends `items` on one stream: the outcomes received before the stream
/// ended or failed, and how it ended (the summary, or the status).
pub async fn add_stream(
    client: &mut Client,
    items: Vec<pb::AddItem>,
) -> (Vec<pb::ItemOutcome>, Result<pb::AddSummary, tonic::Status>) {
    let mut stream = match client.add_to_gallery(tokio_stream::iter(items)).await {
        Ok(s) => s.into_inner(),
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut outcomes = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(r)) => match r.kind {
                Some(Kind::Outcome(o)) => outcomes.push(o),
                Some(Kind::Summary(s)) => return (outcomes, Ok(s)),
                None => {}
            },
            Ok(None) => {
                let e = tonic::Status::internal("stream ended without a summary");
                return (outcomes, Err(e));
            }
            Err(e) => return (outcomes, Err(e)),
        }
    }
}

pub async fn stats(client: &mut Client, gallery: &str) -> pb::GalleryStatsResponse {
    client
        .gallery_stats(pb::GalleryStatsRequest {
            gallery: gallery.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The `top_k` hits of a plain search by descriptor.
pub async fn search_descriptor(
    client: &mut Client,
    gallery: &str,
    values: Vec<f32>,
    top_k: u32,
) -> Vec<pb::Hit> {
    client
        .search(pb::SearchRequest {
            gallery: gallery.into(),
            query: Some(pb::search_request::Query::Descriptor(pb::Descriptor {
                values,
                model_fingerprint: String::new(),
            })),
            top_k,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits
}

/// Every id ListItems returns, page by page.
pub async fn list_all(client: &mut Client, gallery: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_items(pb::ListItemsRequest {
                gallery: gallery.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.items.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
}

/// Waits until the gallery's post-processing state reflects every write.
pub async fn wait_refreshed(client: &mut Client, gallery: &str) -> pb::IndexState {
    let t = std::time::Instant::now();
    loop {
        let index = stats(client, gallery).await.index.unwrap();
        if index.stale_items == 0 && index.post_processing_generation > 0 {
            return index;
        }
        assert!(
            t.elapsed().as_secs() < 60,
            "refresh never finished: {index:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The options that turn query expansion and k-reciprocal off.
pub fn plain() -> Option<pb::PostProcessing> {
    Some(pb::PostProcessing {
        shortlist: None,
        query_expansion: Some(pb::QueryExpansion {
            enabled: false,
            ..Default::default()
        }),
        k_reciprocal: Some(pb::KReciprocal {
            enabled: false,
            ..Default::default()
        }),
    })
}
