//! The trainer's error type.
use std::path::PathBuf;

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    List {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("data: {0}")]
    Data(String),
    #[error("image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: lookalike::embed::preprocess::ImageError,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("run directory {path}: {msg}")]
    Run { path: PathBuf, msg: String },
    #[error(transparent)]
    Model(#[from] lookalike::model::ModelError),
    #[error("tch: {0}")]
    Tch(#[from] tch::TchError),
    #[error("metrics: {0}")]
    Metrics(#[from] lookalike::eval::metrics::MetricsError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("training diverged at step {step}: loss {loss}")]
    Diverged { step: usize, loss: f64 },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
