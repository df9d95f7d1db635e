//! Every RPC's request message decoded from arbitrary bytes (as tonic
//! does), then the server's transport-free checks on what decoded: page
//! tokens, metadata bounds, top_k, and the post-processing plan.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use lookalike::api::pb;
use lookalike::config::PostProcessingDefaults;
use lookalike::gallery::limits::MetadataLimits;
use lookalike::query::{checks, plan};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let pp = PostProcessingDefaults::default();
    let limits = plan::Limits {
        pp: &pp,
        max_top_k: 1000,
    };
    match which % 6 {
        0 => {
            if let Ok(r) = pb::SearchRequest::decode(body) {
                if let Ok(k) = checks::top_k(r.top_k, 10, 1000) {
                    let post = lookalike::api::convert::post(r.post_processing);
                    let _ = plan::plan(post, &limits, k, r.ef_search as usize, r.exact);
                }
                let _ = lookalike::api::convert::query(r.query);
            }
        }
        1 => {
            if let Ok(item) = pb::AddItem::decode(body) {
                let meta: BTreeMap<String, String> = item.metadata.into_iter().collect();
                let _ = MetadataLimits::default().check(meta.iter());
            }
        }
        2 => {
            if let Ok(r) = pb::ListItemsRequest::decode(body) {
                let _ = lookalike::gallery::page::decode(&r.page_token);
            }
        }
        3 => {
            let _ = pb::SearchBatchRequest::decode(body);
        }
        4 => {
            let _ = pb::RemoveRequest::decode(body);
            let _ = pb::GetItemRequest::decode(body);
        }
        _ => {
            let _ = pb::CreateGalleryRequest::decode(body);
            let _ = pb::EmbedRequest::decode(body);
        }
    }
});
