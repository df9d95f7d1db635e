//! One training run in its directory: `config.json`, `split.json`, `init.json` (what the
//! pretrained checkpoint lacked), `metrics.jsonl`, `loss.png`, `checkpoints/`, `best/`,
//! `export/`. Resuming continues from the newest checkpoint with the saved config.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::Tensor;

use crate::tch_ops::{from_host, to_host, Mode, TchOps, TchTensor};
use crate::train::augment::Target;
use crate::train::checkpoint::{self, Progress, BEST};
use crate::train::config::TrainConfig;
use crate::train::data::{split, Dataset, Split};
use crate::train::device::{self, DeviceChoice, LossScale};
use crate::train::error::{Result, TrainError};
use crate::train::images::Images;
use crate::train::loader::{epoch_batches, mix, Loader, LoaderSpec};
use crate::train::loss::Criterion;
use crate::train::optim::{Group, Optimizer};
use crate::train::params::{self, ModelVars};
use crate::train::schedule::Schedule;
use crate::train::validate::{embed, leave_one_out, ValSet};
use lookalike::embed::preprocess::InputSpec;
use lookalike::model::export::{ExportOptions, LITE0_PTH};
use lookalike::model::forward::forward;
use lookalike::model::head::HeadConfig;
use lookalike::model::weights::{load_weights, StateDict};
use lookalike::model::{Arch, ResizePolicy};

pub const CONFIG_FILE: &str = "config.json";
pub const SPLIT_FILE: &str = "split.json";
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Per-invocation stopping points (not part of the run's definition).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Stop (with a checkpoint) once this many steps are done in total.
    pub max_steps: Option<usize>,
    pub max_duration: Option<Duration>,
    /// Export at the end of training (`trainer export` does it later otherwise).
    pub export: bool,
    pub progress_bar: bool,
    /// Set by Ctrl-C / SIGTERM: stop after the current step, with a
    /// checkpoint, as at the other limits.
    pub stop: Option<Arc<AtomicBool>>,
    /// Memory for decoded training images; the rest are read again per batch.
    pub cache_bytes: usize,
    pub device: DeviceChoice,
    /// FP16 autocast with loss scaling where the device supports it (CUDA).
    pub mixed_precision: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub steps: usize,
    pub finished: bool,
    pub best_score: Option<f64>,
    pub exported: Vec<PathBuf>,
}

fn run_err(path: &Path, msg: impl Into<String>) -> TrainError {
    TrainError::Run {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

pub fn read_config(run: &Path) -> Result<TrainConfig> {
    let p = run.join(CONFIG_FILE);
    let text = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
    Ok(serde_json::from_slice(&text)?)
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?).map_err(|e| TrainError::io(path, e))
}

/// The serving preprocessing for `arch` at `size` (shorter side to 256/224 x size, centre crop).
pub fn input_spec(arch: Arch, size: usize) -> InputSpec {
    let mut o = ExportOptions::new(arch, "", "");
    o.input_size = size;
    let pre = arch.preprocess();
    InputSpec {
        input_size: size as u32,
        resize: o.resize() as u32,
        policy: ResizePolicy::ShorterSideCenterCrop,
        mean: pre.mean,
        std: pre.std,
    }
}

fn pretrained(cfg: &TrainConfig) -> Result<Option<StateDict>> {
    let path = match &cfg.weights {
        Some(p) if p.as_os_str() == "none" => return Ok(None),
        Some(p) => p.clone(),
        None if cfg.arch == Arch::EfficientnetLite0 => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(LITE0_PTH)
        }
        None => {
            return Err(TrainError::InvalidOption(format!(
            "{} has no default checkpoint: pass --weights (a timm checkpoint) or --weights none",
            cfg.arch
        )))
        }
    };
    Ok(Some(load_weights(&path)?))
}

/// Metrics JSONL writer; on resume, lines after the checkpoint's step are dropped first.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(run: &Path, keep_until_step: Option<usize>) -> Result<Self> {
        let path = run.join(METRICS_FILE);
        if let Some(step) = keep_until_step {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            std::fs::write(&path, body).map_err(|e| TrainError::io(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { file, path })
    }

    fn log(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| TrainError::io(&self.path, e))
    }
}

struct State {
    model: ModelVars,
    criterion: Criterion,
    opt: Optimizer,
    progress: Progress,
    /// With mixed precision on.
    amp: Option<LossScale>,
}

const AMP_SCALE: &str = "amp.scale";
const AMP_GOOD_STEPS: &str = "amp.good_steps";

