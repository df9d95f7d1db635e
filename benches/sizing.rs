//! Memory and disk per item: what a gallery costs the server at a given
//! descriptor width, for README's sizing table.
//!
//!     cargo bench --bench sizing -- [n=N] [dims=D] [graph] [dba]
//!
//! (default: 10000 items, 512-d, exact search (no graph), DBA off: the
//! server's defaults below `index.exact_limit`). One configuration per
//! run, so that the allocator's high-water mark of one does not hide in
//! the next. Items are synthetic clustered unit descriptors added through
//! `Gallery::upsert` in chunks of 1000, then one full refresh (neighbour
//! lists, DBA; the graph build with `graph`), then the derived state is
//! saved as at shutdown. Reported: resident memory grown per item
//! (/proc/self/status VmRSS), the redb file per item, and the saved
//! derived state per item.

mod common;

use std::time::{Duration, Instant};

use common::{near, random_unit_d};
use lookalike::gallery::post::PostConfig;
use lookalike::gallery::{Galleries, Metadata, NewItem};
use lookalike::index::HnswParams;
use lookalike::store::GalleryMeta;
use rand::SeedableRng;

fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::args().find_map(|a| {
        a.strip_prefix(&format!("{name}="))
            .and_then(|v| v.parse().ok())
    })
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Resident memory now, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() -> anyhow::Result<()> {
    let n: usize = arg("n").unwrap_or(10_000);
    let dims: usize = arg("dims").unwrap_or(512);
    let (graph, dba) = (flag("graph"), flag("dba"));
    let mut params = HnswParams::default();
    if graph {
        params.exact_limit = 0;
    }
    let post = PostConfig {
        dba,
        // Refreshed by hand below.
        debounce: Duration::from_secs(3600),
        ..PostConfig::default()
    };
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("lookalike.redb");
    let before = rss();
    let gs = Galleries::open(&db, params, post)?;
    let meta = GalleryMeta {
        model_fingerprint: "sizing".into(),
        dims: dims as u32,
    };
    let g = gs.create("sizing", meta)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let centres: Vec<Vec<f32>> = (0..(n / 20).max(1))
        .map(|_| random_unit_d(&mut rng, dims))
        .collect();
    let t = Instant::now();
    for start in (0..n).step_by(1000) {
        let chunk = (start..(start + 1000).min(n))
            .map(|i| NewItem {
                id: format!("catalogue/item-{i:07}.jpg"),
                vector: near(&mut rng, &centres[i % centres.len()]),
                metadata: Metadata::from([("sku".to_string(), format!("{i:08}"))]),
            })
            .collect();
        g.upsert(chunk)?;
    }
    let added = t.elapsed();
    let t = Instant::now();
    g.refresh_post()?;
    let refreshed = t.elapsed();
    let stats = g.stats();
    let resident = rss().saturating_sub(before);
    let saved_at = dir.path().join("saved");
    g.save(&saved_at)?;
    let per = |bytes: u64| bytes as f64 / n as f64;
    println!(
        "{n} items x {dims}-d, graph {} (built {}), DBA {dba}: add {:.1} s, refresh {:.1} s",
        graph,
        stats.index.built,
        added.as_secs_f64(),
        refreshed.as_secs_f64()
    );
    println!(
        "  memory {:.0} B/item ({:.1} x the f32 descriptor); redb {:.0} B/item; saved derived state {:.0} B/item",
        per(resident),
        per(resident) / (4 * dims) as f64,
        per(std::fs::metadata(&db)?.len()),
        per(dir_bytes(&saved_at)),
    );
    Ok(())
}
