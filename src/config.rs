//! Server configuration: defaults, then a TOML file, then environment
//! variables and flags (applied by the binary).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::embed::EngineConfig;
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
    /// Folder holding the gallery database.
    pub data_dir: PathBuf,
    /// Ensemble manifest (`models/<name>.toml`).
    pub model: PathBuf,
    /// libonnxruntime; `ORT_DYLIB_PATH` overrides, then [`DEFAULT_ORT_DYLIB`].
    pub ort_dylib: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    pub default_top_k: u32,
    pub max_top_k: u32,
    pub embed: EngineConfig,
    pub index: HnswParams,
    pub post_processing: PostProcessingDefaults,
}

/// Server-side defaults of the per-request post-processing options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostProcessingDefaults {
    /// Candidates fetched before query expansion re-searches.
    pub shortlist: u32,
    pub query_expansion: bool,
    pub qe_k: u32,
    /// 0 = AQE, > 0 = alpha-QE.
    pub qe_alpha: f32,
}

impl Default for PostProcessingDefaults {
    fn default() -> Self {
        Self {
            shortlist: 100,
            query_expansion: false,
            qe_k: 1,
            qe_alpha: 0.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("data"),
            model: PathBuf::from("models/default.toml"),
            ort_dylib: None,
            log_format: LogFormat::Human,
            max_message_bytes: 32 << 20,
            default_top_k: 10,
            max_top_k: 1000,
            embed: EngineConfig::default(),
            index: HnswParams::default(),
            post_processing: PostProcessingDefaults::default(),
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

    /// Rejects settings that would fail later in less obvious ways.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(2..=255).contains(&self.index.m) {
            return bad("index.m must be between 2 and 255 (hnsw_rs limit)");
        }
        if self.default_top_k == 0 || self.default_top_k > self.max_top_k {
            return bad("default_top_k must be between 1 and max_top_k");
        }
        if self.embed.max_batch == 0 || self.embed.max_in_flight == 0 {
            return bad("embed.max_batch and embed.max_in_flight must be at least 1");
        }
        if self.embed.limits.max_bytes > self.max_message_bytes {
            return bad("embed.max_bytes cannot exceed max_message_bytes");
        }
        Ok(())
    }
}