impl State {
    fn trainer_state(&self) -> Result<StateDict> {
        let mut s = StateDict::new();
        for (k, t) in &self.criterion.vars.tensors {
            s.insert(k.clone(), to_host(t)?);
        }
        for (prefix, map) in [("optim.m.", &self.opt.m), ("optim.v.", &self.opt.v)] {
            for (k, t) in map {
                s.insert(format!("{prefix}{k}"), to_host(t)?);
            }
        }
        s.insert(
            "optim.t".into(),
            lookalike::model::tensor::HostTensor::scalar(self.opt.t as f32),
        );
        if let Some(a) = &self.amp {
            use lookalike::model::tensor::HostTensor;
            s.insert(AMP_SCALE.into(), HostTensor::scalar(a.scale as f32));
            s.insert(
                AMP_GOOD_STEPS.into(),
                HostTensor::scalar(a.good_steps as f32),
            );
        }
        Ok(s)
    }

    fn restore(&mut self, c: &checkpoint::Checkpoint) -> Result<()> {
        params::load_into(&self.model.vars, &c.model)?;
        let _guard = tch::no_grad_guard();
        let get = |k: &str| {
            c.trainer
                .get(k)
                .ok_or_else(|| TrainError::Data(format!("checkpoint lacks {k}")))
        };
        for (k, t) in self.criterion.vars.tensors.iter_mut() {
            t.f_copy_(&from_host(get(k)?)?)?;
        }
        for (prefix, map) in [("optim.m.", &mut self.opt.m), ("optim.v.", &mut self.opt.v)] {
            for (k, t) in map.iter_mut() {
                t.f_copy_(&from_host(get(&format!("{prefix}{k}"))?)?)?;
            }
        }
        self.opt.t = get("optim.t")?.data.first().copied().unwrap_or(0.0) as u64;
        // A checkpoint written without mixed precision (e.g. on the CPU)
        // starts the loss scale afresh.
        if let (Some(a), Some(scale), Some(good)) = (
            self.amp.as_mut(),
            c.trainer.get(AMP_SCALE).and_then(|t| t.data.first()),
            c.trainer.get(AMP_GOOD_STEPS).and_then(|t| t.data.first()),
        ) {
            a.scale = f64::from(*scale);
            a.good_steps = *good as u64;
        }
        self.progress = c.progress.clone();
        Ok(())
    }

    fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save(
            dir,
            &self.model.vars.to_state()?,
            &self.trainer_state()?,
            &self.progress,
        )
    }
}

