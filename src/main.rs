//! The `lookalike` binary: the server (`serve`) and its client commands.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use lookalike::cli::{self, ClientArgs};
use lookalike::config::{Config, LogFormat};
use lookalike::embed::runtime::ProviderChoice;
use lookalike::embed::Engine;
use lookalike::gallery::Galleries;
use lookalike::query::service::Service;
use lookalike::security::auth::ApiKeys;

#[derive(Parser)]
#[command(
    name = "lookalike",
    version,
    about = "Image retrieval service: find the gallery images of the same product"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: gRPC, and the HTTP API and console when enabled.
    Serve(ServeArgs),
    /// Add images (files or folders, recursively) to a gallery.
    Add(cli::AddArgs),
    /// Search a gallery with an image.
    Search(cli::SearchArgs),
    /// Search a gallery with a list of images in one batch (post-processed
    /// together, as `eval` does); prints `query,{g1,...,gk}` lines.
    SearchBatch(cli::search_batch::SearchBatchArgs),
    /// Remove items from a gallery.
    Rm(cli::RmArgs),
    /// Score retrieval on labelled query and gallery lists, stage by stage.
    Eval(lookalike::cli::eval::EvalArgs),
    /// Export or inspect embedding models.
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
    /// Show gallery statistics.
    Stats {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check the server's health (grpc.health.v1); fails unless SERVING.
    Health {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Parser)]
struct ServeArgs {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "LOOKALIKE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "LOOKALIKE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Admin HTTP address: /metrics and /healthz (port 0 picks a free one).
    #[arg(long, env = "LOOKALIKE_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
    /// HTTP/JSON API and web console address (port 0 picks a free one).
    #[arg(long, env = "LOOKALIKE_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
    /// Folder for the gallery database.
    #[arg(long, env = "LOOKALIKE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Ensemble manifest (models/<name>.toml).
    #[arg(long, env = "LOOKALIKE_MODEL")]
    model: Option<PathBuf>,
    /// libonnxruntime.so to load (else ORT_DYLIB_PATH, else the setup script's copy).
    #[arg(long)]
    ort_dylib: Option<PathBuf>,
    /// Execution provider: auto, cpu or cuda.
    #[arg(long, env = "LOOKALIKE_PROVIDER", value_parser = parse_provider)]
    provider: Option<ProviderChoice>,
    /// Refuse to start without a working GPU provider.
    #[arg(long, env = "LOOKALIKE_REQUIRE_GPU")]
    require_gpu: bool,
    /// Log format.
    #[arg(long, env = "LOOKALIKE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Cores to plan threads for (0 or unset: the cgroup quota, else every
    /// core); the Helm chart passes the container's CPU request.
    #[arg(long, env = "LOOKALIKE_CPUS")]
    cpus: Option<usize>,
}

fn parse_provider(s: &str) -> Result<ProviderChoice, String> {
    match s {
        "auto" => Ok(ProviderChoice::Auto),
        "cpu" => Ok(ProviderChoice::Cpu),
        "cuda" => Ok(ProviderChoice::Cuda),
        _ => Err(format!("unknown provider {s:?}: use auto, cpu or cuda")),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(args)),
        Command::Add(args) => rt.block_on(cli::add(args)),
        Command::Search(args) => rt.block_on(cli::search(args)),
        Command::SearchBatch(args) => rt.block_on(cli::search_batch::run(args)),
        Command::Rm(args) => rt.block_on(cli::rm(args)),
        Command::Stats { client } => rt.block_on(cli::stats(client)),
        Command::Health { client } => rt.block_on(cli::health(client)),
        Command::Model(cmd) => cli::model::run(cmd),
        Command::Eval(args) => rt.block_on(cli::eval::run(args)),
    }
}

