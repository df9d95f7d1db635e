//! Gallery-side post-processing state (spec section 3): every item's
//! nearest gallery neighbours (for online KR) and its DBA vector (what the
//! ANN index holds when DBA is on).
//!
//! Design: recomputed, not persisted. A snapshot is a full batch
//! recomputation over the live gallery (one f32 GEMM screen with exact f64
//! re-checks, O(N^2 d), plus an HNSW rebuild over the DBA vectors), so once
//! a refresh finishes the online state is by construction the batch result
//! of that gallery. Writes only count how many items changed since the
//! snapshot ("stale", reported in GalleryStats); a background refresher,
//! debounced, recomputes, so the lag is one debounce plus one refresh.
//! Opening a gallery at start-up runs the same refresh before serving:
//! start-up costs one recomputation per gallery instead of reading N x k
//! neighbour lists and N DBA vectors from redb (and there is no persisted
//! state to keep consistent with the items). This suits galleries up to
//! roughly 10^5 items; beyond that an incremental refresher would be needed.

use std::collections::HashMap;
use std::time::Duration;

use ndarray::Array2;

use crate::index::Vector;
use crate::rerank::dba::query_dba;
use crate::rerank::kreciprocal::GalleryNeighbours;
use crate::rerank::RerankError;

/// Gallery-side settings (`[post_processing]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct PostConfig {
    /// Index DBA vectors instead of the raw descriptors.
    pub dba: bool,
    pub dba_k: usize,
    /// Neighbours kept per item; KR needs k1 <= this and k2 - 1 <= this.
    pub neighbours_k: usize,
    /// Wait after a write before refreshing, so bursts share one refresh.
    pub debounce: Duration,
}

impl Default for PostConfig {
    fn default() -> Self {
        Self {
            dba: true,
            dba_k: 10,
            neighbours_k: 21,
            debounce: Duration::from_millis(200),
        }
    }
}

/// One consistent recomputation over the gallery as it was at `generation`.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// Row -> item seq (rows are in id order).
    pub seqs: Vec<u64>,
    /// Item seq -> row.
    pub row_of: HashMap<u64, usize>,
    /// Raw unit descriptors, one row per item.
    pub raw: Array2<f32>,
    /// None with fewer than two items (no neighbours to list).
    pub neighbours: Option<GalleryNeighbours>,
    /// Re-normalised DBA vectors, when DBA is on.
    pub dba: Option<Array2<f32>>,
}

impl Snapshot {
    /// Batch computation over `items` (seq, raw unit vector).
    pub fn compute(
        items: &[(u64, Vector)],
        dims: usize,
        cfg: &PostConfig,
        generation: u64,
    ) -> Result<Self, RerankError> {
        let n = items.len();
        let mut raw = Array2::<f32>::zeros((n, dims));
        for (mut row, (_, v)) in raw.rows_mut().into_iter().zip(items) {
            if v.len() != dims {
                return Err(RerankError::DimMismatch {
                    what: "gallery item",
                    got: v.len(),
                    expected: dims,
                });
            }
            row.assign(&ndarray::ArrayView1::from(&v[..]));
        }
        let neighbours = if n >= 2 {
            Some(GalleryNeighbours::build(raw.view(), cfg.neighbours_k)?)
        } else {
            None
        };
        let dba = match (&neighbours, cfg.dba) {
            (_, false) => None,
            // Spec: neighbours from the gallery itself, excluding the item;
            // with fewer than k others, as many as there are.
            (Some(nb), true) => {
                let k = cfg.dba_k.min(nb.k());
                let ranking: Vec<Vec<usize>> = (0..n)
                    .map(|i| neighbour_row(nb, i).iter().map(|&j| j as usize).collect())
                    .collect();
                Some(query_dba(raw.view(), raw.view(), &ranking, k, true)?)
            }
            (None, true) => Some(raw.clone()),
        };
        Ok(Self {
            generation,
            seqs: items.iter().map(|e| e.0).collect(),
            row_of: items.iter().enumerate().map(|(i, e)| (e.0, i)).collect(),
            raw,
            neighbours,
            dba,
        })
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Row `row`'s neighbour rows, nearest first (empty below two items).
    pub fn neighbours_of(&self, row: usize) -> &[u32] {
        self.neighbours
            .as_ref()
            .map_or(&[][..], |nb| neighbour_row(nb, row))
    }
}

fn neighbour_row(nb: &GalleryNeighbours, i: usize) -> &[u32] {
    let (k, _, ids, _, _) = nb.parts();
    &ids[i * k..(i + 1) * k]
}
