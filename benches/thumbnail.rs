//! What thumbnails cost, on real grocery photos (all of test.txt):
//! JPEG bytes per item at the default settings (256 px, quality 80) and
//! two others, the time to make one, and what the redb file grows by per
//! item with and without thumbnails (the same items written both ways).
//!
//!     cargo bench --bench thumbnail
//!
//! Reports median and p99 over the photos; file growth per item.

use std::path::PathBuf;
use std::time::Instant;

use lookalike::embed::preprocess::{decode, DecodeLimits};
use lookalike::store::thumbnail::{make, ThumbnailConfig};
use lookalike::store::{Change, GalleryMeta, ItemRecord, Store};

fn photos() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/grocery");
    let list = std::fs::read_to_string(root.join("test.txt")).expect("grocery test.txt");
    list.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| std::fs::read(root.join(l.split(',').next().unwrap().trim())).unwrap())
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Bytes the store file grows by per item, for `n` items of 1280 dims.
fn file_growth(thumbs: &[Vec<u8>]) -> (f64, f64) {
    let mut per_item = [0.0; 2];
    for (k, with) in [false, true].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = Store::open(&path).unwrap();
        let meta = GalleryMeta {
            model_fingerprint: "f".into(),
            dims: 1280,
        };
        store.create_gallery("g", &meta).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let ids: Vec<String> = (0..thumbs.len()).map(|i| format!("item-{i:05}")).collect();
        // Batches of 32, as the services commit them.
        for start in (0..ids.len()).step_by(32) {
            let end = (start + 32).min(ids.len());
            let changes: Vec<Change> = (start..end)
                .map(|i| Change::Put {
                    id: ids[i].clone(),
                    record: ItemRecord {
                        seq: i as u64,
                        descriptor: vec![i as f32; 1280],
                        metadata: Default::default(),
                    },
                })
                .collect();
            let t: Vec<(&str, &[u8])> = if with {
                (start..end)
                    .map(|i| (ids[i].as_str(), thumbs[i].as_slice()))
                    .collect()
            } else {
                Vec::new()
            };
            store.write_with("g", &changes, &t).unwrap();
        }
        drop(store);
        let after = std::fs::metadata(&path).unwrap().len();
        per_item[k] = (after - before) as f64 / thumbs.len() as f64;
    }
    (per_item[0], per_item[1])
}

fn main() {
    let photos = photos();
    let limits = DecodeLimits::default();
    let decoded: Vec<_> = photos.iter().map(|b| decode(b, &limits).unwrap()).collect();
    let source: f64 = photos.iter().map(|b| b.len() as f64).sum::<f64>() / photos.len() as f64;
    println!(
        "{} grocery test photos, {:.0} bytes each on average ({}x{} first)",
        photos.len(),
        source,
        decoded[0].width(),
        decoded[0].height()
    );
    let mut default_thumbs = Vec::new();
    for (side, quality) in [(256, 80), (128, 80), (256, 90)] {
        let cfg = ThumbnailConfig {
            max_side: side,
            quality,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        let mut ms = Vec::new();
        let mut thumbs = Vec::new();
        for img in &decoded {
            let t = Instant::now();
            let jpeg = make(img, &cfg).unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            bytes.push(jpeg.len() as f64);
            thumbs.push(jpeg);
        }
        bytes.sort_by(f64::total_cmp);
        ms.sort_by(f64::total_cmp);
        let mean = bytes.iter().sum::<f64>() / bytes.len() as f64;
        println!(
            "max_side {side} quality {quality}: bytes/item mean {mean:.0} median {:.0} p99 {:.0}; make ms median {:.2} p99 {:.2}",
            pct(&bytes, 0.5),
            pct(&bytes, 0.99),
            pct(&ms, 0.5),
            pct(&ms, 0.99),
        );
        if (side, quality) == (256, 80) {
            default_thumbs = thumbs;
        }
    }
    let (without, with) = file_growth(&default_thumbs);
    println!(
        "redb file growth per item (1280-d descriptor, no metadata): {without:.0} bytes without thumbnails, {with:.0} with (default settings)"
    );
}
