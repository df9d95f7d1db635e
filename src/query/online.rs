//! Per-request post-processing (spec section 3) on one query: ANN
//! shortlist, optional AQE / alpha-QE and a second search, then KR over
//! the shortlist with the gallery's stored neighbour lists (`kr_single`).
//! The stages themselves are the batch implementations in `crate::rerank`.
//! With the gallery-fitted projection on, the query is projected first and
//! every later stage works in the projected space.
//!
//! This is the query layer's: it reads the gallery only through its public
//! calls (`post_snapshot`, `post_config`, `search`, `get`), and the gallery keeps no
//! knowledge of plans or stages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::gallery::post::Snapshot;
use crate::gallery::projection::pad;
use crate::gallery::{Gallery, Hit, Metadata, SearchParams, SpaceChanged};
use crate::rerank::aqe::{alpha_qe, aqe};
use crate::rerank::kreciprocal::GalleryNeighbours;
use crate::rerank::kreciprocal::{kr_single, KrParams};
use crate::rerank::RerankError;

/// Query expansion: `alpha == 0` is AQE, `> 0` alpha-QE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryExpansion {
    pub k: usize,
    pub alpha: f64,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub top_k: usize,
    pub ef: usize,
    pub exact: bool,
    /// Candidates KR re-ranks (at least `top_k`).
    pub shortlist: usize,
    pub qe: Option<QueryExpansion>,
    pub kr: Option<KrParams>,
}

#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error(transparent)]
    Rerank(#[from] RerankError),
    /// Refits kept overtaking the request (each retry is cheap; this
    /// takes several refreshes within one search).
    #[error("the gallery's projection kept changing during the search; retry")]
    SpaceChanged,
}

/// How many times a request starts again after a refit overtook it.
const SPACE_RETRIES: usize = 3;

