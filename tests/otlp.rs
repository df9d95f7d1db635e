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

/// (span name, string attributes) of every span in an export.
fn spans(req: &ExportTraceServiceRequest) -> Vec<(String, Vec<(String, String)>)> {
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
                out.push((s.name.clone(), attrs));
            }
        }
    }
    out
}

#[tokio::test]
async fn request_spans_with_their_id_reach_the_collector() {
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
            ("RUST_LOG", "info"),
        ],
    );
    let mut client = server.client().await;
    let mut req = Request::new(pb::ListGalleriesRequest {});
    req.metadata_mut()
        .insert("x-request-id", "otlp-trace-7".parse().unwrap());
    client.list_galleries(req).await.unwrap();

    let want = |(name, attrs): &(String, Vec<(String, String)>)| {
        name == "request"
            && attrs.contains(&("id".into(), "otlp-trace-7".into()))
            && attrs.contains(&("rpc".into(), "/lookalike.v1.Retrieval/ListGalleries".into()))
    };
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(export) = exports.recv().await {
            if spans(&export).iter().any(want) {
                return true;
            }
        }
        false
    })
    .await
    .expect("no matching span exported within 60 s");
    assert!(found);
    server.stop().await;
}
