//! `lookalike search-batch`: a list of query images searched in one
//! SearchBatch call, post-processed together as `lookalike eval` does;
//! prints the DIGIX submission form `query,{g1,...,gk}`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::eval::StageArgs;
use super::ClientArgs;
use crate::api::pb::{self, batch_query::Query, search_batch_response::Kind};

#[derive(clap::Args)]
pub struct SearchBatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Query list: one image path per line (`path[,label,...]`, the grocery .txt form).
    pub list: PathBuf,
    /// Folder the listed paths are relative to (default: the list's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub stages: StageArgs,
    #[arg(long, short = 'k', default_value_t = 10)]
    pub top_k: u32,
    /// Write the results here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Query messages per request message, to stay under the message limit.
const PER_MESSAGE: usize = 16;

pub async fn run(a: SearchBatchArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.list)
        .with_context(|| format!("reading {}", a.list.display()))?;
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(',').next().map(str::trim))
        .filter(|p| !p.is_empty())
        .collect();
    if paths.is_empty() {
        bail!("{} lists no images", a.list.display());
    }
    let root = a
        .root
        .clone()
        .unwrap_or_else(|| a.list.parent().unwrap_or(Path::new(".")).to_path_buf());
    let options = pb::BatchOptions {
        top_k: a.top_k,
        stages: a.stages.stages.clone(),
        digix: a.stages.digix,
        dba_renormalise: a.stages.dba_renormalise,
    };
    let mut requests = Vec::new();
    for (n, chunk) in paths.chunks(PER_MESSAGE).enumerate() {
        let mut queries = Vec::with_capacity(chunk.len());
        for p in chunk {
            let file = root.join(p);
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            queries.push(pb::BatchQuery {
                id: p.to_string(),
                query: Some(Query::Image(bytes)),
            });
        }
        requests.push(pb::SearchBatchRequest {
            gallery: if n == 0 {
                a.client.gallery.clone()
            } else {
                String::new()
            },
            options: (n == 0).then_some(options.clone()),
            queries,
        });
    }
    let mut client = a.client.connection.client().await?;
    let mut responses = client
        .search_batch(tokio_stream::iter(requests))
        .await
        .map_err(|s| anyhow::anyhow!("search-batch failed: {}", s.message()))?
        .into_inner();
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    while let Some(r) = responses
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("search-batch failed: {}", s.message()))?
    {
        match r.kind {
            Some(Kind::Result(res)) => {
                let ids: Vec<&str> = res.hits.iter().map(|h| h.id.as_str()).collect();
                writeln!(out, "{},{{{}}}", res.id, ids.join(","))?;
            }
            Some(Kind::Summary(s)) => {
                let t: Vec<String> = s
                    .timings
                    .iter()
                    .map(|t| format!("{} {:.1} ms", t.stage, t.micros as f64 / 1000.0))
                    .collect();
                eprintln!(
                    "{} queries against {} items; stages [{}]; {}",
                    s.queries,
                    s.gallery_items,
                    s.stages.join(", "),
                    t.join(", ")
                );
            }
            None => {}
        }
    }
    out.flush()?;
    Ok(())
}
