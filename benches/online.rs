//! Per-request post-processing latency, stage by stage, and the cost of
//! keeping the gallery-side state current, on synthetic clustered 512-d
//! descriptors.
//!
//!     cargo bench --bench online -- [N ...] [dims=D] [projection=P]
//!
//! (default: 10000 100000, 512-d, no projection; `projection=P`: the
//! gallery-fitted projection to P components, plain PCA)
//!
//! For each gallery size: the first (full) refresh, incremental refreshes
//! after small write bursts, p50/p99 per stage of `online::search` for
//! several request plans (descriptor queries, so no embedding), and a
//! restart: save at shutdown, open with the saved state.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{clustered_d, gallery_sizes, percentile, DIMS};
use lookalike::gallery::post::PostConfig;
use lookalike::gallery::projection::ProjectionConfig;
use lookalike::gallery::{Galleries, Metadata, NewItem};
use lookalike::index::HnswParams;
use lookalike::query::online::{self, Plan, QueryExpansion};
use lookalike::rerank::kreciprocal::KrParams;
use lookalike::store::GalleryMeta;
use rand::SeedableRng;

const QUERIES: usize = 200;

fn item(i: usize, vector: Vec<f32>) -> NewItem {
    NewItem {
        id: format!("item-{i:07}"),
        vector,
        metadata: Metadata::new(),
    }
}

fn main() -> anyhow::Result<()> {
    let sizes = gallery_sizes();
    // `dims=3840`: the default model's S+M+G descriptor width.
    let dims: usize = std::env::args()
        .find_map(|a| a.strip_prefix("dims=").and_then(|d| d.parse().ok()))
        .unwrap_or(DIMS);
    let components: Option<usize> =
        std::env::args().find_map(|a| a.strip_prefix("projection=").and_then(|d| d.parse().ok()));
    let params = HnswParams::default();
    let post = PostConfig {
        // Refreshes are run by hand here, to time them.
        debounce: Duration::from_secs(3600),
        projection: components.map(|components| ProjectionConfig {
            components,
            beta: 0.0,
        }),
        ..PostConfig::default()
    };
    println!(
        "dims {dims}, {QUERIES} queries, DBA k {}, neighbours k {}, exact limit {}, projection {:?}",
        post.dba_k, post.neighbours_k, params.exact_limit, components
    );
    for n in sizes {
        let dir = tempfile::tempdir()?;
        let gs = Galleries::open(&dir.path().join("db.redb"), params.clone(), post.clone())?;
        let meta = GalleryMeta {
            model_fingerprint: "bench".into(),
            dims: dims as u32,
        };
        let g = gs.create("bench", meta)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
        let (vectors, queries) = clustered_d(&mut rng, n + 1000, QUERIES, dims);
        let mut vectors = vectors.into_iter().enumerate();
        for _ in 0..n.div_ceil(1000) {
            let chunk: Vec<NewItem> = vectors
                .by_ref()
                .take(1000)
                .map(|(i, v)| item(i, v))
                .collect();
            g.upsert(chunk)?;
        }
        let t = Instant::now();
        g.refresh_post()?;
        println!(
            "\nN = {}: first refresh (full; graph build included when N > exact limit) {:.1} s",
            g.len(),
            t.elapsed().as_secs_f64()
        );
        for (adds, removes) in [(10, 10), (100, 0)] {
            let added: Vec<NewItem> = vectors
                .by_ref()
                .take(adds)
                .map(|(i, v)| item(i, v))
                .collect();
            g.upsert(added)?;
            let gone: Vec<String> = (0..removes)
                .map(|r| format!("item-{:07}", r * 97))
                .collect();
            g.remove(&gone)?;
            let t = Instant::now();
            g.refresh_post()?;
            let s = g.stats();
            println!(
                "  incremental refresh after {adds} adds + {removes} removes: {:.2} s (graph: {}, tombstones {})",
                t.elapsed().as_secs_f64(),
                s.index.built,
                s.tombstones
            );
        }

        let kr = Some(KrParams::default());
        let plans = [
            ("plain top-10", None, None, 100),
            ("KR, shortlist 100", None, kr, 100),
            ("KR, shortlist 300", None, kr, 300),
            ("AQE k=1 + KR, shortlist 100", Some(0.0), kr, 100),
            ("alpha-QE k=3 + KR, shortlist 100", Some(3.0), kr, 100),
        ];
        for (name, qe, kr, shortlist) in plans {
            let plan = Plan {
                top_k: 10,
                ef: params.ef_search,
                exact: false,
                shortlist,
                qe: qe.map(|alpha| QueryExpansion {
                    k: if alpha > 0.0 { 3 } else { 1 },
                    alpha,
                }),
                kr,
            };
            let mut stages: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            let mut totals = Vec::new();
            for q in &queries {
                let t = Instant::now();
                let out = online::search(&g, q, &plan, &Metadata::new(), None)?;
                totals.push(t.elapsed().as_secs_f64() * 1e3);
                for (stage, d) in out.timings {
                    stages.entry(stage).or_default().push(d.as_secs_f64() * 1e3);
                }
            }
            println!("  {name}");
            for (stage, mut ms) in stages.into_iter().chain([("total", totals)]) {
                ms.sort_by(f64::total_cmp);
                println!(
                    "    {stage:<16} p50 {:>8.2} ms  p99 {:>8.2} ms",
                    percentile(&ms, 0.5),
                    percentile(&ms, 0.99)
                );
            }
        }

        // Restart: save at shutdown, then open with the saved state.
        let t = Instant::now();
        gs.save_all();
        println!("  save at shutdown {:.1} s", t.elapsed().as_secs_f64());
        drop((g, gs));
        let t = Instant::now();
        let gs = Galleries::open(&dir.path().join("db.redb"), params.clone(), post.clone())?;
        let s = gs.get("bench")?.stats();
        println!(
            "  open with the saved state {:.1} s (post-processing generation {}, graph {})",
            t.elapsed().as_secs_f64(),
            s.post_generation,
            s.index.built
        );
    }
    Ok(())
}