#[derive(Debug)]
pub struct Outcome {
    pub hits: Vec<Hit>,
    pub timings: Vec<(&'static str, Duration)>,
    /// The stages that shaped the ranking, in order (`SearchResponse.stages`).
    pub stages: Vec<&'static str>,
    /// Stages the plan asked for that did not run, with why
    /// (`SearchResponse.degraded`).
    pub degraded: Vec<String>,
}

/// Runs `plan` for the unit query `q`. Blocking (CPU-bound).
pub fn search(
    g: &Gallery,
    q: &[f32],
    plan: &Plan,
    filter: &Metadata,
    exclude: Option<&str>,
) -> Result<Outcome, OnlineError> {
    for _ in 0..SPACE_RETRIES {
        match attempt(g, q, plan, filter, exclude) {
            Err(Failed::SpaceChanged) => continue,
            Err(Failed::Online(e)) => return Err(e),
            Ok(out) => return Ok(out),
        }
    }
    Err(OnlineError::SpaceChanged)
}

enum Failed {
    SpaceChanged,
    Online(OnlineError),
}

impl From<SpaceChanged> for Failed {
    fn from(_: SpaceChanged) -> Self {
        Failed::SpaceChanged
    }
}

impl From<RerankError> for Failed {
    fn from(e: RerankError) -> Self {
        Failed::Online(e.into())
    }
}

/// One try of `search` in the space of the snapshot it starts from.
fn attempt(
    g: &Gallery,
    q: &[f32],
    plan: &Plan,
    filter: &Metadata,
    exclude: Option<&str>,
) -> Result<Outcome, Failed> {
    let mut timings = Vec::new();
    let mut stages = Vec::new();
    // One snapshot for the whole request, so that every use agrees.
    let snapshot = g.post_snapshot();
    let space = snapshot.as_ref().and_then(|s| s.projection.clone());
    let into_space = |v: &[f32]| -> Result<Vec<f32>, RerankError> {
        match &space {
            Some(p) => p.apply(v),
            None => Ok(v.to_vec()),
        }
    };
    let t = Stage::start("projection");
    let q = into_space(q)?;
    let projected = t.end();
    if space.is_some() {
        stages.push("projection");
        timings.push(projected);
    }
    let q = &q[..];
    // The index holds DBA vectors once a refresh has computed them.
    if g.post_config().dba && snapshot.as_ref().is_some_and(|s| s.dba.is_some()) {
        stages.push("dba");
    }
    let want = if plan.kr.is_some() {
        plan.shortlist.max(plan.top_k)
    } else {
        plan.top_k
    };
    let params = |k| SearchParams {
        k,
        ef: plan.ef,
        exact: plan.exact,
        filter,
        exclude,
        space: space.as_ref(),
    };
    let t = Stage::start("search");
    // With query expansion the first search only finds the qe.k rows to
    // expand with (the shortlist comes from the second): a smaller k makes
    // the exact scan's re-scoring pass cheaper.
    let first_k = plan.qe.map_or(want, |qe| qe.k);
    let mut hits = g.search(q, &params(first_k))?;
    timings.push(t.end());

    let mut query = q.to_vec();
    if let Some(qe) = plan.qe {
        let t = Stage::start("query_expansion");
        let expanded = expand_from_hits(g, q, &hits, qe, snapshot.as_deref(), &into_space)?;
        timings.push(t.end());
        let t = Stage::start("search_expanded");
        match expanded {
            Some(q2) => {
                stages.push(if qe.alpha > 0.0 { "alpha_qe" } else { "aqe" });
                hits = g.search(&q2, &params(want))?;
                query = q2;
            }
            // Nothing to expand with: the shortlist of the query itself.
            None if first_k < want => hits = g.search(q, &params(want))?,
            None => {}
        }
        timings.push(t.end());
    }
    hits.truncate(want);

    let mut degraded = Vec::new();
    // Nothing to re-rank without hits (an empty gallery, or a filter
    // that matched nothing): not a degraded answer.
    if let Some(kr) = plan.kr.as_ref().filter(|_| !hits.is_empty()) {
        let t = Stage::start("k_reciprocal");
        match kr_inputs(snapshot.as_deref(), &hits) {
            Err(why) => {
                crate::telemetry::metrics()
                    .search_degraded
                    .with_label_values(&["k_reciprocal"])
                    .inc();
                degraded.push(format!("k_reciprocal: {why}"));
            }
            Ok((snap, nb)) => {
                let mut by_row: HashMap<usize, Hit> = HashMap::new();
                for h in hits.drain(..) {
                    if let Some(&row) = snap.row_of.get(&h.seq) {
                        by_row.insert(row, h);
                    }
                }
                let mut rows: Vec<usize> = by_row.keys().copied().collect();
                rows.sort_unstable();
                if !rows.is_empty() {
                    stages.push("k_reciprocal");
                    // The working rows may be narrower (projected); the
                    // query's padding is zeros.
                    let work = snap.working();
                    let ranked = kr_single(
                        ArrayView1::from(&query[..work.ncols()]),
                        work,
                        nb,
                        &rows,
                        None,
                        kr,
                        plan.top_k,
                    )?;
                    for (row, d) in ranked {
                        if let Some(mut h) = by_row.remove(&row) {
                            h.distance = d as f32;
                            hits.push(h);
                        }
                    }
                }
                timings.push(t.end());
            }
        }
    }
    hits.truncate(plan.top_k);
    Ok(Outcome {
        hits,
        timings,
        stages,
        degraded,
    })
}

/// The snapshot and neighbour lists KR needs for `hits`, or why it cannot
/// run. KR needs each shortlisted item's stored neighbour list: until the
/// refresh after a write has run (GalleryStats.stale_items), a shortlist
/// holding an item added since is answered without KR, so that a fresh
/// item is never hidden, and the response says so.
fn kr_inputs<'s>(
    snapshot: Option<&'s Snapshot>,
    hits: &[Hit],
) -> Result<(&'s Snapshot, &'s GalleryNeighbours), String> {
    let snap = snapshot.ok_or("the gallery's first neighbour refresh has not run yet")?;
    let nb = snap
        .neighbours
        .as_ref()
        .ok_or("the gallery had fewer than two items at its last neighbour refresh")?;
    let fresh = hits
        .iter()
        .filter(|h| !snap.row_of.contains_key(&h.seq))
        .count();
    if fresh > 0 {
        return Err(format!(
            "{fresh} of the {} shortlisted items were written since the last neighbour refresh; ranked without re-ranking until it lands",
            hits.len()
        ));
    }
    Ok((snap, nb))
}

