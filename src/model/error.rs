//! Error type shared by the whole model toolchain.
use std::path::PathBuf;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A parameter whose checkpoint shape differs from what the architecture expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub key: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Why a checkpoint does not fit an architecture. Every problem is listed, not just the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightReport {
    /// Keys the architecture asked for that the checkpoint lacks.
    pub missing: Vec<String>,
    /// Checkpoint keys the architecture never used.
    pub unexpected: Vec<String>,
    pub shape_mismatch: Vec<ShapeMismatch>,
}

impl WeightReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatch.is_empty()
    }
}

impl std::fmt::Display for WeightReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} missing, {} unexpected, {} shape mismatches",
            self.missing.len(),
            self.unexpected.len(),
            self.shape_mismatch.len()
        )?;
        if !self.missing.is_empty() {
            write!(f, "; missing: {}", self.missing.join(", "))?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "; unexpected: {}", self.unexpected.join(", "))?;
        }
        for m in &self.shape_mismatch {
            write!(
                f,
                "; {}: expected {:?}, found {:?}",
                m.key, m.expected, m.found
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unrecognised weight file format: {0}")]
    UnknownFormat(PathBuf),
    #[error("pickle: {0}")]
    Pickle(String),
    #[error("torch checkpoint: {0}")]
    Torch(String),
    #[error("zip archive: {0}")]
    Zip(String),
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("checkpoint does not match architecture: {0}")]
    Weights(WeightReport),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("graph construction: {0}")]
    Graph(String),
    #[error("onnx decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
