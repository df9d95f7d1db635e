//! The server's Prometheus metrics, in one process-wide registry (the
//! `prometheus` crate writes the text format). Request metrics come from
//! the tower layer in [`super::layer`]; the engine, index and galleries
//! record their own; gallery gauges are read when /metrics is scraped.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// gRPC calls by service, method and final status code.
    pub requests: IntCounterVec,
    /// Whole-call latency by service and method (streams: until the last message).
    pub request_seconds: HistogramVec,
    /// HTTP/JSON requests by route template, method and status code.
    pub http_requests: IntCounterVec,
    /// HTTP/JSON latency by route template and method (until the response head).
    pub http_request_seconds: HistogramVec,
    /// Per-stage latency: decode, preprocess, inference, search, post-processing stages.
    pub stage_seconds: HistogramVec,
    /// Images per inference batch, by backbone.
    pub batch_size: HistogramVec,
    /// Images admitted and not yet embedded (decoding, queued or running).
    pub queue_depth: IntGauge,
    /// Images refused because the admission queue was full.
    pub refusals: IntCounter,
    /// Searches computing on the blocking pool (`query::admission`).
    pub search_running: IntGauge,
    /// Searches refused because every slot and the wait queue were taken.
    pub search_refusals: IntCounter,
    pub gallery_items: IntGaugeVec,
    pub gallery_stale_items: IntGaugeVec,
    pub gallery_tombstones: IntGaugeVec,
    /// Post-processing refreshes (neighbour lists, DBA) and their duration.
    pub refresh_seconds: Histogram,
    /// HNSW graph builds and their duration.
    pub index_build_seconds: Histogram,
    /// 1 for the provider the engine runs on.
    pub provider: IntGaugeVec,
    /// 1, labelled with the version and the model fingerprint.
    pub build_info: IntGaugeVec,
    /// Cores the server plans its threads for (`cpus`).
    pub cpu_budget: IntGauge,
    /// TLS file changes seen, by result (reloaded, failed).
    pub tls_reloads: IntCounterVec,
    /// Searches answered without a stage they asked for, by stage.
    pub search_degraded: IntCounterVec,
    /// Cluster replicas: the last stream sequence applied, per gallery.
    pub replication_applied: IntGaugeVec,
    /// Cluster replicas: stream messages not applied yet, per gallery.
    pub replication_lag: IntGaugeVec,
    /// Cluster replicas: 1 while connected to NATS.
    pub replication_connected: IntGauge,
    /// Cluster writes: JetStream acknowledgements, by result.
    pub replication_publishes: IntCounterVec,
    /// Cluster replicas: copies started from a stream's first message.
    pub replication_copies: IntCounterVec,
}