/// Starts a run in `run` (which must not hold one yet) or resumes the one there.
pub fn train(cfg: Option<&TrainConfig>, run: &Path, limits: Limits) -> Result<Summary> {
    // Before anything is written: a device that is not there leaves no run behind.
    let device = device::resolve(limits.device)?;
    let resume = run.join(CONFIG_FILE).exists();
    let cfg = match (cfg, resume) {
        (_, true) => read_config(run)?,
        (Some(c), false) => {
            c.validate()?;
            std::fs::create_dir_all(run).map_err(|e| TrainError::io(run, e))?;
            write_json(&run.join(CONFIG_FILE), c)?;
            c.clone()
        }
        (None, false) => return Err(run_err(run, "no run to resume (config.json missing)")),
    };
    cfg.validate()?;
    let amp = device::mixed_precision(device, limits.mixed_precision);
    tracing::info!(?device, mixed_precision = amp.is_some(), "training device");
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let ds = Dataset::load(&cfg.data)?;
    let sp = split(&ds, cfg.split, cfg.val_fraction, cfg.seed)?;
    let split_path = run.join(SPLIT_FILE);
    if resume {
        let text = std::fs::read(&split_path).map_err(|e| TrainError::io(&split_path, e))?;
        let saved: Split = serde_json::from_value(
            serde_json::from_slice::<serde_json::Value>(&text)?["split"].clone(),
        )?;
        if saved != sp {
            return Err(run_err(run, "the data no longer gives the recorded split"));
        }
    } else {
        write_json(
            &split_path,
            &json!({ "seed": cfg.seed, "kind": cfg.split, "split": sp, "dataset": ds }),
        )?;
    }

    let head = HeadConfig::parse(&cfg.gd_config, cfg.feature_dim, cfg.gem_p)?;
    if cfg.feature_dim == 0 {
        return Err(TrainError::InvalidOption(
            "training needs a projection head (--feature-dim > 0)".into(),
        ));
    }
    // Fresh head and class-centre values come from torch's generator: seed it first.
    tch::manual_seed(mix(&[cfg.seed, 0]) as i64 & i64::MAX);
    let model = params::init(cfg.arch, &head, pretrained(&cfg)?, &cfg.freeze, device)?;
    let r = &model.report;
    tracing::info!(
        fresh = r.missing.len(),
        unused = r.unexpected.len(),
        "initial weights: {} keys not in the checkpoint (initialised fresh: {}), {} checkpoint keys unused",
        r.missing.len(),
        r.missing.join(", "),
        r.unexpected.len()
    );
    if !resume {
        write_json(
            &run.join("init.json"),
            &json!({ "fresh": model.report.missing, "unused": model.report.unexpected }),
        )?;
    }
    let channels = cfg.arch.feature_channels();
    let criterion = Criterion::new(&cfg, &head, channels, sp.train_classes, device)?;
    let mut groups: Vec<Group> = model
        .trainable
        .iter()
        .map(|t| Group {
            key: t.key.clone(),
            tensor: t.tensor.shallow_clone(),
            decay: t.decay,
            lr_mult: if t.head { cfg.head_lr_mult } else { 1.0 },
        })
        .collect();
    groups.extend(
        criterion
            .params()
            .into_iter()
            .map(|(key, tensor, decay, fast)| Group {
                key,
                tensor,
                decay,
                lr_mult: if fast { cfg.head_lr_mult } else { 1.0 },
            }),
    );
    let opt = Optimizer::new(cfg.optimizer, cfg.momentum, cfg.weight_decay, groups)?;
    let mut st = State {
        model,
        criterion,
        opt,
        progress: Progress {
            step: 0,
            epoch: 0,
            step_in_epoch: 0,
            seed: cfg.seed,
            lr: 0.0,
            best_score: None,
            best_step: None,
        },
        amp,
    };
    if resume {
        if let Some(dir) = checkpoint::list(run)?.pop() {
            st.restore(&checkpoint::load(&dir)?)?;
            tracing::info!(step = st.progress.step, "resumed from {}", dir.display());
        }
    }
    let mut metrics = MetricsLog::open(run, resume.then_some(st.progress.step))?;

    let spec = input_spec(cfg.arch, cfg.input_size);
    let train_paths: Vec<&Path> = sp
        .train
        .iter()
        .map(|&(i, _)| ds.samples[i].path.as_path())
        .collect();
    let t0 = Instant::now();
    let images = Arc::new(Images::load(&train_paths, spec.resize, limits.cache_bytes)?);
    let val_items: Vec<(&Path, usize)> = sp
        .val
        .iter()
        .map(|&i| (ds.samples[i].path.as_path(), ds.samples[i].class))
        .collect();
    let val = ValSet::prepare(&val_items, &spec)?;
    let (cached, cached_bytes) = images.cached();
    tracing::info!(
        train = images.len(),
        cached,
        cached_mb = cached_bytes >> 20,
        val = val.len(),
        classes = sp.train_classes,
        secs = t0.elapsed().as_secs_f64(),
        "images decoded and cached"
    );
    // Items for the sampler: (cache index, label).
    let items: Vec<(usize, usize)> = sp
        .train
        .iter()
        .enumerate()
        .map(|(j, &(_, l))| (j, l))
        .collect();
    let steps_per_epoch = items.len() / cfg.batch_size;
    if steps_per_epoch == 0 {
        return Err(TrainError::Data(format!(
            "{} training images, fewer than one batch of {}",
            items.len(),
            cfg.batch_size
        )));
    }
    let total = steps_per_epoch * cfg.epochs;
    let schedule = Schedule {
        kind: cfg.schedule,
        base: cfg.lr,
        warmup: ((cfg.warmup_epochs * steps_per_epoch as f64).round() as usize).min(total),
        total,
    };
    let target = Target {
        size: spec.input_size,
        mean: spec.mean,
        std: spec.std,
    };
    let mode = Mode {
        train: true,
        bn_batch_stats: !cfg.freeze_bn,
        bn_momentum: cfg.bn_momentum,
        drop_path: cfg.drop_path,
    };
    let started = Instant::now();
    let bar = limits.progress_bar.then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_position(st.progress.step as u64);
        b
    });
    let mut finished = st.progress.step >= total;
    let mut stopped = false;

    while !finished && !stopped {
        let epoch = st.progress.epoch;
        let skip = st.progress.step_in_epoch;
        let batches: Vec<(usize, Vec<(usize, usize)>)> =
            epoch_batches(&items, cfg.batch_size, cfg.per_class, cfg.seed, epoch)
                .into_iter()
                .enumerate()
                .skip(skip)
                .map(|(j, b)| (epoch * steps_per_epoch + j, b))
                .collect();
        let loader = Loader::start(
            LoaderSpec {
                images: images.clone(),
                augment: Arc::new(cfg.augment.clone()),
                target,
                seed: cfg.seed,
                workers: cfg.workers,
            },
            batches,
        );
        let mut last_tick = Instant::now();
        for batch in loader {
            let batch = batch?;
            let step = batch.step;
            let n = batch.labels.len() as i64;
            let s = target.size as i64;
            tch::manual_seed(mix(&[cfg.seed, step as u64, 2]) as i64 & i64::MAX);
            let x = Tensor::f_from_slice(&batch.images)?
                .f_reshape([n, 3, s, s])?
                .f_to_device(device)?;
            let labels = Tensor::f_from_slice(&batch.labels)?.f_to_device(device)?;
            let mut ops = TchOps::new(&st.model.vars, mode);
            let criterion = &st.criterion;
            let out = tch::autocast(st.amp.is_some(), || -> Result<_> {
                let fwd = forward(&mut ops, cfg.arch, &head, &TchTensor(x))?;
                criterion.forward(&fwd, &labels, mode)
            })?;
            let loss = out.loss.f_double_value(&[])?;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { step, loss });
            }
            let scale = st.amp.as_ref().map_or(1.0, |a| a.scale);
            match &st.amp {
                Some(_) => out.loss.f_mul_scalar(scale)?.f_backward()?,
                None => out.loss.f_backward()?,
            }
            let grad_norm = st.opt.clip_grad_norm(cfg.clip_grad, scale)?;
            let lr = schedule.lr(step);
            // With loss scaling, a step whose gradients overflowed is skipped.
            if st.amp.as_mut().is_none_or(|a| a.update(grad_norm)) {
                st.opt.step(lr)?;
            } else {
                st.opt.zero_grad()?;
            }
            st.progress.step = step + 1;
            st.progress.step_in_epoch = step + 1 - epoch * steps_per_epoch;
            st.progress.lr = lr;
            let dt = last_tick.elapsed().as_secs_f64().max(1e-9);
            last_tick = Instant::now();
            let done = st.progress.step;
            let rate = n as f64 / dt;
            let eta = (total - done) as f64 * dt;
            metrics.log(json!({
                "kind": "step", "step": done, "epoch": epoch, "loss": loss, "accuracy": out.accuracy,
                "lr": lr, "grad_norm": grad_norm, "images_per_s": rate, "eta_s": eta,
            }))?;
            if let Some(b) = &bar {
                b.set_position(done as u64);
                b.set_message(format!(
                    "loss {loss:.3} acc {:.2} {rate:.1} img/s",
                    out.accuracy
                ));
            } else if done.is_multiple_of(10) || done == 1 {
                tracing::info!(
                    step = done,
                    epoch,
                    loss,
                    accuracy = out.accuracy,
                    lr,
                    images_per_s = rate,
                    "train"
                );
            }
            let interrupted = (limits.stop.as_ref()).is_some_and(|f| f.load(Ordering::Relaxed));
            if interrupted {
                tracing::warn!(
                    step = done,
                    "interrupted: checkpointing; `trainer resume` continues"
                );
            }
            let at_limit = interrupted
                || limits.max_steps.is_some_and(|m| done >= m)
                || limits.max_duration.is_some_and(|d| started.elapsed() >= d);
            if done.is_multiple_of(cfg.checkpoint_every.max(1)) || at_limit {
                st.save(&checkpoint::step_dir(run, done))?;
                checkpoint::prune(run, cfg.keep_checkpoints)?;
            }
            if at_limit {
                stopped = true;
                break;
            }
        }
        if stopped {
            break;
        }
        if st.progress.step != (epoch + 1) * steps_per_epoch {
            return Err(TrainError::Data(format!(
                "the loader stopped early in epoch {epoch} (at step {})",
                st.progress.step
            )));
        }
        // Epoch end.
        st.progress.epoch = epoch + 1;
        st.progress.step_in_epoch = 0;
        finished = st.progress.epoch >= cfg.epochs;
        let validate = !val.is_empty()
            && (finished || (cfg.val_every > 0 && (epoch + 1).is_multiple_of(cfg.val_every)));
        if validate {
            let desc = embed(
                &st.model.vars,
                cfg.arch,
                &head,
                &val,
                cfg.batch_size,
                device,
            )?;
            let m = leave_one_out(&desc, &val.labels)?;
            tracing::info!(
                epoch,
                top1 = m.top1,
                map10 = m.map10,
                p10 = m.p10,
                score = m.score,
                "validation"
            );
            metrics.log(json!({
                "kind": "val", "step": st.progress.step, "epoch": epoch, "top1": m.top1,
                "map10": m.map10, "p10": m.p10, "score": m.score, "n_queries": m.n_queries,
            }))?;
            if st.progress.best_score.is_none_or(|b| m.score > b) {
                st.progress.best_score = Some(m.score);
                st.progress.best_step = Some(st.progress.step);
                st.save(&run.join(BEST))?;
            }
        }
        st.save(&checkpoint::step_dir(run, st.progress.step))?;
        checkpoint::prune(run, cfg.keep_checkpoints)?;
        if let Err(e) = crate::train::chart::draw_run(run) {
            tracing::warn!("loss chart: {e}");
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    let mut exported = Vec::new();
    if finished && limits.export {
        for e in crate::train::export::export_run(run, None)? {
            exported.push(e.manifest);
        }
    }
    Ok(Summary {
        steps: st.progress.step,
        finished,
        best_score: st.progress.best_score,
        exported,
    })
}
