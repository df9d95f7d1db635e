//! With the `otlp` feature: the request span, with the client's request
//! id, reaches an OTLP collector (a real gRPC one, run here) from the real
//! server process. `cargo test --features otlp --test otlp`.
#![cfg(feature = "otlp")]

mod common;

use std::time::Duration;

use common::Server;
use lookalike::api::pb;
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// One exported span: name, string attributes, its id and its parent's.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    attrs: Vec<(String, String)>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

impl Exported {
    fn has(&self, key: &str, value: &str) -> bool {
        self.attrs.contains(&(key.into(), value.into()))
    }
}

/// Every span in an export.
fn spans(req: &ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let attrs = s
                    .attributes
                    .iter()
                    .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(v) => Some((kv.key.clone(), v.clone())),
                        _ => None,
                    })
                    .collect();
                out.push(Exported {
                    name: s.name.clone(),
                    attrs,
                    id: s.span_id.clone(),
                    parent: s.parent_span_id.clone(),
                });
            }
        }
    }
    out
}

#[tokio::test]
async fn request_and_stage_spans_with_their_id_reach_the_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let (tx, mut exports) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let data = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector}");
    let server = Server::start_with_env(
        data.path(),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            // Stage spans are debug level.
            ("RUST_LOG", "info,lookalike=debug"),
        ],
    );
    let mut client = server.client().await;
    let mut req = Request::new(pb::ListGalleriesRequest {});
    req.metadata_mut()
        .insert("x-request-id", "otlp-trace-7".parse().unwrap());
    client.list_galleries(req).await.unwrap();

    // A search by image: its stages (embedding's, then the search's on the
    // blocking pool) nest under the request span.
    client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "g".into(),
        })
        .await
        .unwrap();
    let mut req = Request::new(pb::SearchRequest {
        gallery: "g".into(),
        query: Some(pb::search_request::Query::Image(common::read_image(
            &common::split("val.txt")[0].0,
        ))),
        top_k: 3,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "otlp-search-8".parse().unwrap());
    client.search(req).await.unwrap();

    let mut seen: Vec<Exported> = Vec::new();
    let complete = |seen: &[Exported]| {
        let listed = seen.iter().any(|s| {
            s.name == "request"
                && s.has("id", "otlp-trace-7")
                && s.has("rpc", "/lookalike.v1.Retrieval/ListGalleries")
        });
        let search = seen
            .iter()
            .find(|s| s.name == "request" && s.has("id", "otlp-search-8"));
        let child = |stage: &str| {
            search.is_some_and(|r| {
                seen.iter()
                    .any(|s| s.name == "stage" && s.has("stage", stage) && s.parent == r.id)
            })
        };
        let decoded =
            search.is_some_and(|r| seen.iter().any(|s| s.name == "decode" && s.parent == r.id));
        listed && decoded && child("search")
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while !complete(&seen) {
            match exports.recv().await {
                Some(export) => seen.extend(spans(&export)),
                None => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("spans missing after 60 s; exported: {seen:#?}"));
    assert!(complete(&seen), "exported: {seen:#?}");
    server.stop().await;
}