/// Maps a stored vector into the request's space (the projection, if any).
type IntoSpace<'a> = dyn Fn(&[f32]) -> Result<Vec<f32>, RerankError> + 'a;

/// The expanded query from the top `qe.k` hits' stored vectors (in the
/// request's space), or None when there is nothing to expand with: no hits,
/// or every hit removed since the search (a concurrent RemoveFromGallery;
/// the soak found this as an INTERNAL 'aqe k >= 1'). A hit the request's
/// `snapshot` holds projected (the request's space is that snapshot's) is
/// read from there instead of projected again.
fn expand_from_hits(
    g: &Gallery,
    q: &[f32],
    hits: &[Hit],
    qe: QueryExpansion,
    snapshot: Option<&Snapshot>,
    into_space: &IntoSpace<'_>,
) -> Result<Option<Vec<f32>>, RerankError> {
    let k = qe.k.min(hits.len());
    let projected_row = |seq: u64| -> Option<Vec<f32>> {
        let s = snapshot?;
        let row = s.projected.as_ref()?.row(*s.row_of.get(&seq)?);
        Some(pad(row.iter().copied(), q.len()))
    };
    let rows: Vec<crate::index::Vector> = hits[..k]
        .iter()
        .filter_map(|h| {
            let e = g.get(&h.id)?;
            // The same seq: the vector the search saw, not a replacement.
            let saved = (e.seq == h.seq).then(|| projected_row(h.seq)).flatten();
            Some(match saved {
                Some(v) => Ok(v),
                None => into_space(&e.vector),
            })
        })
        .map(|v| v.map(Into::into))
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Ok(None);
    }
    expand(q, &rows, qe.alpha)
}

/// One timed stage, with a tracing span (debug level, like the embed
/// stages) under whatever span the caller entered: the request's.
struct Stage {
    name: &'static str,
    started: Instant,
    _span: tracing::span::EnteredSpan,
}

impl Stage {
    fn start(name: &'static str) -> Self {
        Self {
            name,
            started: Instant::now(),
            _span: tracing::debug_span!("stage", stage = name).entered(),
        }
    }

    /// Closes the span; the stage's name and time, for `Outcome.timings`.
    fn end(self) -> (&'static str, Duration) {
        (self.name, self.started.elapsed())
    }
}

/// Spec AQE / alpha-QE over the top rows, re-normalised (the online
/// service searches with unit vectors). None for a zero result.
fn expand(
    q: &[f32],
    rows: &[crate::index::Vector],
    alpha: f64,
) -> Result<Option<Vec<f32>>, RerankError> {
    let d = q.len();
    let mut gal = Array2::<f32>::zeros((rows.len(), d));
    for (mut r, v) in gal.rows_mut().into_iter().zip(rows) {
        r.assign(&ArrayView1::from(&v[..]));
    }
    let qv = ArrayView2::from_shape((1, d), q).map_err(|_| RerankError::DimMismatch {
        what: "query",
        got: q.len(),
        expected: d,
    })?;
    let ranking = vec![(0..rows.len()).collect::<Vec<_>>()];
    let out = if alpha > 0.0 {
        alpha_qe(qv, gal.view(), &ranking, rows.len(), alpha)?
    } else {
        aqe(qv, gal.view(), &ranking, rows.len())?
    };
    Ok(crate::index::distance::normalised(
        out.as_slice().unwrap_or(&[]),
    ))
}

#[cfg(test)]
mod tests;