/// 0.5 ms .. ~65 s, doubling.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 18).expect("valid bucket layout")
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("lookalike".into()), None)?;
    let m = Metrics {
        requests: IntCounterVec::new(
            Opts::new(
                "grpc_requests_total",
                "gRPC calls by method and status code",
            ),
            &["service", "method", "code"],
        )?,
        request_seconds: HistogramVec::new(
            HistogramOpts::new("grpc_request_duration_seconds", "gRPC call latency")
                .buckets(latency_buckets()),
            &["service", "method"],
        )?,
        http_requests: IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP/JSON requests by route, method and status code",
            ),
            &["route", "method", "status"],
        )?,
        http_request_seconds: HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP/JSON request latency")
                .buckets(latency_buckets()),
            &["route", "method"],
        )?,
        stage_seconds: HistogramVec::new(
            HistogramOpts::new("stage_duration_seconds", "Time per pipeline stage")
                .buckets(latency_buckets()),
            &["stage"],
        )?,
        batch_size: HistogramVec::new(
            HistogramOpts::new("embed_batch_size", "Images per inference batch")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 10)?),
            &["backbone"],
        )?,
        queue_depth: IntGauge::new("embed_queue_depth", "Images admitted and not yet embedded")?,
        refusals: IntCounter::new(
            "embed_admission_refusals_total",
            "Images refused with RESOURCE_EXHAUSTED because the queue was full",
        )?,
        search_running: IntGauge::new("search_running", "Searches computing on the blocking pool")?,
        search_refusals: IntCounter::new(
            "search_admission_refusals_total",
            "Searches refused with RESOURCE_EXHAUSTED because every slot was taken",
        )?,
        gallery_items: IntGaugeVec::new(
            Opts::new("gallery_items", "Items per gallery"),
            &["gallery"],
        )?,
        gallery_stale_items: IntGaugeVec::new(
            Opts::new(
                "gallery_stale_items",
                "Changes not yet reflected in post-processing state",
            ),
            &["gallery"],
        )?,
        gallery_tombstones: IntGaugeVec::new(
            Opts::new(
                "gallery_index_tombstones",
                "Removed points still in the graph",
            ),
            &["gallery"],
        )?,
        refresh_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "post_processing_refresh_duration_seconds",
                "Post-processing refreshes (neighbour lists, DBA vectors)",
            )
            .buckets(latency_buckets()),
        )?,
        index_build_seconds: Histogram::with_opts(
            HistogramOpts::new("index_build_duration_seconds", "HNSW graph builds")
                .buckets(latency_buckets()),
        )?,
        provider: IntGaugeVec::new(
            Opts::new(
                "execution_provider",
                "The ONNX Runtime execution provider in use",
            ),
            &["provider"],
        )?,
        build_info: IntGaugeVec::new(
            Opts::new("build_info", "Version and model of this server"),
            &["version", "model_fingerprint"],
        )?,
        cpu_budget: IntGauge::new(
            "cpu_budget",
            "Cores the server plans its threads for (config cpus, else detected)",
        )?,
        tls_reloads: IntCounterVec::new(
            Opts::new(
                "tls_reloads_total",
                "Changes of the TLS files seen, by result (reloaded, failed)",
            ),
            &["result"],
        )?,
        search_degraded: IntCounterVec::new(
            Opts::new(
                "search_degraded_total",
                "Searches answered without a stage they asked for, by stage",
            ),
            &["stage"],
        )?,
        replication_applied: IntGaugeVec::new(
            Opts::new(
                "replication_applied_sequence",
                "Last stream sequence this replica applied, per gallery",
            ),
            &["gallery"],
        )?,
        replication_lag: IntGaugeVec::new(
            Opts::new(
                "replication_lag_messages",
                "Stream messages this replica has not applied yet, per gallery",
            ),
            &["gallery"],
        )?,
        replication_connected: IntGauge::new(
            "replication_connected",
            "1 while this replica is connected to the NATS cluster",
        )?,
        replication_publishes: IntCounterVec::new(
            Opts::new(
                "replication_publishes_total",
                "Writes published to JetStream, by result (acked, duplicate, failed)",
            ),
            &["result"],
        )?,
        replication_copies: IntCounterVec::new(
            Opts::new(
                "replication_copies_total",
                "Copies of a gallery this replica started from its stream's first message \
                 (new here, a new incarnation, or away longer than the tombstones live), per gallery",
            ),
            &["gallery"],
        )?,
        registry,
    };
    let r = &m.registry;
    r.register(Box::new(m.requests.clone()))?;
    r.register(Box::new(m.request_seconds.clone()))?;
    r.register(Box::new(m.http_requests.clone()))?;
    r.register(Box::new(m.http_request_seconds.clone()))?;
    r.register(Box::new(m.stage_seconds.clone()))?;
    r.register(Box::new(m.batch_size.clone()))?;
    r.register(Box::new(m.queue_depth.clone()))?;
    r.register(Box::new(m.refusals.clone()))?;
    r.register(Box::new(m.search_running.clone()))?;
    r.register(Box::new(m.search_refusals.clone()))?;
    r.register(Box::new(m.gallery_items.clone()))?;
    r.register(Box::new(m.gallery_stale_items.clone()))?;
    r.register(Box::new(m.gallery_tombstones.clone()))?;
    r.register(Box::new(m.refresh_seconds.clone()))?;
    r.register(Box::new(m.index_build_seconds.clone()))?;
    r.register(Box::new(m.provider.clone()))?;
    r.register(Box::new(m.build_info.clone()))?;
    r.register(Box::new(m.cpu_budget.clone()))?;
    r.register(Box::new(m.tls_reloads.clone()))?;
    r.register(Box::new(m.search_degraded.clone()))?;
    r.register(Box::new(m.replication_applied.clone()))?;
    r.register(Box::new(m.replication_lag.clone()))?;
    r.register(Box::new(m.replication_connected.clone()))?;
    r.register(Box::new(m.replication_publishes.clone()))?;
    r.register(Box::new(m.replication_copies.clone()))?;
    Ok(m)
}

static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric names and labels are static and valid"));

pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    pub fn observe_stage(&self, stage: &str, d: Duration) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec fails only on a malformed family, which
        // `build` rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
