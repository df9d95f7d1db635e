//! End-to-end: the real server process, the real default model, real
//! grocery photos, over gRPC on loopback.

mod common;

use std::collections::HashMap;

use common::grpc::{
    create_gallery, descriptor_item, image_item, search_descriptor, unit_vector, wait_refreshed,
};
use common::{read_image, split, subset, Server};
use lookalike::api::pb::{
    self, add_item::Content, add_response::Kind, item_outcome::Status as Outcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn add_all(
    client: &mut pb::retrieval_client::RetrievalClient<tonic::transport::Channel>,
    items: Vec<pb::AddItem>,
) -> (Vec<pb::ItemOutcome>, pb::AddSummary) {
    let mut stream = client
        .add_to_gallery(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    let (mut outcomes, mut summary) = (Vec::new(), None);
    while let Some(r) = stream.message().await.unwrap() {
        match r.kind.unwrap() {
            Kind::Outcome(o) => outcomes.push(o),
            Kind::Summary(s) => summary = Some(s),
        }
    }
    (outcomes, summary.expect("summary at the end of the stream"))
}

async fn search_image(
    client: &mut pb::retrieval_client::RetrievalClient<tonic::transport::Channel>,
    gallery: &str,
    bytes: Vec<u8>,
    k: u32,
) -> Vec<pb::Hit> {
    let req = pb::SearchRequest {
        gallery: gallery.into(),
        query: Some(pb::search_request::Query::Image(bytes)),
        top_k: k,
        ..Default::default()
    };
    client.search(req).await.unwrap().into_inner().hits
}

/// Every 10th grocery class: 9 products, 8 gallery photos each.
const CLASSES: [u32; 9] = [0, 10, 20, 30, 40, 50, 60, 70, 80];

#[tokio::test]
async fn add_search_remove_and_find_everything_after_restart() {
    let data = tempfile::tempdir().unwrap();
    let gallery_rows = subset(&split("train.txt"), &CLASSES, 8);
    let query_rows = subset(&split("val.txt"), &CLASSES, 2);
    let class_of: HashMap<String, u32> = gallery_rows.iter().cloned().collect();

    let server = Server::start(data.path(), "");
    let mut client = server.client().await;
    let created = client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "groc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.dims, 1280);

    let mut items: Vec<pb::AddItem> = gallery_rows
        .iter()
        .map(|(p, _)| image_item("groc", p, read_image(p)))
        .collect();
    for it in &mut items {
        it.metadata
            .insert("class".into(), class_of[&it.id].to_string());
    }
    let (outcomes, summary) = add_all(&mut client, items).await;
    assert_eq!(summary.added, gallery_rows.len() as u64, "{outcomes:?}");
    assert_eq!(summary.rejected, 0);
    assert!(outcomes
        .iter()
        .enumerate()
        .all(|(i, o)| o.index == i as u64 && o.status == Outcome::Added as i32));

    // Same-product retrieval: chance is 1/9; the ImageNet baseline does far better.
    let mut first_hits = Vec::new();
    let mut correct = 0;
    for (path, class) in &query_rows {
        let hits = search_image(&mut client, "groc", read_image(path), 5).await;
        assert_eq!(hits.len(), 5);
        assert!(
            hits.windows(2).all(|w| w[0].distance <= w[1].distance),
            "hits are ranked"
        );
        assert_eq!(hits[0].metadata["class"], class_of[&hits[0].id].to_string());
        correct += usize::from(class_of[&hits[0].id] == *class);
        first_hits.push(hits[0].id.clone());
    }
    let top1 = correct as f64 / query_rows.len() as f64;
    assert!(top1 >= 0.6, "top-1 {top1} on {} queries", query_rows.len());

    // Remove the first query's best hit: it must disappear from results.
    let gone = first_hits[0].clone();
    let removed = client
        .remove_from_gallery(pb::RemoveRequest {
            gallery: "groc".into(),
            ids: vec![gone.clone(), "no-such-id".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed, 1);
    assert_eq!(removed.not_found, vec!["no-such-id".to_string()]);
    let hits = search_image(&mut client, "groc", read_image(&query_rows[0].0), 10).await;
    assert!(hits.iter().all(|h| h.id != gone));
    let err = client
        .get_item(pb::GetItemRequest {
            gallery: "groc".into(),
            id: gone.clone(),
            include_descriptor: false,
            ..Default::default()
        })
        .await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);

    // Paging walks every id exactly once, in order.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_items(pb::ListItemsRequest {
                gallery: "groc".into(),
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.items.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = gallery_rows
        .iter()
        .map(|r| r.0.clone())
        .filter(|p| *p != gone)
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    // Answers are defined once the post-processing state caught up.
    wait_refreshed(&mut client, "groc").await;
    let before: Vec<Vec<pb::Hit>> = {
        let mut v = Vec::new();
        for (p, _) in &query_rows[..4] {
            v.push(search_image(&mut client, "groc", read_image(p), 5).await);
        }
        v
    };
    let generation = client
        .gallery_stats(pb::GalleryStatsRequest {
            gallery: "groc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .index
        .unwrap()
        .post_processing_generation;
    drop(client);
    server.stop().await;
    // A graceful stop saves the derived state; the next start loads it.
    assert!(data.path().join("index/groc/state.bin").exists());

    // A new process finds everything again, with the same answers.
    let server = Server::start(data.path(), "");
    let mut client = server.client().await;
    let stats = client
        .gallery_stats(pb::GalleryStatsRequest {
            gallery: "groc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.count, gallery_rows.len() as u64 - 1);
    assert_eq!(stats.execution_provider, "CPUExecutionProvider");
    assert_eq!(stats.model_fingerprint, created.model_fingerprint);
    assert_eq!(
        stats.index.unwrap().post_processing_generation,
        generation,
        "restored, not recomputed"
    );
    for ((p, _), old) in query_rows[..4].iter().zip(before) {
        let now = search_image(&mut client, "groc", read_image(p), 5).await;
        let ids = |h: &[pb::Hit]| h.iter().map(|x| x.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&now), ids(&old));
    }
}

#[tokio::test]
async fn acknowledged_items_survive_kill_9_mid_stream() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), "");
    let mut client = server.client().await;
    let dims = client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "g".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .dims;

    let (tx, rx) = mpsc::channel(8);
    let mut acks = client
        .add_to_gallery(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let send = |i: u64| {
        let d = pb::Descriptor {
            values: unit_vector(i, dims as usize),
            model_fingerprint: String::new(),
        };
        pb::AddItem {
            gallery: "g".into(),
            id: format!("item-{i}"),
            content: Some(Content::Descriptor(d)),
            metadata: HashMap::new(),
        }
    };
    // Keep the stream busy: a few items ahead of the acknowledgements.
    let mut sent = 0u64;
    for _ in 0..4 {
        tx.send(send(sent)).await.unwrap();
        sent += 1;
    }
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 40 {
        let Kind::Outcome(o) = acks.message().await.unwrap().unwrap().kind.unwrap() else {
            panic!("summary before the end")
        };
        assert_eq!(o.status, Outcome::Added as i32, "{o:?}");
        acknowledged.push(o.id);
        tx.send(send(sent)).await.unwrap();
        sent += 1;
    }
    server.kill(); // SIGKILL with items in flight

    let server = Server::start(data.path(), "");
    let mut client = server.client().await;
    for id in &acknowledged {
        let item = client
            .get_item(pb::GetItemRequest {
                gallery: "g".into(),
                id: id.clone(),
                include_descriptor: true,
                ..Default::default()
            })
            .await;
        let item = item
            .unwrap_or_else(|e| panic!("acknowledged {id} lost: {e}"))
            .into_inner();
        assert_eq!(item.descriptor.unwrap().values.len(), dims as usize);
    }
    let stats = client
        .gallery_stats(pb::GalleryStatsRequest {
            gallery: "g".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.count >= acknowledged.len() as u64 && stats.count <= sent);
    drop(tx);
}

/// A PNG whose header announces `w` x `h` (no pixel data follows).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for b in bytes {
            c ^= *b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

#[tokio::test]
async fn bad_input_gets_its_status_and_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let limits = "max_message_bytes = 4194304\n[embed.limits]\nmax_bytes = 2097152\n";
    let server = Server::start(data.path(), limits);
    let mut client = server.client().await;
    client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "g".into(),
        })
        .await
        .unwrap();
    let banana = subset(&split("val.txt"), &[6], 1).remove(0).0;
    let good = read_image(&banana);
    let (_, s) = add_all(&mut client, vec![image_item("g", "banana", good.clone())]).await;
    assert_eq!(s.added, 1);

    let search = |query: pb::search_request::Query, gallery: &str, top_k: u32| pb::SearchRequest {
        gallery: gallery.into(),
        query: Some(query),
        top_k,
        ..Default::default()
    };
    use pb::search_request::Query;
    let cases: Vec<(&str, pb::SearchRequest, Code)> = vec![
        (
            "empty bytes",
            search(Query::Image(vec![]), "g", 5),
            Code::InvalidArgument,
        ),
        (
            "truncated jpeg",
            search(Query::Image(good[..good.len() / 3].to_vec()), "g", 5),
            Code::InvalidArgument,
        ),
        (
            "random bytes",
            search(
                Query::Image(
                    unit_vector(7, 500)
                        .iter()
                        .flat_map(|f| f.to_le_bytes())
                        .collect(),
                ),
                "g",
                5,
            ),
            Code::InvalidArgument,
        ),
        (
            "30000x30000 png",
            search(Query::Image(png_header(30_000, 30_000)), "g", 5),
            Code::InvalidArgument,
        ),
        (
            "zero-width png",
            search(Query::Image(png_header(0, 10)), "g", 5),
            Code::InvalidArgument,
        ),
        (
            "image over max_bytes",
            search(Query::Image(vec![0xFF; 3 << 20]), "g", 5),
            Code::InvalidArgument,
        ),
        (
            "unknown gallery",
            search(Query::Image(good.clone()), "nope", 5),
            Code::NotFound,
        ),
        (
            "wrong dimension",
            search(
                Query::Descriptor(pb::Descriptor {
                    values: vec![1.0; 3],
                    model_fingerprint: String::new(),
                }),
                "g",
                5,
            ),
            Code::InvalidArgument,
        ),
        (
            "other model's descriptor",
            search(
                Query::Descriptor(pb::Descriptor {
                    values: vec![1.0; 1280],
                    model_fingerprint: "0000".into(),
                }),
                "g",
                5,
            ),
            Code::FailedPrecondition,
        ),
        (
            "top_k over the cap",
            search(Query::Image(good.clone()), "g", 100_000),
            Code::InvalidArgument,
        ),
        (
            "message over the limit",
            search(Query::Image(vec![0xFF; 5 << 20]), "g", 5),
            Code::ResourceExhausted,
        ),
    ];
    for (what, req, code) in cases {
        let err = client.search(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty(), "{what}: empty message");
    }

    // One bad item in a stream is rejected alone; its neighbours are added.
    let items = vec![
        image_item("g", "ok-1", good.clone()),
        image_item("g", "broken", b"GIF89a broken".to_vec()),
        image_item("", "ok-2", good.clone()),
    ];
    let (outcomes, s) = add_all(&mut client, items).await;
    assert_eq!((s.added, s.rejected), (2, 1), "{outcomes:?}");
    assert_eq!(outcomes[1].status, Outcome::Rejected as i32);
    assert!(!outcomes[1].reason.is_empty());

    // Still serving, nothing lost.
    let hits = search_image(&mut client, "g", good, 10).await;
    let mut ids: Vec<_> = hits.iter().map(|h| h.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["banana", "ok-1", "ok-2"]);
    assert!(
        hits[0].distance < 1e-3,
        "the same photo is its own nearest: {}",
        hits[0].distance
    );
}

#[tokio::test]
async fn health_reflection_and_gallery_isolation() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), "");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lookalike.v1.Retrieval".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"lookalike.v1.Retrieval"), "{names:?}");

    let mut client = server.client().await;
    for g in ["a", "b"] {
        client
            .create_gallery(pb::CreateGalleryRequest { gallery: g.into() })
            .await
            .unwrap();
    }
    let dup = client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "no spaces/slashes".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let d = |i| pb::Descriptor {
        values: unit_vector(i, 1280),
        model_fingerprint: String::new(),
    };
    let item = |g: &str, id: &str, i| pb::AddItem {
        gallery: g.into(),
        id: id.into(),
        content: Some(Content::Descriptor(d(i))),
        metadata: HashMap::new(),
    };
    add_all(&mut client, vec![item("a", "x", 1), item("b", "y", 2)]).await;
    let hits = client
        .search(pb::SearchRequest {
            gallery: "a".into(),
            query: Some(pb::search_request::Query::Descriptor(d(2))),
            top_k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        vec!["x"]
    );
    assert_eq!(
        client
            .drop_gallery(pb::DropGalleryRequest {
                gallery: "a".into()
            })
            .await
            .unwrap()
            .into_inner()
            .removed_items,
        1
    );
    let listed = client
        .list_galleries(pb::ListGalleriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .galleries;
    assert_eq!(
        listed
            .iter()
            .map(|g| g.gallery.as_str())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
}

#[tokio::test]
async fn per_request_query_expansion_and_k_reciprocal_with_stage_timings() {
    let data = tempfile::tempdir().unwrap();
    let classes = [0, 20, 40, 60, 80];
    let gallery_rows = subset(&split("train.txt"), &classes, 6);
    let query_rows = subset(&split("val.txt"), &classes, 1);
    let class_of: HashMap<String, u32> = gallery_rows.iter().cloned().collect();
    let server = Server::start(
        data.path(),
        "[post_processing]\nrefresh_debounce_ms = 10\ndba = true\n",
    );
    let mut client = server.client().await;
    client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "pp".into(),
        })
        .await
        .unwrap();
    let items = gallery_rows
        .iter()
        .map(|(p, _)| image_item("pp", p, read_image(p)))
        .collect();
    let (_, summary) = add_all(&mut client, items).await;
    assert_eq!(summary.added, gallery_rows.len() as u64);

    // The refresher catches up: neighbour lists and DBA vectors computed.
    let index = wait_refreshed(&mut client, "pp").await;
    assert!(index.dba, "DBA on, as configured");

    let pp = |k1: u32, lambda: f32, shortlist: u32| pb::PostProcessing {
        shortlist: Some(shortlist),
        query_expansion: Some(pb::QueryExpansion {
            enabled: true,
            k: 2,
            alpha: 3.0,
        }),
        k_reciprocal: Some(pb::KReciprocal {
            enabled: true,
            k1,
            k2: 6,
            lambda,
        }),
    };
    let mut same_class = 0;
    for (path, class) in &query_rows {
        let req = pb::SearchRequest {
            gallery: "pp".into(),
            query: Some(pb::search_request::Query::Image(read_image(path))),
            top_k: 5,
            post_processing: Some(pp(20, 0.3, 25)),
            ..Default::default()
        };
        let resp = client.search(req).await.unwrap().into_inner();
        assert_eq!(resp.hits.len(), 5);
        assert!(resp.hits.windows(2).all(|w| w[0].distance <= w[1].distance));
        same_class += usize::from(class_of[&resp.hits[0].id] == *class);
        assert_eq!(resp.stages, ["dba", "alpha_qe", "k_reciprocal"]);
        let stages: Vec<&str> = resp.timings.iter().map(|t| t.stage.as_str()).collect();
        assert_eq!(
            stages,
            [
                "decode",
                "embed",
                "search",
                "query_expansion",
                "search_expanded",
                "k_reciprocal"
            ]
        );
        eprintln!(
            "stage timings (us): {:?}",
            resp.timings
                .iter()
                .map(|t| (t.stage.as_str(), t.micros))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        same_class * 2 >= query_rows.len(),
        "top hit of the same product for {same_class} of {} queries",
        query_rows.len()
    );

    // Bad parameters are rejected with a message naming them.
    for (bad, what) in [
        (pp(0, 0.3, 25), "k1"),
        (pp(20, 1.5, 25), "lambda"),
        (pp(20, 0.3, 1_000_000), "shortlist"),
    ] {
        let req = pb::SearchRequest {
            gallery: "pp".into(),
            query: Some(pb::search_request::Query::ItemId(gallery_rows[0].0.clone())),
            post_processing: Some(bad),
            ..Default::default()
        };
        let err = client.search(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(what), "{}", err.message());
    }
}

/// A lossless WebP (VP8L) whose header announces `w` x `h`, no pixel data.
fn webp_header(w: u32, h: u32) -> Vec<u8> {
    let bits = (w - 1) | ((h - 1) << 14);
    let mut vp8l = vec![0x2f];
    vp8l.extend_from_slice(&bits.to_le_bytes());
    vp8l.push(0);
    let mut chunk = b"VP8L".to_vec();
    chunk.extend_from_slice(&(vp8l.len() as u32).to_le_bytes());
    chunk.extend_from_slice(&vp8l);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + chunk.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunk);
    out
}

