//! Server configuration: defaults, then a TOML file, then environment
//! variables and flags (applied by the binary).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::embed::EngineConfig;
use crate::gallery::limits::MetadataLimits;
use crate::index::HnswParams;

/// Where the setup script puts libonnxruntime, relative to the repository.
pub const DEFAULT_ORT_DYLIB: &str = ".lookalike/onnxruntime/libonnxruntime.so.1.31.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// Admin HTTP port: /metrics and /healthz. Off when unset.
    pub admin_listen: Option<SocketAddr>,
    /// HTTP/JSON API and the web console (`src/http`). Off when unset:
    /// a new port is opened only when asked for, like `admin_listen`.
    pub http_listen: Option<SocketAddr>,
    /// Thumbnails kept with image items, for the console and clients.
    pub thumbnails: crate::store::thumbnail::ThumbnailConfig,
    /// Folder holding the gallery database.
    pub data_dir: PathBuf,
    /// Ensemble manifest (`models/<name>.toml`).
    pub model: PathBuf,
    /// libonnxruntime; `ORT_DYLIB_PATH` overrides, then [`DEFAULT_ORT_DYLIB`].
    pub ort_dylib: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Largest gRPC message, and largest HTTP request body, accepted, in
    /// bytes.
    pub max_message_bytes: usize,
    pub default_top_k: u32,
    pub max_top_k: u32,
    /// Most queries one SearchBatch call may hold.
    pub max_batch_queries: usize,
    /// On SIGTERM / Ctrl-C: how long in-flight requests may take to finish
    /// before the server stops anyway (it then saves the galleries'
    /// derived state). Below Kubernetes' default 30 s grace period.
    pub shutdown_grace_s: u64,
    pub embed: EngineConfig,
    pub index: HnswParams,
    pub post_processing: PostProcessingDefaults,
    /// Admission for search CPU work (`[search]`).
    pub search: crate::query::admission::AdmissionConfig,
    /// Bounds on an item's metadata.
    pub metadata: MetadataLimits,
    /// Cores this server plans its threads for: ONNX Runtime's
    /// `embed.intra_threads`, `search.max_running`, and the scan and
    /// refresh pools, where those are 0. 0 = detect: the cgroup CPU quota
    /// (a Kubernetes CPU limit) or else every core the process may run on.
    /// A pod with a CPU request and no limit sees the node's cores; the
    /// Helm chart sets `LOOKALIKE_CPUS` from the request instead.
    pub cpus: usize,
    /// TLS on the gRPC and HTTP ports; plaintext when unset.
    pub tls: Option<crate::security::TlsFiles>,
    pub auth: crate::security::AuthConfig,
    /// Replication through NATS JetStream (`[cluster]`); unset, a single
    /// node on its own store.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// Server-side post-processing settings: gallery-side state (`dba`,
/// `dba_k`, `neighbours_k`, `refresh_debounce_ms`) and the defaults of the
/// per-request options (the rest).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostProcessingDefaults {
    /// Candidates fetched for KR to re-rank.
    pub shortlist: u32,
    /// Largest shortlist a request may ask for.
    pub max_shortlist: u32,
    pub query_expansion: bool,
    pub qe_k: u32,
    /// 0 = AQE, > 0 = alpha-QE.
    pub qe_alpha: f32,
    pub k_reciprocal: bool,
    pub kr_k1: u32,
    pub kr_k2: u32,
    pub kr_lambda: f32,
    /// Index each item's DBA vector instead of its raw descriptor.
    pub dba: bool,
    pub dba_k: u32,
    /// Gallery neighbours kept per item (KR needs k1 and k2 - 1 <= this).
    pub neighbours_k: u32,
    /// Wait after a write before recomputing, so bursts share one refresh.
    pub refresh_debounce_ms: u64,
    /// Gallery-fitted projection (spec section 3): components kept at
    /// most; 0 = off. Fitted at refresh time on the gallery's descriptors.
    pub projection_components: u32,
    /// Its whitening: 0 = plain PCA, 1 = full whitening.
    pub projection_beta: f32,
}

