//! `lookalike eval --service`: the same scores measured through a running
//! server, as a client sees it. The gallery descriptors go in with
//! AddToGallery, every query is a Search by descriptor with the
//! configuration's per-request post-processing, and the hits are scored
//! with the same metric code as the batch rows. Gallery-side stages (DBA,
//! projection) are whatever the server is configured with; GalleryStats
//! and each Search report which ran.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ndarray::Array2;
use tonic::transport::Channel;

use crate::api::pb::{
    self, add_item::Content, add_response::Kind, retrieval_client::RetrievalClient,
};
use crate::eval::metrics::{evaluate_indices, Metrics};
use crate::rerank::pipeline::{parse_stages, Stage};

/// One per-request configuration: `server` (the server's defaults),
/// `none` (every query-side stage off), or stages `aqe[:k=K]`,
/// `alpha-qe:k=K[,alpha=A]`, `kr[:k1=..,k2=..,lambda=..]` and
/// `shortlist=N`, separated by `;`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    /// None: send no PostProcessing (the server's defaults apply).
    pub post: Option<pb::PostProcessing>,
}

impl std::str::FromStr for ServiceConfig {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let name = s.trim().to_string();
        if name == "server" {
            return Ok(Self { name, post: None });
        }
        let off = pb::PostProcessing {
            shortlist: None,
            query_expansion: Some(pb::QueryExpansion::default()),
            k_reciprocal: Some(pb::KReciprocal {
                enabled: false,
                k1: 1,
                k2: 1,
                lambda: 0.0,
            }),
        };
        let mut post = off;
        if name == "none" {
            return Ok(Self {
                name,
                post: Some(post),
            });
        }
        let mut stages = String::new();
        for tok in name.split(';').map(str::trim).filter(|t| !t.is_empty()) {
            match tok.strip_prefix("shortlist=") {
                Some(n) => {
                    post.shortlist = Some(n.parse().with_context(|| format!("shortlist {n:?}"))?)
                }
                None => {
                    stages.push_str(tok);
                    stages.push(';');
                }
            }
        }
        for st in parse_stages(&stages)? {
            match st {
                Stage::Aqe { k } => {
                    post.query_expansion = Some(pb::QueryExpansion {
                        enabled: true,
                        k: k as u32,
                        alpha: 0.0,
                    })
                }
                Stage::AlphaQe { k, alpha } => {
                    post.query_expansion = Some(pb::QueryExpansion {
                        enabled: true,
                        k: k as u32,
                        alpha: alpha as f32,
                    })
                }
                Stage::Kr { k1, k2, lambda } => {
                    post.k_reciprocal = Some(pb::KReciprocal {
                        enabled: true,
                        k1: k1 as u32,
                        k2: k2 as u32,
                        lambda: lambda as f32,
                    })
                }
                other => bail!(
                    "{other} is not a per-request stage (aqe, alpha-qe, kr, shortlist=N); \
                     gallery-side stages are server settings"
                ),
            }
        }
        Ok(Self {
            name,
            post: Some(post),
        })
    }
}

/// Scores and latency of one configuration.
pub struct ServiceRow {
    pub config: String,
    pub metrics: Metrics,
    /// The stages the server reported for the first query.
    pub stages: Vec<String>,
    pub p50: Duration,
    pub p99: Duration,
}

pub struct ServiceEval<'a> {
    pub server: &'a str,
    pub gallery_name: &'a str,
    pub gallery_ids: &'a [String],
    pub gallery: &'a Array2<f32>,
    pub queries: &'a Array2<f32>,
}

impl ServiceEval<'_> {
    /// Loads the gallery into a fresh gallery on the server, waits for its
    /// post-processing state, then scores every configuration.
    pub async fn run<L: PartialEq + Clone>(
        &self,
        configs: &[ServiceConfig],
        q_labels: &[L],
        g_labels: &[L],
    ) -> anyhow::Result<Vec<ServiceRow>> {
        let mut c = super::connect(self.server).await?;
        self.load(&mut c).await?;
        let index: HashMap<&str, usize> = self
            .gallery_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut rows = Vec::new();
        for cfg in configs {
            let mut ranking = Vec::with_capacity(self.queries.nrows());
            let mut times = Vec::with_capacity(self.queries.nrows());
            let mut stages = Vec::new();
            for q in self.queries.rows() {
                let t = Instant::now();
                let resp = c
                    .search(pb::SearchRequest {
                        gallery: self.gallery_name.to_string(),
                        query: Some(pb::search_request::Query::Descriptor(pb::Descriptor {
                            values: q.to_vec(),
                            model_fingerprint: String::new(),
                        })),
                        top_k: 10,
                        post_processing: cfg.post,
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("search with {}", cfg.name))?
                    .into_inner();
                times.push(t.elapsed());
                if stages.is_empty() {
                    stages = resp.stages.clone();
                }
                ranking.push(
                    resp.hits
                        .iter()
                        .map(|h| index.get(h.id.as_str()).copied().context("unknown hit id"))
                        .collect::<anyhow::Result<Vec<usize>>>()?,
                );
            }
            times.sort();
            let pick = |f: f64| times[((times.len() - 1) as f64 * f).round() as usize];
            rows.push(ServiceRow {
                config: cfg.name.clone(),
                metrics: evaluate_indices(q_labels, g_labels, &ranking)?,
                stages,
                p50: pick(0.5),
                p99: pick(0.99),
            });
        }
        Ok(rows)
    }

    async fn load(&self, c: &mut RetrievalClient<Channel>) -> anyhow::Result<()> {
        let name = self.gallery_name.to_string();
        match c
            .drop_gallery(pb::DropGalleryRequest {
                gallery: name.clone(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => bail!("dropping gallery {name:?}: {}", s.message()),
        }
        c.create_gallery(pb::CreateGalleryRequest {
            gallery: name.clone(),
        })
        .await
        .with_context(|| format!("creating gallery {name:?}"))?;
        let items: Vec<pb::AddItem> = self
            .gallery_ids
            .iter()
            .zip(self.gallery.rows())
            .map(|(id, v)| pb::AddItem {
                gallery: name.clone(),
                id: id.clone(),
                content: Some(Content::Descriptor(pb::Descriptor {
                    values: v.to_vec(),
                    model_fingerprint: String::new(),
                })),
                metadata: HashMap::new(),
            })
            .collect();
        let mut out = c
            .add_to_gallery(tokio_stream::iter(items))
            .await?
            .into_inner();
        while let Some(r) = out.message().await? {
            if let Some(Kind::Outcome(o)) = r.kind {
                if o.status == pb::item_outcome::Status::Rejected as i32 {
                    bail!("the server rejected {}: {}", o.id, o.reason);
                }
            }
        }
        // The background refresh computes neighbour lists and DBA vectors.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let s = c
                .gallery_stats(pb::GalleryStatsRequest {
                    gallery: name.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let ix = s.index.unwrap_or_default();
            if ix.stale_items == 0 && ix.post_processing_generation > 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gallery {name:?} still has {} stale items", ix.stale_items);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
