//! `lookalike model export | inspect`: ONNX files and manifest entries
//! from checkpoints, without Python.

use std::path::PathBuf;

use anyhow::Context;

use crate::embed::manifest::Manifest;
use crate::model::{export, inspect, Arch, ExportOptions, Precision, ResizePolicy};

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Export a checkpoint as an ONNX embedding model and record it in a manifest.
    Export(ExportArgs),
    /// Print what a model file says about itself.
    Inspect { file: PathBuf },
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Architecture: efficientnet_lite0, resnet50, resnet101.
    #[arg(long)]
    pub arch: Arch,
    /// Checkpoint: .safetensors, or a PyTorch .pth/.pt (zip or legacy format).
    #[arg(long)]
    pub weights: PathBuf,
    /// Global descriptors of the CGD head, any string over S, M, G.
    #[arg(long, default_value = "G")]
    pub gd_config: String,
    /// CGD projection width (0 = pooled descriptors, no trained projection).
    #[arg(long, default_value_t = 0)]
    pub feature_dim: usize,
    /// GeM exponent.
    #[arg(long, default_value_t = 3.0)]
    pub gem_p: f32,
    /// Square input side.
    #[arg(long, default_value_t = 224)]
    pub input_size: usize,
    /// Resize then centre-crop, or resize straight to a square.
    #[arg(long, default_value = "shorter-side-center-crop")]
    pub resize_policy: ResizePolicyArg,
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// The .onnx file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Manifest to write this model into (created if missing).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Add the model to the manifest's ensemble instead of replacing it.
    #[arg(long)]
    pub append: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ResizePolicyArg {
    ShorterSideCenterCrop,
    Square,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Inspect { file } => {
            let info = inspect(&file).with_context(|| format!("inspecting {}", file.display()))?;
            println!("{info}");
            Ok(())
        }
        ModelCommand::Export(a) => {
            let mut opts = ExportOptions::new(a.arch, &a.weights, &a.out);
            opts.gd_config = a.gd_config;
            opts.feature_dim = a.feature_dim;
            opts.gem_p = a.gem_p;
            opts.input_size = a.input_size;
            opts.precision = a.precision;
            opts.resize_policy = match a.resize_policy {
                ResizePolicyArg::ShorterSideCenterCrop => ResizePolicy::ShorterSideCenterCrop,
                ResizePolicyArg::Square => ResizePolicy::Square,
            };
            let exported =
                export(&opts).with_context(|| format!("exporting {}", a.weights.display()))?;
            println!(
                "wrote {} ({} bytes, {} parameters, {}-d descriptor)",
                exported.path.display(),
                exported.file_bytes,
                exported.parameter_count,
                exported.manifest.descriptor_dim
            );
            if let Some(path) = a.manifest {
                let mut manifest = match (a.append, path.exists()) {
                    (true, true) => Manifest::read(&path)?,
                    _ => Manifest {
                        name: path
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        backbones: Vec::new(),
                        projection: None,
                    },
                };
                let mut entry = exported.manifest;
                // The manifest refers to the model relative to its own folder.
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                entry.onnx = pathdiff(&exported.path, dir);
                manifest.backbones.retain(|b| b.name != entry.name);
                manifest.backbones.push(entry);
                manifest.write(&path)?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// `file` relative to `dir` when it lies inside it, else as given.
fn pathdiff(file: &std::path::Path, dir: &std::path::Path) -> String {
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (f, d) = (abs(file), abs(dir));
    f.strip_prefix(&d).unwrap_or(file).display().to_string()
}