#[tokio::test]
async fn hostile_requests_get_a_clear_error_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let cfg = "[index]\nmax_ef_search = 4096\n[metadata]\nmax_keys = 8\nmax_value_bytes = 64\n";
    let server = Server::start(data.path(), cfg);
    let mut client = server.client().await;
    // Galleries named only by dots would be data/index/ itself or its parent.
    for name in [".", "..", "..."] {
        let err = client
            .create_gallery(pb::CreateGalleryRequest {
                gallery: name.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains("other than '.'"),
            "{}",
            err.message()
        );
    }
    let dims = create_gallery(&mut client, "h").await;
    let items = (0..5)
        .map(|i| descriptor_item("h", &format!("item-{i}"), unit_vector(i, dims)))
        .collect();
    let (_, s) = add_all(&mut client, items).await;
    assert_eq!(s.added, 5);

    // Metadata over each bound is rejected on its own, with the bound named.
    let mut many = descriptor_item("h", "many-keys", unit_vector(10, dims));
    many.metadata = (0..9).map(|i| (format!("k{i}"), "v".into())).collect();
    let mut long = descriptor_item("h", "long-value", unit_vector(11, dims));
    long.metadata.insert("note".into(), "x".repeat(65));
    let (outcomes, s) = add_all(&mut client, vec![many, long]).await;
    assert_eq!((s.added, s.rejected), (0, 2));
    assert!(
        outcomes[0].reason.contains("more than 8 keys"),
        "{outcomes:?}"
    );
    assert!(outcomes[1].reason.contains("65 bytes"), "{outcomes:?}");

    // A finite descriptor whose squared norm overflows f32 keeps its direction.
    let huge: Vec<f32> = unit_vector(3, dims).iter().map(|v| v * 1e30).collect();
    let hits = search_descriptor(&mut client, "h", huge, 1).await;
    assert_eq!(hits[0].id, "item-3");
    assert!(hits[0].distance < 1e-3);

    // ef_search above the configured cap.
    let err = client
        .search(pb::SearchRequest {
            gallery: "h".into(),
            query: Some(pb::search_request::Query::ItemId("item-0".into())),
            ef_search: 100_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("4096"), "{}", err.message());

    // A WebP announcing 16384 x 16384 says what is wrong with it.
    let err = client
        .search(pb::SearchRequest {
            gallery: "h".into(),
            query: Some(pb::search_request::Query::Image(webp_header(16384, 16384))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().contains("0x0"), "{}", err.message());
    assert!(err.message().contains("16384"), "{}", err.message());

    // Page tokens: only what ListItems issued resumes a listing.
    let page = |token: &str| pb::ListItemsRequest {
        gallery: "h".into(),
        page_size: 2,
        page_token: token.into(),
        ..Default::default()
    };
    let first = client.list_items(page("")).await.unwrap().into_inner();
    let second = client
        .list_items(page(&first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.items[0].id, "item-2");
    for forged in ["item-1", "never-issued", &first.next_page_token[1..]] {
        let err = client.list_items(page(forged)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{forged}");
        assert!(err.message().contains("not issued"), "{}", err.message());
    }

    // The default per-request pipeline: AQE then KR, raw vectors indexed.
    let index = wait_refreshed(&mut client, "h").await;
    assert!(!index.dba);
    let resp = client
        .search(pb::SearchRequest {
            gallery: "h".into(),
            query: Some(pb::search_request::Query::ItemId("item-2".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.stages, ["aqe", "k_reciprocal"]);

    // Nothing was lost along the way.
    let stats = client
        .gallery_stats(pb::GalleryStatsRequest {
            gallery: "h".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.count, 5);
}

#[tokio::test]
async fn search_batch_equals_batch_eval_on_the_same_descriptors() {
    use lookalike::rerank::pipeline::{parse_stages, Pipeline};
    use ndarray::Array2;
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), "");
    let mut client = server.client().await;
    let dims = create_gallery(&mut client, "b").await;
    // 30 products, photos of one product near each other.
    let centre = |i: u64| unit_vector(1000 + i % 30, dims);
    let noisy = |i: u64| -> Vec<f32> {
        let v: Vec<f32> = centre(i)
            .iter()
            .zip(unit_vector(i, dims))
            .map(|(c, n)| c + 1.5 * n)
            .collect();
        lookalike::index::distance::normalised(&v).unwrap()
    };
    let (ng, nq) = (400u64, 60u64);
    let ids: Vec<String> = (0..ng).map(|i| format!("g{i:04}")).collect();
    let items = (0..ng)
        .map(|i| descriptor_item("b", &ids[i as usize], noisy(i)))
        .collect();
    let (_, s) = add_all(&mut client, items).await;
    assert_eq!(s.added, ng);
    let queries: Vec<Vec<f32>> = (0..nq).map(|i| noisy(10_000 + i)).collect();
    let matrix =
        |rows: &[Vec<f32>]| Array2::from_shape_vec((rows.len(), dims), rows.concat()).unwrap();
    let g = matrix(&(0..ng).map(noisy).collect::<Vec<_>>());
    let q = matrix(&queries);

    for (stages, digix) in [
        ("kr;aqe:k=1", false),
        ("gallery-dba:k=5;kr", false),
        ("", true),
    ] {
        let batch_query = |i: usize| pb::BatchQuery {
            id: format!("q{i}"),
            query: Some(pb::batch_query::Query::Descriptor(pb::Descriptor {
                values: queries[i].clone(),
                model_fingerprint: String::new(),
            })),
        };
        // Queries over two messages; options on the first only.
        let requests = vec![
            pb::SearchBatchRequest {
                gallery: "b".into(),
                options: Some(pb::BatchOptions {
                    top_k: 10,
                    stages: stages.into(),
                    digix,
                    dba_renormalise: false,
                }),
                queries: (0..30).map(batch_query).collect(),
            },
            pb::SearchBatchRequest {
                gallery: String::new(),
                options: None,
                queries: (30..nq as usize).map(batch_query).collect(),
            },
        ];
        let mut stream = client
            .search_batch(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let mut got: Vec<Vec<String>> = Vec::new();
        let mut summary = None;
        while let Some(r) = stream.message().await.unwrap() {
            match r.kind.unwrap() {
                pb::search_batch_response::Kind::Result(res) => {
                    assert_eq!(res.id, format!("q{}", got.len()));
                    assert_eq!(res.index, got.len() as u64);
                    got.push(res.hits.into_iter().map(|h| h.id).collect());
                }
                pb::search_batch_response::Kind::Summary(s) => summary = Some(s),
            }
        }
        let summary = summary.expect("summary");
        assert_eq!((summary.queries, summary.gallery_items), (nq, ng));
        let pipeline = if digix {
            Pipeline::digix()
        } else {
            Pipeline::new(parse_stages(stages).unwrap(), 10, false).unwrap()
        };
        assert_eq!(summary.stages.len(), pipeline.stages().len());
        let want = pipeline.run(q.view(), g.view()).unwrap();
        let want: Vec<Vec<String>> = want
            .last()
            .unwrap()
            .ranking
            .iter()
            .map(|r| r.iter().take(10).map(|&i| ids[i].clone()).collect())
            .collect();
        assert_eq!(got, want, "stages {stages:?} digix {digix}");
    }

    // Bad calls: unknown stage, too many for the cap, an unknown item.
    let call = |options: pb::BatchOptions, queries: Vec<pb::BatchQuery>| {
        vec![pb::SearchBatchRequest {
            gallery: "b".into(),
            options: Some(options),
            queries,
        }]
    };
    let item = |id: &str| pb::BatchQuery {
        id: String::new(),
        query: Some(pb::batch_query::Query::ItemId(id.into())),
    };
    let bad = [
        (
            call(
                pb::BatchOptions {
                    stages: "bogus".into(),
                    ..Default::default()
                },
                vec![item("g0000")],
            ),
            Code::InvalidArgument,
            "bogus",
        ),
        (
            call(
                pb::BatchOptions::default(),
                vec![item("g0000"), item("nope")],
            ),
            Code::NotFound,
            "query 1",
        ),
        (
            call(pb::BatchOptions::default(), vec![]),
            Code::InvalidArgument,
            "at least one",
        ),
    ];
    for (requests, code, what) in bad {
        let mut stream = client
            .search_batch(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let err = stream.message().await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(what), "{}", err.message());
    }
}
