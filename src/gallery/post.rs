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
//! With the gallery-fitted projection on (`projection`), every stage
//! here works on the projected rows (`working`): neighbour lists and DBA
//! vectors live in the projected space, which the index then holds. The
//! fit is kept by incremental updates until the items changed since it
//! pass 1/8 of the gallery; the next refresh then refits and recomputes.
//!
//! Saved at shutdown with the rest of the derived state (`persist`);
//! opening a gallery restores it where it matches the store, else
//! computes the first snapshot in full before serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ndarray::Array2;

use super::projection::{Projection, ProjectionConfig};
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
    /// The gallery-fitted projection; None: search the raw descriptors.
    pub projection: Option<ProjectionConfig>,
}

impl Default for PostConfig {
    fn default() -> Self {
        Self {
            dba: false,
            dba_k: 10,
            neighbours_k: 21,
            debounce: Duration::from_millis(200),
            projection: None,
        }
    }
}

/// A snapshot's fitted projection as saved (`persist`): the fit, the
/// projected rows and the changes counted since the fit.
pub struct SavedSpace {
    pub projection: Arc<Projection>,
    pub projected: Array2<f32>,
    pub since_fit: usize,
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
    /// Re-normalised DBA vectors (of the working rows), when DBA is on.
    pub dba: Option<Array2<f32>>,
    /// The fitted projection, when configured and fittable (two items).
    pub projection: Option<Arc<Projection>>,
    /// `raw` projected (`projection.components()` wide).
    pub projected: Option<Array2<f32>>,
    /// Items added or removed since the projection was fitted.
    pub since_fit: usize,
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
        let projection = match &cfg.projection {
            Some(pc) => Projection::fit(raw.view(), pc)?.map(Arc::new),
            None => None,
        };
        let projected = match &projection {
            Some(p) => Some(p.transform(raw.view())?),
            None => None,
        };
        let work = projected.as_ref().unwrap_or(&raw);
        let neighbours = if n >= 2 {
            Some(GalleryNeighbours::build(work.view(), cfg.neighbours_k)?)
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
                Some(query_dba(work.view(), work.view(), &ranking, k, true)?)
            }
            (None, true) => Some(work.clone()),
        };
        Ok(Self {
            generation,
            seqs: items.iter().map(|e| e.0).collect(),
            row_of: items.iter().enumerate().map(|(i, e)| (e.0, i)).collect(),
            raw,
            neighbours,
            dba,
            projection,
            projected,
            since_fit: 0,
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
        let since_fit = self.since_fit + changes;
        // A refit changes every projected row: recompute in full then.
        let refit = match &cfg.projection {
            None => false,
            Some(_) => self.projection.is_none() || since_fit * 8 > items.len(),
        };
        let (Some(old_nb), true, false) = (&self.neighbours, changes * 8 <= items.len(), refit)
        else {
            return Self::compute_all(items, dims, cfg, generation);
        };
        let raw = stack(items, dims)?;
        let projected = match &self.projection {
            Some(p) => Some(self.projected_rows(p, raw.view(), &origin)?),
            None => None,
        };
        let work = projected.as_ref().unwrap_or(&raw);
        let nb = old_nb.updated(self.working(), work.view(), &origin, cfg.neighbours_k)?;
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
                    Array2::<f32>::zeros((0, work.ncols()))
                } else {
                    query_dba(
                        work.select(ndarray::Axis(0), &changed).view(),
                        work.view(),
                        &ranking,
                        k,
                        true,
                    )?
                };
                let mut dba = Array2::<f32>::zeros(work.raw_dim());
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
                projection: self.projection.clone(),
                projected,
                since_fit,
            },
            changed,
        ))
    }

    /// `raw`'s rows projected with `p`: copied from this snapshot where
    /// `origin` names one of its rows, else projected now.
    fn projected_rows(
        &self,
        p: &Projection,
        raw: ndarray::ArrayView2<f32>,
        origin: &[Option<usize>],
    ) -> Result<Array2<f32>, RerankError> {
        let fresh: Vec<usize> = (0..origin.len()).filter(|&i| origin[i].is_none()).collect();
        let new_rows = p.transform(raw.select(ndarray::Axis(0), &fresh).view())?;
        let old = self.working();
        let mut out = Array2::<f32>::zeros((origin.len(), p.components()));
        for (i, mut row) in out.rows_mut().into_iter().enumerate() {
            if let Some(o) = origin[i] {
                row.assign(&old.row(o));
            }
        }
        for (t, &i) in fresh.iter().enumerate() {
            out.row_mut(i).assign(&new_rows.row(t));
        }
        Ok(out)
    }

    /// The rows every stage works on: projected when a projection is
    /// fitted, else the raw descriptors.
    pub fn working(&self) -> ndarray::ArrayView2<'_, f32> {
        self.projected.as_ref().unwrap_or(&self.raw).view()
    }

    /// What the index should hold for each row (DBA vectors, else the
    /// projected rows), `working().ncols()` wide; None: the raw descriptors.
    pub fn indexed(&self) -> Option<&Array2<f32>> {
        self.dba.as_ref().or(self.projected.as_ref())
    }

    /// A snapshot from saved parts (rows in id order, as computed).
    pub fn from_parts(
        generation: u64,
        seqs: Vec<u64>,
        raw: Array2<f32>,
        neighbours: Option<GalleryNeighbours>,
        dba: Option<Array2<f32>>,
        space: Option<SavedSpace>,
    ) -> Self {
        let (projection, projected, since_fit) = match space {
            Some(s) => (Some(s.projection), Some(s.projected), s.since_fit),
            None => (None, None, 0),
        };
        Self {
            generation,
            row_of: seqs.iter().enumerate().map(|(i, &s)| (s, i)).collect(),
            seqs,
            raw,
            neighbours,
            dba,
            projection,
            projected,
            since_fit,
        }
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
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