/// Logs to stderr; with the `otlp` feature, spans also go to the OTLP
/// collector when one is configured (dropping the returned guard flushes
/// them).
fn init_logging(format: LogFormat) -> anyhow::Result<Option<Box<dyn std::any::Any>>> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: a file or pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otlp")]
    {
        if let Some((layer, exporter)) = lookalike::telemetry::otlp::layer()? {
            registry.with(layer).init();
            return Ok(Some(Box::new(exporter)));
        }
    }
    registry.init();
    Ok(None)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.admin_listen {
        cfg.admin_listen = Some(v);
    }
    if let Some(v) = args.http_listen {
        cfg.http_listen = Some(v);
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.model {
        cfg.model = v;
    }
    if let Some(v) = args.ort_dylib {
        cfg.ort_dylib = Some(v);
    }
    if let Some(v) = args.provider {
        cfg.embed.provider = v;
    }
    cfg.embed.require_gpu |= args.require_gpu;
    if let Some(v) = args.log_format {
        cfg.log_format = v;
    }
    if let Some(v) = args.cpus {
        cfg.cpus = v;
    }
    cfg.validate()?;
    let cpus = cfg.settle_threads();
    let _exporter = init_logging(cfg.log_format)?;
    // Refreshes (neighbour lists, DBA) run on rayon's global pool and the
    // exact scan on a pool of the same size: both follow the budget.
    rayon::ThreadPoolBuilder::new()
        .num_threads(cpus)
        .build_global()
        .context("starting the refresh thread pool")?;
    lookalike::index::flat::set_scan_threads(cpus);
    lookalike::telemetry::metrics().cpu_budget.set(cpus as i64);
    tracing::info!(
        cpus,
        intra_threads = cfg.embed.intra_threads,
        search_max_running = cfg.search.max_running,
        "cpu budget"
    );
    let keys = ApiKeys::load(&cfg.auth, |var| std::env::var(var).ok())?;
    if keys.is_none() {
        tracing::warn!("no API keys configured: every client may read and write");
    }

    let engine = Engine::load(&cfg.model, &cfg.ort_dylib(), &cfg.embed)
        .with_context(|| format!("loading the model {}", cfg.model.display()))?;
    tracing::info!(model = %cfg.model.display(), fingerprint = engine.fingerprint(), dims = engine.dims(),
        provider = engine.provider().name(), "engine ready");
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let db = cfg.database_path();
    let params = cfg.index.clone();
    let post = cfg.post_processing.gallery_config();
    let galleries = tokio::task::spawn_blocking(move || Galleries::open(&db, params, post))
        .await?
        .with_context(|| format!("opening the galleries in {}", cfg.data_dir.display()))?;

    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    let shutdown = async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: finishing in-flight requests");
        signalled.notify_one();
    };
    let galleries = Arc::new(galleries);
    let cluster = match &cfg.cluster {
        Some(c) => {
            let meta = lookalike::store::GalleryMeta {
                model_fingerprint: engine.fingerprint().to_string(),
                dims: engine.dims() as u32,
            };
            tracing::info!(urls = ?c.urls, prefix = %c.prefix, "replicating through NATS JetStream");
            Some(lookalike::cluster::Cluster::start(c.clone(), galleries.clone(), meta).await?)
        }
        None => None,
    };
    let service = Service::new(Arc::new(engine), galleries.clone(), cluster, &cfg);
    let bound = lookalike::server::bind(&cfg, service, keys, shutdown).await?;
    let (addr, server) = (bound.addr, bound.serve);
    // Tests and scripts wait for these lines to know the ports; the
    // admin and HTTP lines come first.
    if let Some(admin) = bound.admin_addr {
        tracing::info!(%admin, "admin port listening");
        println!("admin listening on {admin}");
    }
    if let Some(http) = bound.http_addr {
        tracing::info!(%http, tls = cfg.tls.is_some(), "HTTP API and console listening");
        println!("http listening on {http}");
    }
    tracing::info!(%addr, tls = cfg.tls.is_some(), "listening");
    println!("listening on {addr}");
    // A client that keeps its connection open must not hold the stop up
    // past the grace period.
    let grace = std::time::Duration::from_secs(cfg.shutdown_grace_s);
    tokio::select! {
        served = server => served?,
        _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_s = cfg.shutdown_grace_s, "requests still open after the grace period; stopping anyway");
        }
    }
    // After the last request: the next start reloads instead of recomputing.
    tokio::task::spawn_blocking(move || galleries.shutdown()).await?;
    Ok(())
}
