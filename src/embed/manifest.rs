//! The ensemble manifest (`models/<name>.toml`): which ONNX backbones, in
//! which order, how each wants its input, and how their descriptors are
//! combined (spec section 1.4). Paths are relative to the manifest's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::preprocess::InputSpec;
use super::EmbedError;
use crate::model::ManifestEntry;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(rename = "backbone")]
    pub backbones: Vec<Backbone>,
    /// Optional linear projection after concatenation (PCA / whitening).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<Projection>,
}

/// One backbone: the entry `lookalike model export` writes.
pub type Backbone = ManifestEntry;

/// `y = (x - mean) W`, stored as one little-endian f32 file: `mean`
/// (in_dims values) then `W` row-major (in_dims x out_dims).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Projection {
    pub file: PathBuf,
    pub out_dims: usize,
}

/// The preprocessing a backbone's manifest entry asks for.
pub fn input_spec(b: &Backbone) -> InputSpec {
    InputSpec {
        input_size: b.input_size as u32,
        resize: b.resize as u32,
        policy: b.resize_policy,
        mean: b.mean,
        std: b.std,
    }
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, EmbedError> {
        let bad = |msg: String| EmbedError::Manifest {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        toml::from_str(&text).map_err(|e| bad(e.to_string()))
    }

    pub fn write(&self, path: &Path) -> Result<(), EmbedError> {
        let bad = |msg: String| EmbedError::Manifest {
            path: path.to_path_buf(),
            msg,
        };
        let text = toml::to_string_pretty(self).map_err(|e| bad(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| bad(e.to_string()))
    }
}

/// A manifest read from disk, with its paths resolved and its fingerprint.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// Hash of the manifest and every file it names: galleries remember it
    /// so that descriptors of different models never mix.
    pub fingerprint: String,
}

impl LoadedManifest {
    pub fn load(path: &Path) -> Result<Self, EmbedError> {
        let bad = |msg: String| EmbedError::Manifest {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if manifest.backbones.is_empty() {
            return Err(bad("the manifest lists no [[backbone]]".into()));
        }
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut hash = Sha256::new();
        hash.update(text.as_bytes());
        for b in &manifest.backbones {
            if b.input_size == 0 || b.descriptor_dim == 0 || b.std.contains(&0.0) {
                return Err(bad(format!(
                    "backbone {}: input_size, descriptor_dim and std must be non-zero",
                    b.name
                )));
            }
            let file = dir.join(&b.onnx);
            let bytes =
                std::fs::read(&file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
            hash.update(&bytes);
        }
        if let Some(p) = &manifest.projection {
            let file = dir.join(&p.file);
            let bytes =
                std::fs::read(&file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
            hash.update(&bytes);
        }
        let fingerprint = hex::encode(&hash.finalize()[..8]);
        Ok(Self {
            manifest,
            dir,
            fingerprint,
        })
    }

    pub fn path_of(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    /// Dimension of the concatenated backbone descriptors.
    pub fn dims_before_projection(&self) -> usize {
        self.manifest
            .backbones
            .iter()
            .map(|b| b.descriptor_dim)
            .sum()
    }

    /// Dimension of the ensemble's final descriptor.
    pub fn dims(&self) -> usize {
        match &self.manifest.projection {
            Some(p) => p.out_dims,
            None => self.dims_before_projection(),
        }
    }
}
