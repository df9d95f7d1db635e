//! The `trainer` binary (feature `train`): fine-tune an embedding model on labelled
//! photos and export it for `lookalike serve --model`.
#[cfg(test)]
mod parity_tests;
mod tch_ops;
mod train;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rand::SeedableRng;

use lookalike::model::Arch;

use crate::train::augment::{augment, AugmentConfig, Target};
use crate::train::config::TrainConfig;
use crate::train::data::Dataset;
use crate::train::device::DeviceChoice;
use crate::train::export::export_run;
use crate::train::loader::{load_resized, mix};
use crate::train::run::{input_spec, train, Limits};

#[derive(Parser)]
#[command(name = "trainer", version, about = "Train a lookalike embedding model")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct RunLimits {
    /// Stop (with a checkpoint) after this many steps in total.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop (with a checkpoint) after this many minutes of this invocation.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Do not export when training finishes.
    #[arg(long)]
    no_export: bool,
    /// Log lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Memory for the decoded training images (MiB); images beyond it are
    /// decoded again from disk for each batch (slower, same run).
    #[arg(long, default_value_t = 4096)]
    cache_mb: usize,
    /// Where to train: `cuda` needs a build with feature `cuda` and a GPU;
    /// `auto` takes CUDA when libtorch sees it.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// On CUDA, train in FP32 instead of FP16 autocast with loss scaling.
    #[arg(long)]
    no_mixed_precision: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Start a run in a new run directory.
    Train {
        /// Run directory (created; must not hold a run yet).
        #[arg(long)]
        run_dir: PathBuf,
        #[command(flatten)]
        config: Box<TrainConfig>,
        #[command(flatten)]
        limits: RunLimits,
    },
    /// Continue a run from its newest checkpoint, with its saved config.
    Resume {
        run_dir: PathBuf,
        #[command(flatten)]
        limits: RunLimits,
    },
    /// Export a run's best (else newest) checkpoint to FP32 and FP16 ONNX + manifests.
    Export {
        run_dir: PathBuf,
        /// A specific checkpoint folder instead.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Write a PNG grid of augmented training samples.
    Augment {
        #[arg(long)]
        data: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 16)]
        preview: usize,
        #[arg(long, default_value = "efficientnet_lite0")]
        arch: Arch,
        #[arg(long, default_value_t = 224)]
        input_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "augment.png")]
        out: PathBuf,
        #[command(flatten)]
        augment: AugmentConfig,
    },
}

fn limits(l: &RunLimits) -> anyhow::Result<Limits> {
    Ok(Limits {
        max_steps: l.max_steps,
        max_duration: l
            .max_minutes
            .map(|m| Duration::from_secs_f64(m.max(0.0) * 60.0)),
        export: !l.no_export,
        progress_bar: !l.no_progress,
        stop: Some(stop_on_signals()?),
        cache_bytes: l.cache_mb.saturating_mul(1 << 20),
        device: l.device,
        mixed_precision: !l.no_mixed_precision,
    })
}

/// Ctrl-C or SIGTERM sets the flag the training loop checks after each
/// step (it then checkpoints and returns); a second one exits at once.
fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

fn report(s: &crate::train::run::Summary) {
    println!(
        "{} after {} steps; best validation score {}",
        if s.finished { "finished" } else { "stopped" },
        s.steps,
        s.best_score.map_or("-".into(), |v| format!("{v:.4}"))
    );
    for m in &s.exported {
        println!("exported {}", m.display());
    }
}

fn preview(
    data: &std::path::Path,
    n: usize,
    arch: Arch,
    size: usize,
    seed: u64,
    cfg: &AugmentConfig,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let ds = Dataset::load(data)?;
    let spec = input_spec(arch, size);
    let t = Target {
        size: spec.input_size,
        mean: spec.mean,
        std: spec.std,
    };
    let cols = (n as f64).sqrt().ceil().max(1.0) as u32;
    let rows = (n as u32).div_ceil(cols);
    let s = size as u32;
    let mut grid = image::RgbImage::new(cols * s, rows * s);
    let stride = (ds.samples.len() / n.max(1)).max(1);
    let mut buf = vec![0.0; 3 * size * size];
    for i in 0..n {
        let sample = &ds.samples[(i * stride) % ds.samples.len()];
        let img = load_resized(&sample.path, spec.resize)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(&[seed, i as u64]));
        augment(&img, cfg, &t, &mut rng, &mut buf);
        let plane = size * size;
        let (x0, y0) = ((i as u32 % cols) * s, (i as u32 / cols) * s);
        for y in 0..s {
            for x in 0..s {
                let k = (y * s + x) as usize;
                let px = std::array::from_fn(|c| {
                    ((buf[c * plane + k] * t.std[c] + t.mean[c]) * 255.0)
                        .round()
                        .clamp(0.0, 255.0) as u8
                });
                grid.put_pixel(x0 + x, y0 + y, image::Rgb(px));
            }
        }
    }
    grid.save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({n} samples)", out.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Train {
            run_dir,
            config,
            limits: l,
        } => {
            anyhow::ensure!(
                !run_dir.join(crate::train::run::CONFIG_FILE).exists(),
                "{} already holds a run: use `trainer resume {}`",
                run_dir.display(),
                run_dir.display()
            );
            let s = train(Some(&config), &run_dir, limits(&l)?)?;
            report(&s);
        }
        Command::Resume { run_dir, limits: l } => {
            let s = train(None, &run_dir, limits(&l)?)?;
            report(&s);
        }
        Command::Export {
            run_dir,
            checkpoint,
        } => {
            for e in export_run(&run_dir, checkpoint.as_deref())? {
                println!(
                    "wrote {} ({} bytes, {}-d) and {}",
                    e.model.path.display(),
                    e.model.file_bytes,
                    e.model.manifest.descriptor_dim,
                    e.manifest.display()
                );
            }
        }
        Command::Augment {
            data,
            preview: n,
            arch,
            input_size,
            seed,
            out,
            augment,
        } => preview(&data, n, arch, input_size, seed, &augment, &out)?,
    }
    Ok(())
}
