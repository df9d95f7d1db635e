//! OTLP trace export (cargo feature `otlp`): the tracing spans (the
//! request span with its id, stage spans) go to the collector named by
//! `OTEL_EXPORTER_OTLP_ENDPOINT` over gRPC, batched in the background.
//! Nothing is exported when the variable is unset.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct OtlpError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Flushes and stops the exporter when dropped.
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("OTLP exporter shutdown: {e}");
        }
    }
}

/// The tracing layer that exports spans, when an endpoint is configured.
/// Call inside the tokio runtime (the tonic client needs it).
pub fn layer<S>() -> Result<Option<(impl Layer<S>, Exporter)>, OtlpError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("lookalike")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("lookalike");
    Ok(Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Exporter(provider),
    )))
}
