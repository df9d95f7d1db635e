//! The `lookalike` binary's commands besides `serve`: the clients (`add`,
//! `search`, `search-batch`, `rm`, `stats`, `health`, `eval --service`)
//! talk to a running server over gRPC, like any application would;
//! `eval` without a server and `model` work on files alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub mod connect;
pub mod eval;
pub mod eval_service;
pub mod model;
pub mod search_batch;

use tonic::transport::Channel;

use crate::api::pb::{
    self, add_item::Content, add_response::Kind, retrieval_client::RetrievalClient,
};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

/// Where the server is, and the gallery.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connection: connect::Connection,
    /// Gallery to work on.
    #[arg(long, short, default_value = "default")]
    pub gallery: String,
}

#[derive(clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Image files, or folders searched recursively for images.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Item ids relative to this folder (default: the path as given).
    #[arg(long)]
    pub strip_prefix: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub image: PathBuf,
    #[arg(long, short = 'k', default_value_t = 10)]
    pub top_k: u32,
    /// Exact search instead of the ANN index.
    #[arg(long)]
    pub exact: bool,
}

#[derive(clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// Image files under `paths`, sorted, folders walked recursively.
pub fn collect_images(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        if p.is_dir() {
            for entry in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
                walk(&entry?.path(), out)?;
            }
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if !p.exists() {
            bail!("{} does not exist", p.display());
        }
        walk(p, &mut out)?;
    }
    out.sort();
    Ok(out)
}

pub async fn add(args: AddArgs) -> anyhow::Result<()> {
    let files = collect_images(&args.paths)?;
    if files.is_empty() {
        bail!("no images (jpg, jpeg, png, webp, bmp, gif) under the given paths");
    }
    let mut client = args.client.connection.client().await?;
    match client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: args.client.gallery.clone(),
        })
        .await
    {
        Ok(_) => eprintln!("created gallery {:?}", args.client.gallery),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => bail!(
            "creating gallery {:?}: {}",
            args.client.gallery,
            s.message()
        ),
    }
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let gallery = args.client.gallery.clone();
    let strip = args.strip_prefix.clone();
    let items = files.clone().into_iter().map(move |path| {
        let id = match &strip {
            Some(prefix) => path
                .strip_prefix(prefix)
                .unwrap_or(&path)
                .display()
                .to_string(),
            None => path.display().to_string(),
        };
        let content = match std::fs::read(&path) {
            Ok(bytes) => Some(Content::Image(bytes)),
            Err(_) => None, // the server rejects it with a reason
        };
        pb::AddItem {
            gallery: gallery.clone(),
            id,
            content,
            metadata: HashMap::new(),
        }
    });
    let mut responses = client
        .add_to_gallery(tokio_stream::iter(items))
        .await?
        .into_inner();
    let mut rejects = Vec::new();
    let mut summary = None;
    while let Some(resp) = responses.message().await? {
        match resp.kind {
            Some(Kind::Outcome(o)) => {
                bar.inc(1);
                use pb::item_outcome::Status as S;
                match S::try_from(o.status) {
                    Ok(S::Rejected) => rejects.push(("rejected", o.id, o.reason)),
                    Ok(S::RetryLater) => rejects.push(("not added, retry", o.id, o.reason)),
                    _ => {}
                }
            }
            Some(Kind::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    bar.finish_and_clear();
    for (what, id, reason) in &rejects {
        eprintln!("{what} {id}: {reason}");
    }
    let s = summary.context("the server closed the stream without a summary")?;
    println!(
        "added {}, replaced {}, rejected {}, to retry {}",
        s.added, s.replaced, s.rejected, s.retry_later
    );
    Ok(())
}

pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let image =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let mut client = args.client.connection.client().await?;
    let resp = client
        .search(pb::SearchRequest {
            gallery: args.client.gallery,
            query: Some(pb::search_request::Query::Image(image)),
            top_k: args.top_k,
            exact: args.exact,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("search failed: {}", s.message()))?
        .into_inner();
    for (rank, h) in resp.hits.iter().enumerate() {
        println!("{:>3}  {:.4}  {}", rank + 1, h.distance, h.id);
    }
    let timings: Vec<String> = resp
        .timings
        .iter()
        .map(|t| format!("{} {:.1} ms", t.stage, t.micros as f64 / 1000.0))
        .collect();
    eprintln!("{}", timings.join(", "));
    Ok(())
}

pub async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let mut client = args.client.connection.client().await?;
    let resp = client
        .remove_from_gallery(pb::RemoveRequest {
            gallery: args.client.gallery,
            ids: args.ids,
        })
        .await
        .map_err(|s| anyhow::anyhow!("remove failed: {}", s.message()))?
        .into_inner();
    println!("removed {}", resp.removed);
    for id in resp.not_found {
        eprintln!("not found: {id}");
    }
    Ok(())
}

pub async fn stats(args: ClientArgs) -> anyhow::Result<()> {
    let mut client = args.connection.client().await?;
    let resp = client
        .list_galleries(pb::ListGalleriesRequest {})
        .await?
        .into_inner();
    for g in resp.galleries {
        let idx = g.index.unwrap_or_default();
        let index = if idx.graph {
            let calibration = if idx.calibration_sample > 0 {
                format!(
                    ", ef {} (recall@10 {:.3} on {} items{}), built in {:.1} s",
                    idx.default_ef,
                    idx.calibrated_recall,
                    idx.calibration_sample,
                    if idx.target_recall_reached {
                        ""
                    } else {
                        ", under the target"
                    },
                    idx.build_seconds
                )
            } else {
                format!(", ef {}", idx.default_ef)
            };
            format!(
                "HNSW {} points, {} tombstones{calibration}",
                idx.points, idx.tombstones
            )
        } else {
            "exact search".to_string()
        };
        println!(
            "{}: {} items, {} dims, model {}, {}, {index}{}{}",
            g.gallery,
            g.count,
            g.dims,
            g.model_fingerprint,
            g.execution_provider,
            if idx.rebuilding {
                " (graph building)"
            } else {
                ""
            },
            match idx.stale_items {
                0 => String::new(),
                n => format!(", {n} changes pending post-processing refresh"),
            }
        );
    }
    Ok(())
}

/// A plaintext client without a key (eval against a local server).
pub async fn connect(server: &str) -> anyhow::Result<RetrievalClient<Channel>> {
    let client = RetrievalClient::connect(server.to_string())
        .await
        .with_context(|| format!("connecting to {server} (is `lookalike serve` running?)"))?;
    Ok(client
        .max_decoding_message_size(connect::MAX_MESSAGE)
        .max_encoding_message_size(connect::MAX_MESSAGE))
}

/// grpc.health.v1 Check of the Retrieval service: Ok only when SERVING.
pub async fn health(args: ClientArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let mut client =
        tonic_health::pb::health_client::HealthClient::new(args.connection.channel().await?);
    let resp = client
        .check(HealthCheckRequest {
            service: crate::api::health::RETRIEVAL.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("health check failed: {}", s.message()))?
        .into_inner();
    let status = ServingStatus::try_from(resp.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        bail!("the server is not serving");
    }
    Ok(())
}
