//! A run's checkpoint -> FP32 and FP16 ONNX through the existing writer, each with a
//! manifest `lookalike serve --model` takes.
use std::path::{Path, PathBuf};

use crate::train::checkpoint::{list, BEST, MODEL_FILE};
use crate::train::config::TrainConfig;
use crate::train::error::{Result, TrainError};
use crate::train::run::read_config;
use lookalike::embed::manifest::Manifest;
use lookalike::model::{export, ExportOptions, ExportedModel, Precision};

pub const EXPORT_DIR: &str = "export";

pub struct Exported {
    pub model: ExportedModel,
    pub manifest: PathBuf,
}

/// The best checkpoint when validation ran, else the newest.
pub fn chosen_checkpoint(run: &Path) -> Result<PathBuf> {
    let best = run.join(BEST);
    if best.join(MODEL_FILE).exists() {
        return Ok(best);
    }
    list(run)?.pop().ok_or_else(|| TrainError::Run {
        path: run.to_path_buf(),
        msg: "no checkpoint to export".into(),
    })
}

/// Exports `checkpoint` (default: `chosen_checkpoint`) into `run/export/`.
pub fn export_run(run: &Path, checkpoint: Option<&Path>) -> Result<Vec<Exported>> {
    let cfg = read_config(run)?;
    let ckpt = match checkpoint {
        Some(c) => c.to_path_buf(),
        None => chosen_checkpoint(run)?,
    };
    let dir = run.join(EXPORT_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    [Precision::Fp32, Precision::Fp16]
        .into_iter()
        .map(|p| export_one(&cfg, &ckpt.join(MODEL_FILE), &dir, p))
        .collect()
}

fn export_one(
    cfg: &TrainConfig,
    weights: &Path,
    dir: &Path,
    precision: Precision,
) -> Result<Exported> {
    let stem = format!(
        "{}_{}{}_{}",
        cfg.arch,
        cfg.gd_config,
        cfg.export_size(),
        precision.as_str()
    );
    let mut opts = ExportOptions::new(cfg.arch, weights, dir.join(format!("{stem}.onnx")));
    opts.gd_config = cfg.gd_config.clone();
    opts.feature_dim = cfg.feature_dim;
    opts.gem_p = cfg.gem_p;
    opts.input_size = cfg.export_size();
    opts.precision = precision;
    let model = export(&opts)?;
    let manifest = Manifest {
        name: stem.clone(),
        backbones: vec![model.manifest.clone()],
        projection: None,
    };
    let path = dir.join(format!("{stem}.toml"));
    manifest.write(&path).map_err(|e| TrainError::Run {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    Ok(Exported {
        model,
        manifest: path,
    })
}
