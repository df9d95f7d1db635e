//! The composition root in-process: one `Service` handed to every port.
//! gRPC and HTTP searches pass its one search admission, so the server
//! runs at most `search.max_running` searches whichever port they came by.

mod common;

use std::sync::Arc;

use common::grpc::{create_gallery, descriptor_item, unit_vector};
use lookalike::api::pb::{self, retrieval_client::RetrievalClient};
use lookalike::config::Config;
use lookalike::embed::Engine;
use lookalike::gallery::Galleries;
use lookalike::query::service::Service;

struct Running {
    service: Arc<Service>,
    grpc: String,
    http: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), lookalike::server::ServeError>>,
}

async fn start(data: &std::path::Path, extra: &str) -> Running {
    let mut cfg: Config = toml::from_str(&format!(
        "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n{extra}"
    ))
    .unwrap();
    cfg.data_dir = data.into();
    cfg.model = common::default_manifest().into();
    cfg.ort_dylib = Some(common::ort_dylib());
    cfg.validate().unwrap();
    let engine = Engine::load(&cfg.model, &cfg.ort_dylib(), &cfg.embed).unwrap();
    let galleries = Galleries::open(
        &cfg.database_path(),
        cfg.index.clone(),
        cfg.post_processing.gallery_config(),
    )
    .unwrap();
    let service = Service::new(Arc::new(engine), Arc::new(galleries), None, &cfg);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bound = lookalike::server::bind(&cfg, service.clone(), None, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Running {
        service,
        grpc: format!("http://{}", bound.addr),
        http: format!("http://{}", bound.http_addr.unwrap()),
        stop,
        served: tokio::spawn(bound.serve),
    }
}

fn search_request(values: Vec<f32>) -> pb::SearchRequest {
    pb::SearchRequest {
        gallery: "g".into(),
        query: Some(pb::search_request::Query::Descriptor(pb::Descriptor {
            values,
            model_fingerprint: String::new(),
        })),
        top_k: 3,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_shares_one_search_admission() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let server = start(
        data.path(),
        "[search]\nmax_running = 1\nmax_queued = 1\nmax_wait_ms = 60000\n",
    )
    .await;
    let mut grpc = RetrievalClient::connect(server.grpc.clone()).await.unwrap();
    let dims = create_gallery(&mut grpc, "g").await;
    let items: Vec<_> = (0..5)
        .map(|i| descriptor_item("g", &format!("i{i}"), unit_vector(i, dims)))
        .collect();
    common::grpc::add_stream(&mut grpc, items).await.1.unwrap();
    let q = unit_vector(1, dims);
    let http = reqwest::Client::new();
    let http_search = || {
        http.post(format!("{}/v1/galleries/g/search", server.http))
            .json(&serde_json::json!({"descriptor": {"values": q}, "top_k": 3}))
            .send()
    };
    // Both ports answer while the admission is free.
    assert_eq!(
        grpc.search(search_request(q.clone()))
            .await
            .unwrap()
            .into_inner()
            .hits[0]
            .id,
        "i1"
    );
    assert_eq!(http_search().await.unwrap().status(), 200);

    // Take the server's only search slot and its only waiting place.
    let admission = server.service.admission().clone();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started, is_started) = tokio::sync::oneshot::channel();
    let running = {
        let a = admission.clone();
        tokio::spawn(async move {
            a.run(move || {
                started.send(()).unwrap();
                let _ = hold.recv();
            })
            .await
        })
    };
    is_started.await.unwrap();
    let waiting = {
        let a = admission.clone();
        tokio::spawn(async move { a.run(|| ()).await })
    };
    while admission.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!((admission.running(), admission.waiting()), (1, 1));

    // Full: each port refuses at once. A port with an admission of its own
    // would run the search instead.
    let refused = grpc.search(search_request(q.clone())).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("retry later"), "{refused:?}");
    let refused = http_search().await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");

    // Released, both ports answer again.
    release.send(()).unwrap();
    running.await.unwrap().unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(
        grpc.search(search_request(q.clone()))
            .await
            .unwrap()
            .into_inner()
            .hits
            .len(),
        3
    );
    assert_eq!(http_search().await.unwrap().status(), 200);

    drop(grpc);
    server.stop.send(()).unwrap();
    server.served.await.unwrap().unwrap();
}
