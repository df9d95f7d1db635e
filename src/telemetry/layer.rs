//! Tower layer that counts gRPC calls by method and final status code
//! and times them. The code of a successful call (and of a stream that
//! fails midway) arrives in the trailers, so the response body is wrapped
//! and the call recorded when the trailers go out, or as CANCELLED when
//! the client leaves first.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::metrics::metrics;

/// Services whose calls are labelled by name; anything else is "other",
/// so clients cannot grow the label set.
const SERVICES: [&str; 3] = [
    "lookalike.v1.Retrieval",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

#[derive(Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
}

/// (service, method) labels of a gRPC path `/pkg.Service/Method`.
pub fn labels(path: &str) -> (&'static str, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("");
    let method = parts.next().unwrap_or("");
    match SERVICES.iter().find(|s| **s == service) {
        Some(s)
            if !method.is_empty()
                && method.len() <= 64
                && method.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (s, method.to_string())
        }
        _ => ("other", "other".to_string()),
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for MetricsService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RecordingBody<ResB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let (service, method) = labels(req.uri().path());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // A trailers-only response (most errors) carries the code here.
            let header_code = grpc_status(resp.headers());
            let call = Call {
                service,
                method,
                started,
                header_code,
            };
            Ok(resp.map(|inner| RecordingBody {
                inner,
                call: Some(call),
            }))
        })
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

struct Call {
    service: &'static str,
    method: String,
    started: Instant,
    header_code: Option<i32>,
}

impl Call {
    fn record(self, code: tonic::Code) {
        let m = metrics();
        let code = format!("{code:?}");
        m.requests
            .with_label_values(&[self.service, &self.method, &code])
            .inc();
        m.request_seconds
            .with_label_values(&[self.service, &self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The response body, passed through; records the call at its end.
pub struct RecordingBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> RecordingBody<B> {
    fn finish(&mut self, code: Option<i32>) {
        if let Some(call) = self.call.take() {
            let code = code
                .or(call.header_code)
                .map_or(tonic::Code::Unknown, tonic::Code::from);
            call.record(code);
        }
    }
}

impl<B> Body for RecordingBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.finish(Some(code));
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some(tonic::Code::Internal as i32)),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for RecordingBody<B> {
    /// A body dropped before its end: the client cancelled (or a
    /// trailers-only response whose empty body was never polled).
    fn drop(&mut self) {
        let code = self.call.as_ref().and_then(|c| c.header_code);
        self.finish(code.or(Some(tonic::Code::Cancelled as i32)));
    }
}

#[cfg(test)]
mod tests {
    use super::labels;

    #[test]
    fn labels_only_known_services_and_plain_method_names() {
        assert_eq!(
            labels("/lookalike.v1.Retrieval/Search"),
            ("lookalike.v1.Retrieval", "Search".to_string())
        );
        assert_eq!(
            labels("/evil.Service/Search"),
            ("other", "other".to_string())
        );
        assert_eq!(
            labels("/lookalike.v1.Retrieval/a b"),
            ("other", "other".to_string())
        );
        assert_eq!(labels("/"), ("other", "other".to_string()));
    }
}
