//! Fixtures shared by the gallery's tests and the query layer's tests
//! that run requests over a real gallery (`crate::query::online`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ndarray::{Array2, ArrayView1};

use super::post::PostConfig;
use super::projection::ProjectionConfig;
use super::{Galleries, Gallery, Metadata, NewItem};
use crate::index::HnswParams;
use crate::query::online::Plan;
use crate::rerank::kreciprocal::KrParams;
use crate::store::GalleryMeta;

pub(crate) const DIMS: usize = 16;

fn unit_vector(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..DIMS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    crate::index::distance::normalised(&v).unwrap()
}

/// Clustered items, so neighbour lists and KR have structure.
pub(crate) fn item(i: u64) -> NewItem {
    let centre = unit_vector(1000 + i % 7);
    let noise = unit_vector(i + 1);
    let v: Vec<f32> = centre
        .iter()
        .zip(&noise)
        .map(|(c, n)| c + 0.4 * n)
        .collect();
    NewItem {
        id: format!("item-{i:04}"),
        vector: crate::index::distance::normalised(&v).unwrap(),
        metadata: Metadata::new(),
    }
}

pub(crate) fn open(dir: &Path, cfg: PostConfig) -> Arc<Gallery> {
    open_with(dir, cfg, HnswParams::default())
}

pub(crate) fn open_with(dir: &Path, cfg: PostConfig, params: HnswParams) -> Arc<Gallery> {
    let gs = Galleries::open(&dir.join("db.redb"), params, cfg).unwrap();
    let meta = GalleryMeta {
        model_fingerprint: "test".into(),
        dims: DIMS as u32,
    };
    gs.create("g", meta).unwrap()
}

/// No background refresher interference: a long debounce.
pub(crate) fn manual() -> PostConfig {
    PostConfig {
        dba: true,
        debounce: Duration::from_secs(3600),
        ..PostConfig::default()
    }
}

/// Live items in id order (the snapshot's row order) as a matrix.
pub(crate) fn live_matrix(g: &Gallery) -> (Vec<String>, Array2<f32>) {
    let (items, _) = g.list(None, usize::MAX);
    let mut m = Array2::zeros((items.len(), DIMS));
    for (mut row, (_, e)) in m.rows_mut().into_iter().zip(&items) {
        row.assign(&ArrayView1::from(&e.vector[..]));
    }
    (items.into_iter().map(|(id, _)| id).collect(), m)
}

/// KR (default parameters) over every item of an `n`-item gallery, exact search.
pub(crate) fn whole_gallery_kr(n: usize) -> Plan {
    Plan {
        top_k: n,
        ef: 256,
        exact: true,
        shortlist: n,
        qe: None,
        kr: Some(KrParams::default()),
    }
}

/// A gallery with a graph (low exact limit), no refresher interference.
pub(crate) fn graph_params() -> HnswParams {
    HnswParams {
        exact_limit: 100,
        rebuild_tombstone_ratio: f64::INFINITY,
        ..HnswParams::default()
    }
}

pub(crate) fn meta() -> GalleryMeta {
    GalleryMeta {
        model_fingerprint: "test".into(),
        dims: DIMS as u32,
    }
}

/// The gallery-fitted projection on, DBA off or on, no refresher.
pub(crate) fn projected(dba: bool, components: usize, beta: f64) -> PostConfig {
    PostConfig {
        dba,
        projection: Some(ProjectionConfig { components, beta }),
        ..manual()
    }
}
