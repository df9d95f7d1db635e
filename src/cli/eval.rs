//! `lookalike eval`: embed a labelled query list and gallery list with the
//! configured ensemble, run post-processing stages in the spec's order and
//! score the ranking after each stage (Top-1, mAP@10, P@10, score).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;

use super::eval_service::{ServiceConfig, ServiceEval};
use crate::config::{PostProcessingDefaults, DEFAULT_ORT_DYLIB};
use crate::embed::{Engine, EngineConfig};
use crate::eval::metrics::{evaluate_indices, Metrics};
use crate::eval::online::{OnlineKr, RowMax, Shortlist};
use crate::eval::{chart, npy};
use crate::rerank::kreciprocal::KrParams;
use crate::rerank::pipeline::{parse_stages, Pipeline, Stage, StageOutput};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Query list: lines `path,label[,...]` (the grocery .txt format).
    #[arg(long)]
    pub queries: PathBuf,
    /// Gallery list, same format.
    #[arg(long)]
    pub gallery: PathBuf,
    /// Folder the listed paths are relative to (default: the list's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Ensemble manifest.
    #[arg(long, default_value = "models/default.toml")]
    pub model: PathBuf,
    #[arg(long, env = "ORT_DYLIB_PATH", default_value = DEFAULT_ORT_DYLIB)]
    pub ort_dylib: PathBuf,
    #[command(flatten)]
    pub stages: StageArgs,
    /// Folder for descriptors: reused when present (queries.npy,
    /// gallery.npy), written after embedding otherwise.
    #[arg(long)]
    pub descriptors: Option<PathBuf>,
    /// Also score the service's per-request KR emulated per query: an
    /// exact top-K shortlist (K a number or `all`, comma-separated for
    /// several), then single-query KR with the row maximum over the
    /// shortlist (as the service) and over the whole gallery. KR
    /// parameters: the first kr stage's, else the defaults.
    #[arg(long, value_delimiter = ',')]
    pub online_shortlist: Vec<Shortlist>,
    /// Folder for metrics.json, top10.csv and scores.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Which field of each list line is the label (0 = the path; 1 = the
    /// fine class, 2 = the coarse class in the grocery lists).
    #[arg(long, default_value_t = 1)]
    pub label_column: usize,
    /// Also measure through a running server at this address: the
    /// gallery is added by descriptor, each query searched by descriptor
    /// with every --service-config.
    #[arg(long)]
    pub service: Option<String>,
    /// Per-request configurations for --service: `server` (its defaults),
    /// `none`, or stages like "alpha-qe:k=3,alpha=3;kr;shortlist=100".
    #[arg(long, default_values_t = ["server".to_string()])]
    pub service_config: Vec<String>,
    /// Gallery the --service measurement (re)creates on the server.
    #[arg(long, default_value = "lookalike-eval")]
    pub service_gallery: String,
}

/// Which batch post-processing to run (shared by `eval` and `search-batch`).
#[derive(clap::Args, Clone)]
pub struct StageArgs {
    /// Stages in the spec's order, e.g. "gallery-dba:k=10;kr;aqe:k=1".
    #[arg(long, default_value = "")]
    pub stages: String,
    /// Run the DIGIX 2020 batch order (spec section 4) instead of --stages.
    #[arg(long)]
    pub digix: bool,
    /// Re-normalise DBA output (the service's DBA) instead of the batch order's.
    #[arg(long)]
    pub dba_renormalise: bool,
}

struct List {
    paths: Vec<String>,
    labels: Vec<String>,
}

