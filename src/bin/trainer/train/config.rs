//! Everything a run is defined by: command-line flags, saved as `config.json` in the run
//! directory so that a resumed run continues with exactly the same settings.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::train::augment::AugmentConfig;
use crate::train::error::{Result, TrainError};
use lookalike::model::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Additive cosine margin: s (cos - m) on the true class (DIGIX 2020).
    Cosface,
    /// Additive angular margin: s cos(theta + m).
    Arcface,
    /// Cosine softmax, no margin: s cos.
    Softmax,
    /// The CGD paper's recipe: batch-hard triplet on the descriptor (--triplet-margin)
    /// plus an auxiliary classifier on the first branch's pooled features
    /// (--label-smoothing, --temperature); needs --per-class.
    Cgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    Adam,
    /// Adam with decoupled weight decay (not on norms and biases).
    Adamw,
    /// SGD with Nesterov momentum.
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warm-up, then cosine decay to zero, per iteration.
    Cosine,
    /// Linear warm-up, then linear decay to zero.
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// Hold out a fraction of every class's images.
    PerClass,
    /// Hold out whole classes (products the model never sees).
    Classes,
}

#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Training data: a folder per class, or a list file `path,label[,...]`
    /// (paths relative to the list file).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "efficientnet_lite0")]
    pub arch: Arch,
    /// Initial weights (.pth / .safetensors); default for efficientnet_lite0: the
    /// ImageNet checkpoint scripts/setup.sh fetches. "none" trains from scratch.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// CGD global descriptors (letters S, M, G).
    #[arg(long, default_value = "SMG")]
    pub gd_config: String,
    /// Descriptor length (split evenly over the branches).
    #[arg(long, default_value_t = 1536)]
    pub feature_dim: usize,
    #[arg(long, default_value_t = 3.0)]
    pub gem_p: f32,
    /// Square training crop; validation and export resize like the server does.
    #[arg(long, default_value_t = 224)]
    pub input_size: usize,
    /// Input side of the exported model (default: input_size).
    #[arg(long)]
    pub export_size: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Class-balanced batches: this many images per class (0 = plain shuffle).
    #[arg(long, default_value_t = 0)]
    pub per_class: usize,
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: OptimKind,
    /// Peak learning rate of the backbone.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Learning-rate multiplier for the head and the loss's class weights.
    #[arg(long, default_value_t = 10.0)]
    pub head_lr_mult: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// SGD momentum; Adam beta1.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleKind,
    /// Warm-up length in epochs (fractional allowed).
    #[arg(long, default_value_t = 1.0)]
    pub warmup_epochs: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 5.0)]
    pub clip_grad: f64,
    #[arg(long, value_enum, default_value = "cosface")]
    pub loss: LossKind,
    /// Logit scale s.
    #[arg(long, default_value_t = 30.0)]
    pub scale: f64,
    /// Margin m (cosine for CosFace, radians for ArcFace).
    #[arg(long, default_value_t = 0.4)]
    pub margin: f64,
    /// CGD recipe: margin of the batch-hard triplet loss.
    #[arg(long, default_value_t = 0.1)]
    #[serde(default = "defaults::triplet_margin")]
    pub triplet_margin: f64,
    /// CGD recipe: label smoothing of the auxiliary classification.
    #[arg(long, default_value_t = 0.1)]
    #[serde(default = "defaults::label_smoothing")]
    pub label_smoothing: f64,
    /// CGD recipe: the auxiliary classification's logits are divided by this.
    #[arg(long, default_value_t = 0.5)]
    #[serde(default = "defaults::temperature")]
    pub temperature: f64,
    /// Keep batch-norm statistics frozen (affine parameters still train).
    #[arg(long)]
    pub freeze_bn: bool,
    /// Parameters whose key starts with one of these (comma-separated) are frozen,
    /// e.g. `_conv_stem,_bn0,_blocks.0.` for EfficientNet's first stage.
    #[arg(long, value_delimiter = ',')]
    pub freeze: Vec<String>,
    #[arg(long, default_value_t = 0.1)]
    pub bn_momentum: f64,
    /// Stochastic-depth rate at the deepest block.
    #[arg(long, default_value_t = 0.2)]
    pub drop_path: f64,
    #[arg(long, value_enum, default_value = "per-class")]
    pub split: SplitKind,
    /// Fraction held out for validation (of each class's images, or of the classes).
    #[arg(long, default_value_t = 0.25)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Loader threads decoding and augmenting ahead of the training step.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Torch intra-op threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Write a checkpoint every this many steps (and at every epoch end).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// How many of the latest step checkpoints to keep (the best is kept apart).
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Validate every this many epochs (0 = never; the last epoch always validates).
    #[arg(long, default_value_t = 1)]
    pub val_every: usize,
    #[command(flatten)]
    pub augment: AugmentConfig,
}

/// Values for settings that configs saved by older trainers lack (the CLI defaults).
mod defaults {
    pub fn triplet_margin() -> f64 {
        0.1
    }
    pub fn label_smoothing() -> f64 {
        0.1
    }
    pub fn temperature() -> f64 {
        0.5
    }
}

impl TrainConfig {
    /// Settings that cannot train, refused before a run directory is made.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::InvalidOption(m));
        if self.batch_size < 2 {
            return bad("batch size must be at least 2 (batch norm)".into());
        }
        if self.loss == LossKind::Cgd {
            let per = self.per_class;
            if per < 2 || self.batch_size / per < 2 {
                return bad(format!(
                    "the CGD recipe's batch-hard triplet needs class-balanced batches of at \
                     least 2 classes with at least 2 images each: e.g. --per-class 4 with \
                     --batch-size 32 (have --per-class {per}, --batch-size {})",
                    self.batch_size
                ));
            }
            let ok = self.triplet_margin >= 0.0
                && (0.0..1.0).contains(&self.label_smoothing)
                && self.temperature > 0.0;
            if !ok {
                return bad(format!(
                    "CGD recipe: --triplet-margin must be >= 0, --label-smoothing in [0, 1), \
                     --temperature > 0 (have {}, {}, {})",
                    self.triplet_margin, self.label_smoothing, self.temperature
                ));
            }
        }
        Ok(())
    }

    pub fn export_size(&self) -> usize {
        self.export_size.unwrap_or(self.input_size)
    }
}
