//! A tracing span per call, carrying a request id: the client's
//! `x-request-id` when it sends a usable one, else a fresh random one;
//! returned in the response metadata either way, so a client can quote it
//! and an operator find the call's log lines.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

/// The client's id if it is short and printable (it ends up in logs).
fn usable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

fn fresh() -> HeaderValue {
    let id: u128 = rand::random();
    HeaderValue::from_str(&format!("{id:032x}")).expect("hex is a valid header value")
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for RequestIdService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(HEADER) {
            Some(v) if usable(v) => v.clone(),
            _ => {
                let id = fresh();
                req.headers_mut().insert(HEADER, id.clone());
                id
            }
        };
        let span = tracing::info_span!(
            "request",
            id = %String::from_utf8_lossy(id.as_bytes()),
            rpc = %req.uri().path(),
        );
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut resp = fut.await?;
                resp.headers_mut().insert(HEADER, id);
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_must_be_short_and_printable() {
        assert!(usable(&HeaderValue::from_static("abc-123")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_static("two words")));
        assert!(!usable(&HeaderValue::from_str(&"x".repeat(129)).unwrap()));
        assert_eq!(fresh().len(), 32);
    }
}