fn read_list(path: &Path, label_column: usize) -> anyhow::Result<List> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        match (f.first(), f.get(label_column)) {
            (Some(p), Some(l)) if !p.is_empty() && !l.is_empty() => {
                paths.push(p.to_string());
                labels.push(l.to_string());
            }
            _ => bail!(
                "{}:{}: expected `path,label` with a label in field {label_column}",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(List { paths, labels })
}

async fn embed_all(
    engine: &Arc<Engine>,
    root: &Path,
    paths: &[String],
    what: &str,
) -> anyhow::Result<Array2<f32>> {
    let bar = ProgressBar::new(paths.len() as u64).with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg:8} {bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::with_capacity(paths.len() * engine.dims());
    // Chunks of concurrent requests let the batcher form batches.
    for chunk in paths.chunks(32) {
        let jobs = chunk.iter().map(|p| {
            let engine = engine.clone();
            let file = root.join(p);
            async move {
                let bytes = tokio::fs::read(&file)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?;
                let (v, _) = engine
                    .embed(bytes)
                    .await
                    .with_context(|| format!("embedding {}", file.display()))?;
                anyhow::Ok(v)
            }
        });
        for v in futures::future::join_all(jobs).await {
            rows.extend(v?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Array2::from_shape_vec((paths.len(), engine.dims()), rows)?)
}

pub async fn run(a: EvalArgs) -> anyhow::Result<()> {
    let q = read_list(&a.queries, a.label_column)?;
    let g = read_list(&a.gallery, a.label_column)?;
    let service_configs: Vec<ServiceConfig> = a
        .service_config
        .iter()
        .map(|c| c.parse())
        .collect::<anyhow::Result<_>>()?;
    // Stage errors before the (slow) embedding.
    let pipeline = if a.stages.digix {
        Pipeline::digix()
    } else {
        Pipeline::new(
            parse_stages(&a.stages.stages)?,
            10,
            a.stages.dba_renormalise,
        )?
    };
    let online_params = if a.online_shortlist.is_empty() {
        None
    } else {
        Some(online_kr_params(pipeline.stages())?)
    };
    let root_of = |list: &Path| {
        a.root
            .clone()
            .unwrap_or_else(|| list.parent().unwrap_or(Path::new(".")).to_path_buf())
    };
    let cached = a
        .descriptors
        .as_ref()
        .map(|d| (d.join("queries.npy"), d.join("gallery.npy")));
    let (qd, gd) = match &cached {
        Some((qp, gp)) if qp.exists() && gp.exists() => {
            eprintln!(
                "using descriptors from {}",
                qp.parent().unwrap_or(Path::new(".")).display()
            );
            (npy::read(qp)?, npy::read(gp)?)
        }
        _ => {
            let engine = Arc::new(Engine::load(
                &a.model,
                &a.ort_dylib,
                &EngineConfig::default(),
            )?);
            let qd = embed_all(&engine, &root_of(&a.queries), &q.paths, "queries").await?;
            let gd = embed_all(&engine, &root_of(&a.gallery), &g.paths, "gallery").await?;
            if let Some((qp, gp)) = &cached {
                std::fs::create_dir_all(qp.parent().unwrap_or(Path::new(".")))?;
                npy::write(qp, &qd)?;
                npy::write(gp, &gd)?;
            }
            (qd, gd)
        }
    };
    if qd.nrows() != q.paths.len() || gd.nrows() != g.paths.len() {
        bail!(
            "descriptor files do not match the lists ({} / {} rows for {} / {} items)",
            qd.nrows(),
            gd.nrows(),
            q.paths.len(),
            g.paths.len()
        );
    }
    let outputs = pipeline.run(qd.view(), gd.view())?;
    let mut rows = Vec::new();
    let mut staged: Vec<(String, Metrics)> = Vec::new();
    println!(
        "{:<32} {:>7} {:>7} {:>7} {:>7}",
        "after stage", "top1", "mAP@10", "P@10", "score"
    );
    let print = |name: &str, m: &Metrics| {
        println!(
            "{name:<32} {:>7.4} {:>7.4} {:>7.4} {:>7.4}",
            m.top1, m.map10, m.p10, m.score
        );
    };
    for StageOutput { stage, ranking, .. } in &outputs {
        let m = evaluate_indices(&q.labels, &g.labels, ranking)?;
        let name = stage.map_or_else(|| "raw".to_string(), |s| s.to_string());
        print(&name, &m);
        rows.push(serde_json::json!({"stage": name, "top1": m.top1, "map10": m.map10, "p10": m.p10, "score": m.score}));
        staged.push((name, m));
    }
    if let Some(params) = online_params {
        let on = OnlineKr::new(
            gd.view(),
            params,
            PostProcessingDefaults::default().neighbours_k as usize,
        )?;
        for &k in &a.online_shortlist {
            let shortlists = on.shortlists(qd.view(), k)?;
            for (row_max, suffix, tag) in [
                (RowMax::Shortlist, "", "shortlist"),
                (RowMax::Exact, " exact-row-max", "exact"),
            ] {
                let t = std::time::Instant::now();
                let ranking = on.rank(qd.view(), &shortlists, row_max, 10)?;
                let secs = t.elapsed().as_secs_f64();
                let m = evaluate_indices(&q.labels, &g.labels, &ranking)?;
                let name = format!("kr online K={k}{suffix}");
                print(&name, &m);
                // Wall time over the rayon pool (RAYON_NUM_THREADS=1 for
                // one request's latency).
                eprintln!(
                    "  ({name}: {:.1} ms wall per query over {} queries)",
                    1e3 * secs / qd.nrows().max(1) as f64,
                    qd.nrows()
                );
                rows.push(serde_json::json!({"stage": name, "top1": m.top1, "map10": m.map10, "p10": m.p10, "score": m.score,
                    "online": {"shortlist": k.to_string(), "row_max": tag}}));
            }
        }
    }
    if let Some(server) = &a.service {
        let eval = ServiceEval {
            server,
            gallery_name: &a.service_gallery,
            gallery_ids: &g.paths,
            gallery: &gd,
            queries: &qd,
        };
        for r in eval.run(&service_configs, &q.labels, &g.labels).await? {
            let name = format!("service {}", r.config);
            print(&name, &r.metrics);
            eprintln!(
                "  ({name}: stages [{}], p50 {:.2} ms, p99 {:.2} ms)",
                r.stages.join(", "),
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3
            );
            let m = &r.metrics;
            rows.push(serde_json::json!({"stage": name, "top1": m.top1, "map10": m.map10, "p10": m.p10, "score": m.score,
                "service": {"config": r.config, "stages": r.stages,
                    "p50_ms": r.p50.as_secs_f64() * 1e3, "p99_ms": r.p99.as_secs_f64() * 1e3}}));
        }
    }
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("metrics.json"),
            serde_json::to_string_pretty(&rows)?,
        )?;
        let last = &outputs.last().context("no ranking")?.ranking;
        let mut csv = String::new();
        for (qi, ranked) in last.iter().enumerate() {
            let top: Vec<&str> = ranked
                .iter()
                .take(10)
                .map(|&i| g.paths[i].as_str())
                .collect();
            csv.push_str(&format!("{},{{{}}}\n", q.paths[qi], top.join(",")));
        }
        std::fs::write(out.join("top10.csv"), csv)?;
        chart::draw_scores(&out.join("scores.png"), &staged)?;
        eprintln!(
            "wrote {}/metrics.json, top10.csv and scores.png",
            out.display()
        );
    }
    Ok(())
}

/// KR parameters for the online rows: the first kr stage's, else the
/// defaults. The emulation runs on the input descriptors, as the service's
/// KR does; a stage before that kr changes the descriptors the batch row
/// ranks, which would make the two incomparable.
fn online_kr_params(stages: &[Stage]) -> anyhow::Result<KrParams> {
    let mut before: Option<&Stage> = None;
    for st in stages {
        if let Stage::Kr { k1, k2, lambda } = *st {
            if let Some(other) = before {
                bail!(
                    "--online-shortlist runs KR on the input descriptors; the first kr stage must come before {other}"
                );
            }
            return Ok(KrParams { k1, k2, lambda });
        }
        before = before.or(Some(st));
    }
    Ok(KrParams::default())
}
