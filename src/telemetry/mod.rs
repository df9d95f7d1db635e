//! Observability: Prometheus metrics ([`metrics`]), the tower layer that
//! records every gRPC call ([`layer`]), and request ids on every call's
//! tracing span ([`request_id`]).

pub mod layer;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod request_id;

pub use metrics::metrics;

/// Records a search's stage timings (search, query expansion, k-reciprocal).
pub fn observe_stages(timings: &[(&'static str, std::time::Duration)]) {
    for (stage, d) in timings {
        metrics().observe_stage(stage, *d);
    }
}
