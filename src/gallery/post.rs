//! Gallery-side post-processing state (spec section 3): every item's
//! nearest gallery neighbours (for online KR) and its DBA vector (what the
//! ANN index holds when DBA is on).
//!
//! Design: a snapshot is immutable and equals the batch computation over
//! the live gallery it was taken of. Writes only count how many items
//! changed since ("stale", reported in GalleryStats); a debounced
//! background refresher derives the next snapshot from the previous one
//! (`Snapshot::update`): only the added items, the items whose neighbour
//! lists lost a member and the items whose farthest item left are
//! compared with the whole gallery, O(changes x n x d) instead of the
//! O(n^2 d) of a full computation, and only the DBA vectors whose
//! neighbours changed are recomputed (and re-indexed). The lag is one
//! debounce plus one refresh.
//!
//! Saved at shutdown with the rest of the derived state (`persist`);
//! opening a gallery restores it where it matches the store, else
//! computes the first snapshot in full before serving.

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
            dba: false,
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
        let raw = stack(items, dims)?;
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

    /// `compute`, with every row reported changed (as `update` reports).
    pub fn compute_all(
        items: &[(u64, Vector)],
        dims: usize,
        cfg: &PostConfig,
        generation: u64,
    ) -> Result<(Self, Vec<usize>), RerankError> {
        let snap = Self::compute(items, dims, cfg, generation)?;
        let all = (0..snap.len()).collect();
        Ok((snap, all))
    }

    /// The snapshot of `items` (seq, raw unit vector; id order, as
    /// `compute` takes them) derived from `self`, and the rows whose DBA
    /// vector is new or changed (all rows when DBA is off or when it
    /// falls back to a full computation). Equal to `compute(items)`.
    pub fn update(
        &self,
        items: &[(u64, Vector)],
        dims: usize,
        cfg: &PostConfig,
        generation: u64,
    ) -> Result<(Self, Vec<usize>), RerankError> {
        let origin: Vec<Option<usize>> = items
            .iter()
            .map(|(seq, _)| self.row_of.get(seq).copied())
            .collect();
        let kept = origin.iter().flatten().count();
        let changes = (items.len() - kept) + (self.len() - kept);
        let (Some(old_nb), true) = (&self.neighbours, changes * 8 <= items.len()) else {
            return Self::compute_all(items, dims, cfg, generation);
        };
        let raw = stack(items, dims)?;
        let nb = old_nb.updated(self.raw.view(), raw.view(), &origin, cfg.neighbours_k)?;
        let (dba, changed) = match (&self.dba, cfg.dba) {
            (Some(old_dba), true) => {
                let k = cfg.dba_k.min(nb.k());
                // A row's DBA vector depends only on its own vector and its
                // first k neighbours (seqs name vectors: a replaced item
                // gets a new seq).
                let seqs_of = |snap_seqs: &[u64], ids: &[u32]| -> Vec<u64> {
                    ids[..k].iter().map(|&j| snap_seqs[j as usize]).collect()
                };
                let new_seqs: Vec<u64> = items.iter().map(|e| e.0).collect();
                let changed: Vec<usize> = (0..items.len())
                    .filter(|&i| match origin[i] {
                        None => true,
                        Some(o) => {
                            k != cfg.dba_k.min(old_nb.k())
                                || seqs_of(&self.seqs, neighbour_row(old_nb, o))
                                    != seqs_of(&new_seqs, neighbour_row(&nb, i))
                        }
                    })
                    .collect();
                let ranking: Vec<Vec<usize>> = changed
                    .iter()
                    .map(|&i| neighbour_row(&nb, i).iter().map(|&j| j as usize).collect())
                    .collect();
                // Nothing changed (say, an item added and removed again
                // between refreshes): no DBA vector to recompute.
                let fresh = if changed.is_empty() {
                    Array2::<f32>::zeros((0, dims))
                } else {
                    query_dba(
                        raw.select(ndarray::Axis(0), &changed).view(),
                        raw.view(),
                        &ranking,
                        k,
                        true,
                    )?
                };
                let mut dba = Array2::<f32>::zeros(raw.raw_dim());
                for (i, mut row) in dba.rows_mut().into_iter().enumerate() {
                    if let Some(o) = origin[i] {
                        row.assign(&old_dba.row(o));
                    }
                }
                for (t, &i) in changed.iter().enumerate() {
                    dba.row_mut(i).assign(&fresh.row(t));
                }
                (Some(dba), changed)
            }
            (_, false) => (None, (0..items.len()).collect()),
            (None, true) => {
                return Self::compute_all(items, dims, cfg, generation);
            }
        };
        Ok((
            Self {
                generation,
                seqs: items.iter().map(|e| e.0).collect(),
                row_of: items.iter().enumerate().map(|(i, e)| (e.0, i)).collect(),
                raw,
                neighbours: Some(nb),
                dba,
            },
            changed,
        ))
    }

    /// A snapshot from saved parts (rows in id order, as computed).
    pub fn from_parts(
        generation: u64,
        seqs: Vec<u64>,
        raw: Array2<f32>,
        neighbours: Option<GalleryNeighbours>,
        dba: Option<Array2<f32>>,
    ) -> Self {
        Self {
            generation,
            row_of: seqs.iter().enumerate().map(|(i, &s)| (s, i)).collect(),
            seqs,
            raw,
            neighbours,
            dba,
        }
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

/// The items' vectors as matrix rows.
fn stack(items: &[(u64, Vector)], dims: usize) -> Result<Array2<f32>, RerankError> {
    let mut raw = Array2::<f32>::zeros((items.len(), dims));
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
    Ok(raw)
}

fn neighbour_row(nb: &GalleryNeighbours, i: usize) -> &[u32] {
    let (k, _, ids, _, _) = nb.parts();
    &ids[i * k..(i + 1) * k]
}