impl Default for PostProcessingDefaults {
    fn default() -> Self {
        Self {
            // Chosen by measurement through the service on four labelled
            // sets (BENCHMARKS.md, "Default per-request pipeline"): AQE
            // k 1 then KR over a 100-item shortlist, raw descriptors in
            // the index. The most robust configuration measured.
            shortlist: 100,
            max_shortlist: 2000,
            query_expansion: true,
            qe_k: 1,
            qe_alpha: 0.0,
            k_reciprocal: true,
            kr_k1: 20,
            kr_k2: 6,
            kr_lambda: 0.3,
            dba: false,
            dba_k: 10,
            neighbours_k: 21,
            refresh_debounce_ms: 200,
            // Off: measured through the service it helps on some sets and
            // hurts on others (BENCHMARKS.md, "Gallery-fitted projection").
            projection_components: 0,
            projection_beta: 0.0,
        }
    }
}

impl PostProcessingDefaults {
    pub fn gallery_config(&self) -> crate::gallery::post::PostConfig {
        crate::gallery::post::PostConfig {
            dba: self.dba,
            dba_k: self.dba_k as usize,
            neighbours_k: self.neighbours_k as usize,
            debounce: std::time::Duration::from_millis(self.refresh_debounce_ms),
            projection: (self.projection_components > 0).then(|| {
                crate::gallery::projection::ProjectionConfig {
                    components: self.projection_components as usize,
                    beta: f64::from(self.projection_beta),
                }
            }),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: None,
            http_listen: None,
            thumbnails: Default::default(),
            data_dir: PathBuf::from("data"),
            model: PathBuf::from("models/default.toml"),
            ort_dylib: None,
            log_format: LogFormat::Human,
            max_message_bytes: 32 << 20,
            shutdown_grace_s: 20,
            default_top_k: 10,
            max_top_k: 1000,
            max_batch_queries: 10_000,
            embed: EngineConfig::default(),
            index: HnswParams::default(),
            post_processing: PostProcessingDefaults::default(),
            search: Default::default(),
            metadata: MetadataLimits::default(),
            cpus: 0,
            tls: None,
            auth: crate::security::AuthConfig::default(),
            cluster: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    pub fn ort_dylib(&self) -> PathBuf {
        self.ort_dylib
            .clone()
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ORT_DYLIB))
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("lookalike.redb")
    }

    /// The cores to plan for: `cpus`, else what the process may use
    /// (std reads the cgroup v1/v2 CPU quota and the affinity mask).
    pub fn cpu_budget(&self) -> usize {
        match self.cpus {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Settles the thread counts left at 0 on the CPU budget, so every
    /// pool agrees on it; explicit values stay. Returns the budget.
    pub fn settle_threads(&mut self) -> usize {
        let cpus = self.cpu_budget();
        if self.embed.intra_threads == 0 {
            self.embed.intra_threads = cpus;
        }
        if self.search.max_running == 0 {
            self.search.max_running = cpus;
        }
        cpus
    }

    /// Rejects settings that would fail later in less obvious ways.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(2..=255).contains(&self.index.m) {
            return bad("index.m must be between 2 and 255 (hnsw_rs limit)");
        }
        if self.default_top_k == 0 || self.default_top_k > self.max_top_k {
            return bad("default_top_k must be between 1 and max_top_k");
        }
        if self.embed.max_in_flight == 0 {
            return bad("embed.max_in_flight must be at least 1");
        }
        let pp = &self.post_processing;
        if pp.dba_k == 0 || pp.neighbours_k < pp.dba_k {
            return bad("post_processing needs 1 <= dba_k <= neighbours_k");
        }
        if pp.kr_k1 == 0
            || pp.kr_k2 == 0
            || pp.kr_k1 > pp.neighbours_k
            || pp.kr_k2 > pp.neighbours_k + 1
        {
            return bad("post_processing needs 1 <= kr_k1 <= neighbours_k and 1 <= kr_k2 <= neighbours_k + 1");
        }
        if !(0.0..=1.0).contains(&pp.projection_beta) {
            return bad("post_processing.projection_beta must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&pp.kr_lambda) {
            return bad("post_processing.kr_lambda must be in [0, 1]");
        }
        if pp.shortlist == 0 || pp.shortlist > pp.max_shortlist {
            return bad("post_processing needs 1 <= shortlist <= max_shortlist");
        }
        self.thumbnails.validate().map_err(ConfigError::Invalid)?;
        if self.embed.limits.max_bytes > self.max_message_bytes {
            return bad("embed.max_bytes cannot exceed max_message_bytes");
        }
        if let Some(c) = &self.cluster {
            c.validate().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}
