//! Checkpoints in the run directory, each a folder written under a temporary name and
//! renamed into place (a crash never leaves a half-written one):
//! `model.safetensors` (exactly the export's keys: `lookalike model export` takes it),
//! `trainer.safetensors` (class centres and optimiser moments), `progress.json`.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::error::{Result, TrainError};
use lookalike::model::weights::safetensors::save_safetensors;
use lookalike::model::weights::{load_weights, StateDict};

pub const MODEL_FILE: &str = "model.safetensors";
pub const TRAINER_FILE: &str = "trainer.safetensors";
pub const PROGRESS_FILE: &str = "progress.json";
pub const CHECKPOINTS: &str = "checkpoints";
pub const BEST: &str = "best";

/// Where training stands. Every random draw (batch order, augmentation, dropout) is a
/// function of the seed and the step, so this is also the complete RNG and sampler state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimiser steps done.
    pub step: usize,
    /// Epoch the next step belongs to, and its position in that epoch.
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub seed: u64,
    /// Learning rate of the last step (the schedule is a function of `step`).
    pub lr: f64,
    pub best_score: Option<f64>,
    pub best_step: Option<usize>,
}

pub struct Checkpoint {
    pub model: StateDict,
    pub trainer: StateDict,
    pub progress: Progress,
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| TrainError::io(path, e))
}

/// Writes `dir` atomically (sibling `.tmp` folder, then rename over any old one).
pub fn save(dir: &Path, model: &StateDict, trainer: &StateDict, progress: &Progress) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    write(&tmp.join(MODEL_FILE), &save_safetensors(model))?;
    write(&tmp.join(TRAINER_FILE), &save_safetensors(trainer))?;
    write(
        &tmp.join(PROGRESS_FILE),
        &serde_json::to_vec_pretty(progress)?,
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))
}

pub fn load(dir: &Path) -> Result<Checkpoint> {
    let p = dir.join(PROGRESS_FILE);
    let text = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
    Ok(Checkpoint {
        model: load_weights(&dir.join(MODEL_FILE))?,
        trainer: load_weights(&dir.join(TRAINER_FILE))?,
        progress: serde_json::from_slice(&text)?,
    })
}

pub fn step_dir(run: &Path, step: usize) -> PathBuf {
    run.join(CHECKPOINTS).join(format!("step-{step:08}"))
}

/// Completed step checkpoints, oldest first.
pub fn list(run: &Path) -> Result<Vec<PathBuf>> {
    let dir = run.join(CHECKPOINTS);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| TrainError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.extension().is_none()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Deletes all but the `keep` newest step checkpoints.
pub fn prune(run: &Path, keep: usize) -> Result<()> {
    let all = list(run)?;
    let n = all.len().saturating_sub(keep.max(1));
    for p in &all[..n] {
        std::fs::remove_dir_all(p).map_err(|e| TrainError::io(p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookalike::model::tensor::HostTensor;

    #[test]
    fn save_load_list_prune() {
        let run = tempfile::tempdir().unwrap();
        let mut model = StateDict::new();
        model.insert(
            "a.weight".into(),
            HostTensor::new(vec![2], vec![1.0, 2.0]).unwrap(),
        );
        let progress = Progress {
            step: 5,
            epoch: 1,
            step_in_epoch: 2,
            seed: 3,
            lr: 0.1,
            best_score: None,
            best_step: None,
        };
        for step in [5, 10, 15] {
            save(
                &step_dir(run.path(), step),
                &model,
                &StateDict::new(),
                &progress,
            )
            .unwrap();
        }
        let c = load(&step_dir(run.path(), 10)).unwrap();
        assert_eq!(c.model, model);
        assert_eq!(c.progress, progress);
        prune(run.path(), 2).unwrap();
        let left = list(run.path()).unwrap();
        assert_eq!(
            left,
            vec![step_dir(run.path(), 10), step_dir(run.path(), 15)]
        );
    }
}
