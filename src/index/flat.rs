//! Exact search over a gallery's indexed vectors, in two passes.
//!
//! Every row also lives as int8 codes (one scale per row) in one contiguous
//! matrix. The first pass scans the codes, a quarter of the f32 rows' memory
//! traffic (the full scan is memory-bound), and bounds each row's error;
//! the second re-scores in f32 only the rows whose bound still admits them
//! to the top k. The answer is the f32 scan's (`exact::top_k`): the same
//! rows, distances bit for bit, ties by seq.
//!
//! Slots are reused after removals, so the matrix stays as large as the
//! most items the gallery has held at once. Codes cover only the leading
//! `width` dimensions, past which every row is zero: the gallery-fitted
//! projection pads its rows back to the descriptor's width with zeros,
//! which need not be scanned.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::LazyLock;

use rayon::prelude::*;

use super::distance::dot_codes;
use super::exact;
use super::Vector;

/// Rows per parallel chunk: below about this many code bytes a second
/// thread costs more than it saves.
const CHUNK_BYTES: usize = 4 << 20;

/// Fewest re-scored rows worth a thread of their own.
const RESCORE_PART_MIN: usize = 256;

/// Threads for the scans (None: the pool could not start, and scans run
/// on the global pool): [`set_scan_threads`], else one per core.
static SCAN_POOL: LazyLock<Option<rayon::ThreadPool>> = LazyLock::new(|| {
    rayon::ThreadPoolBuilder::new()
        .num_threads(SCAN_THREADS.get().copied().unwrap_or(0))
        .thread_name(|i| format!("scan-{i}"))
        .build()
        .ok()
});

static SCAN_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sizes the scan pool (the server's CPU budget): call before the first
/// scan, which starts the pool; later calls have no effect.
pub fn set_scan_threads(n: usize) {
    let _ = SCAN_THREADS.set(n);
}

#[derive(Default)]
pub struct FlatRows {
    /// Length of the rows.
    dims: usize,
    /// Codes per row: every live row is zero past it.
    width: usize,
    /// Slot-major int8 codes, `width` per slot.
    codes: Vec<i8>,
    /// Per slot: the value of one code step (`max |x| / 127`) and the L2
    /// norm of the row's quantisation error (rounded up).
    scales: Vec<(f32, f32)>,
    /// Per slot: the item seq and its f32 row (shared with the item), or
    /// None for a free slot.
    rows: Vec<Option<(u64, Vector)>>,
    slot_of: HashMap<u64, usize>,
    free: Vec<usize>,
}

/// Per-row bound on |f32 dot - int8 dot| for a query of L1 norm `l1` and
/// L2 norm `l2`: the row's error vector e has |e_i| <= scale / 2, so the
/// dots differ by at most `scale * l1 / 2`, and by Cauchy-Schwarz by at
/// most `l2 * |e|` (about a quarter tighter on spread-out rows); the
/// `scale * l1 / 100` covers the int8 dot's own f32 rounding (a few hundred
/// terms deep), the constant the f32 dot's.
fn error_bound((scale, err): (f32, f32), l1: f32, l2: f32) -> f32 {
    (scale * l1 * 0.5).min(l2 * err) + scale * l1 * 0.01 + 1e-4
}

impl FlatRows {
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Bytes held by the codes and scales (the f32 rows are the items').
    pub fn code_bytes(&self) -> usize {
        self.codes.len() + 8 * self.scales.len()
    }

    /// Codes per row (the leading dimensions scanned).
    pub fn width(&self) -> usize {
        self.width
    }

    /// A matrix of `rows` (seq, vector), all of one length, each encoded
    /// once; `narrow`: codes only as wide as the rows need (as `compact`
    /// leaves them), else full rows.
    pub fn of_rows(rows: Vec<(u64, Vector)>, narrow: bool) -> Self {
        let mut flat = Self::default();
        let Some(dims) = rows.first().map(|(_, v)| v.len()) else {
            return flat;
        };
        flat.dims = dims;
        flat.width = match narrow {
            true => rows.iter().map(|(_, v)| significant(v)).max().unwrap_or(0),
            false => dims,
        };
        for (seq, v) in rows {
            flat.put(seq, v);
        }
        flat
    }

    /// Sets `seq`'s row to `v` (a new row, or a replacement in place).
    /// Rows must all have one length; the first row fixes it.
    pub fn put(&mut self, seq: u64, v: Vector) {
        // The default matrix (`remove` resets to it when emptied).
        if self.dims == 0 {
            self.dims = v.len();
            self.width = v.len();
        }
        debug_assert_eq!(v.len(), self.dims, "rows of one length");
        // Past a compacted width: back to full rows at once, so that rows
        // ending in zeros (ReLU features) cannot make it widen step by step,
        // each step re-encoding every row under the gallery's write lock.
        if significant(&v) > self.width {
            self.recode(self.dims);
        }
        let slot = match self.slot_of.get(&seq) {
            Some(&s) => s,
            None => {
                let s = self.free.pop().unwrap_or_else(|| {
                    self.rows.push(None);
                    self.scales.push((0.0, 0.0));
                    self.codes.resize(self.codes.len() + self.width, 0);
                    self.rows.len() - 1
                });
                self.slot_of.insert(seq, s);
                s
            }
        };
        let codes = &mut self.codes[slot * self.width..(slot + 1) * self.width];
        self.scales[slot] = quantise(&v[..self.width], codes);
        self.rows[slot] = Some((seq, v));
    }

    /// Narrows the codes to what the live rows need (after the rows moved
    /// to a space with fewer significant dimensions, e.g. a projection);
    /// rows start at full width and only this narrows them.
    pub fn compact(&mut self) {
        let need = self
            .rows
            .iter()
            .flatten()
            .map(|(_, v)| significant(v))
            .max()
            .unwrap_or(0);
        if need < self.width {
            self.recode(need);
        }
    }

    /// Re-encodes every live row with `width` codes.
    fn recode(&mut self, width: usize) {
        self.width = width;
        self.codes = vec![0; self.rows.len() * width];
        for (slot, row) in self.rows.iter().enumerate() {
            if let Some((_, v)) = row {
                let codes = &mut self.codes[slot * width..(slot + 1) * width];
                self.scales[slot] = quantise(&v[..width], codes);
            }
        }
    }

    pub fn remove(&mut self, seq: u64) {
        if let Some(slot) = self.slot_of.remove(&seq) {
            self.rows[slot] = None;
            self.free.push(slot);
        }
        if self.slot_of.is_empty() {
            *self = Self::default();
        }
    }

    /// The `k` rows nearest to the unit vector `query` among those `accept`
    /// admits, as (seq, Euclidean distance), nearest first, ties by seq:
    /// exactly `exact::top_k` over the same rows.
    pub fn top_k(
        &self,
        query: &[f32],
        k: usize,
        accept: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        if k == 0 || self.is_empty() || query.len() != self.dims {
            return Vec::new();
        }
        // On the scans' own threads: rayon's global pool also runs the
        // refreshes, whose long tasks would hold a request's chunks back
        // (seconds after a bulk add, measured through the server). A caller
        // already on a rayon pool keeps its own.
        match (rayon::current_thread_index(), &*SCAN_POOL) {
            (None, Some(pool)) => pool.install(|| self.scan(query, k, accept)),
            _ => self.scan(query, k, accept),
        }
    }

    fn scan(
        &self,
        query: &[f32],
        k: usize,
        accept: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        // Rows are zero past `width`: the query's rest adds nothing.
        let query_head = &query[..self.width];
        let norms = (
            query_head.iter().map(|x| x.abs()).sum::<f32>() * (1.0 + 1e-5),
            query_head.iter().map(|x| x * x).sum::<f32>().sqrt() * (1.0 + 1e-5),
        );
        let per_chunk = (CHUNK_BYTES / self.width.max(1)).max(1);
        let scan = |first: usize| self.first_pass(query_head, norms, k, accept, first, per_chunk);
        let chunks: Vec<Pass> = if self.rows.len() > per_chunk {
            (0..self.rows.len())
                .step_by(per_chunk)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(scan)
                .collect()
        } else {
            vec![scan(0)]
        };
        // The k-th smallest upper bound over all rows is among the chunks'
        // own k smallest.
        let mut uppers: Vec<f32> = chunks
            .iter()
            .flat_map(|c| c.uppers.iter().copied())
            .collect();
        let threshold = if uppers.len() >= k {
            *uppers
                .select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b))
                .1
        } else {
            f32::INFINITY
        };
        let survivors: Vec<(u64, &[f32])> = chunks
            .iter()
            .flat_map(|c| &c.candidates)
            .filter(|(_, lower)| *lower <= threshold)
            .filter_map(|&(slot, _)| self.rows[slot].as_ref())
            .map(|(seq, v)| (*seq, &v[..]))
            .collect();
        // Far from every cluster the window holds many rows: re-score those
        // in parallel too (each part's own k nearest, merged).
        let per_part = (CHUNK_BYTES / 4 / self.dims.max(1)).max(RESCORE_PART_MIN);
        let best = if survivors.len() > per_part {
            let parts: Vec<_> = survivors
                .par_chunks(per_part)
                .map(|part| exact::nearest(query, part.iter().copied(), k))
                .collect();
            exact::merge(parts, k)
        } else {
            exact::nearest(query, survivors.into_iter(), k)
        };
        exact::euclidean(best)
    }

    /// Scans slots `first..first + count` by their codes: the rows that may
    /// be among the k nearest (with their lower bound on the distance) and
    /// the k smallest upper bounds.
    /// `norms`: the query's L1 and L2 norms (rounded up).
    fn first_pass(
        &self,
        query: &[f32],
        (l1, l2): (f32, f32),
        k: usize,
        accept: Option<&(dyn Fn(u64) -> bool + Sync)>,
        first: usize,
        count: usize,
    ) -> Pass {
        let end = (first + count).min(self.rows.len());
        let mut uppers = BinaryHeap::with_capacity(k + 1);
        let mut candidates = Vec::new();
        for slot in first..end {
            let Some((seq, _)) = &self.rows[slot] else {
                continue;
            };
            if accept.is_some_and(|f| !f(*seq)) {
                continue;
            }
            let codes = &self.codes[slot * self.width..(slot + 1) * self.width];
            let scale = self.scales[slot];
            let d = 1.0 - scale.0 * dot_codes(query, codes);
            let e = error_bound(scale, l1, l2);
            let worst = uppers.peek().map_or(f32::INFINITY, |u: &Upper| u.0);
            if d - e <= worst || uppers.len() < k {
                candidates.push((slot, d - e));
            }
            if uppers.len() < k {
                uppers.push(Upper(d + e));
            } else if d + e < worst {
                uppers.pop();
                uppers.push(Upper(d + e));
            }
        }
        Pass {
            uppers: uppers.into_iter().map(|u| u.0).collect(),
            candidates,
        }
    }
}

struct Pass {
    /// The chunk's k smallest upper bounds on the distance.
    uppers: Vec<f32>,
    /// (slot, lower bound on its distance)
    candidates: Vec<(usize, f32)>,
}

/// Max-heap order on an upper bound.
#[derive(PartialEq)]
struct Upper(f32);
impl Eq for Upper {}
impl PartialOrd for Upper {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Upper {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One past the last non-zero element of `v`.
fn significant(v: &[f32]) -> usize {
    v.iter().rposition(|x| *x != 0.0).map_or(0, |i| i + 1)
}

/// Writes `v`'s codes (`round(x / scale)`, within [-127, 127]); returns
/// the scale and the L2 norm of `v - scale * codes`, rounded up.
fn quantise(v: &[f32], codes: &mut [i8]) -> (f32, f32) {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        codes.fill(0);
        return (0.0, 0.0);
    }
    let scale = max / 127.0;
    let mut err2 = 0.0f64;
    for (c, x) in codes.iter_mut().zip(v) {
        *c = (x / scale).round().clamp(-127.0, 127.0) as i8;
        let e = f64::from(*x) - f64::from(scale) * f64::from(*c);
        err2 += e * e;
    }
    (
        scale,
        (err2.sqrt() * (1.0 + 1e-6)) as f32 + f32::MIN_POSITIVE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unit(rng: &mut impl Rng, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
        crate::index::distance::normalised(&v).unwrap()
    }

    /// Clustered rows (tight groups, like photos of one product): many
    /// near-ties around the k-th distance, the hard case for the bound.
    fn clustered(n: usize, dims: usize, seed: u64) -> Vec<Vector> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..n / 20 + 1).map(|_| unit(&mut rng, dims)).collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let noise = unit(&mut rng, dims);
                let v: Vec<f32> = c.iter().zip(&noise).map(|(a, b)| a + 0.3 * b).collect();
                crate::index::distance::normalised(&v).unwrap().into()
            })
            .collect()
    }

    /// The vectors as rows with seqs 0, 1, ..., and a matrix holding them.
    fn numbered(vectors: Vec<Vector>) -> (FlatRows, Vec<(u64, Vector)>) {
        let rows: Vec<(u64, Vector)> = (0..).zip(vectors).collect();
        let mut flat = FlatRows::default();
        for (s, v) in &rows {
            flat.put(*s, v.clone());
        }
        (flat, rows)
    }

    fn brute(rows: &[(u64, Vector)], q: &[f32], k: usize) -> Vec<(u64, f32)> {
        exact::top_k(q, rows.iter().map(|(s, v)| (*s, &v[..])), k)
    }

    #[test]
    fn equals_the_f32_scan_bit_for_bit_across_chunks_removals_and_replacements() {
        for dims in [16, 512, 3840] {
            let n = if dims == 3840 { 1500 } else { 3000 };
            let vectors = clustered(n, dims, dims as u64);
            let mut flat = FlatRows::default();
            let mut live: Vec<(u64, Vector)> = Vec::new();
            for (i, v) in vectors.iter().enumerate() {
                flat.put(i as u64, v.clone());
                live.push((i as u64, v.clone()));
            }
            // Remove every third, replace every seventh with another row,
            // re-add some removed ones into freed slots.
            for i in (0..n).step_by(3) {
                flat.remove(i as u64);
            }
            live.retain(|(s, _)| s % 3 != 0);
            for (s, v) in live.iter_mut().filter(|(s, _)| s % 7 == 0) {
                *v = vectors[(*s as usize + 1) % n].clone();
                flat.put(*s, v.clone());
            }
            for i in (0..n).step_by(9) {
                let seq = (n + i) as u64;
                flat.put(seq, vectors[i].clone());
                live.push((seq, vectors[i].clone()));
            }
            assert_eq!(flat.len(), live.len());
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for j in 0..40 {
                // Half the queries are rows themselves (exact duplicates tie).
                let q: Vec<f32> = if j % 2 == 0 {
                    vectors[rng.random_range(0..n)].to_vec()
                } else {
                    unit(&mut rng, dims)
                };
                for k in [1, 10, 100] {
                    assert_eq!(
                        flat.top_k(&q, k, None),
                        brute(&live, &q, k),
                        "dims {dims} k {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_chunked_scan_runs_and_agrees() {
        // More code bytes than one chunk: the scan splits across threads.
        let dims = 512;
        let n = CHUNK_BYTES / dims * 2 + 100;
        let vectors = clustered(n, dims, 3);
        let (flat, rows) = numbered(vectors);
        assert!(flat.rows.len() > CHUNK_BYTES / dims, "several chunks");
        let q = rows[5].1.to_vec();
        assert_eq!(flat.top_k(&q, 10, None), brute(&rows, &q, 10));
    }

    /// Rows the second pass re-scores for `q`.
    fn survivors(flat: &FlatRows, q: &[f32], k: usize) -> usize {
        let l1 = q.iter().map(|x| x.abs()).sum();
        let pass = flat.first_pass(q, (l1, 1.0), k, None, 0, flat.rows.len());
        let mut uppers = pass.uppers.clone();
        uppers.sort_by(f32::total_cmp);
        let threshold = uppers[k - 1];
        pass.candidates.iter().filter(|c| c.1 <= threshold).count()
    }

    #[test]
    fn a_wide_window_is_re_scored_in_parallel_parts_and_agrees() {
        // A direction far from every cluster at 3840-d: many rows lie within
        // the bound of the 100th, more than one part's worth.
        let dims = 3840;
        let (flat, rows) = numbered(clustered(3000, dims, 21));
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let q = unit(&mut rng, dims);
        let per_part = (CHUNK_BYTES / 4 / dims).max(RESCORE_PART_MIN);
        let n = survivors(&flat, &q, 100);
        assert!(n > per_part, "{n} rows re-scored: one part only");
        assert_eq!(flat.top_k(&q, 100, None), brute(&rows, &q, 100));
    }

    #[test]
    fn zero_padded_rows_scan_only_their_head_and_the_width_follows_the_rows() {
        // Projected rows: 16 significant dimensions, padded to 64.
        let padded: Vec<Vector> = clustered(300, 16, 8)
            .into_iter()
            .map(|v| {
                let mut p = v.to_vec();
                p.resize(64, 0.0);
                p.into()
            })
            .collect();
        let (mut flat, mut rows) = numbered(padded);
        assert_eq!(flat.width(), 64, "full width until compacted");
        flat.compact();
        assert_eq!((flat.width(), flat.code_bytes()), (16, 300 * (16 + 8)));
        let q = rows[7].1.to_vec();
        assert_eq!(flat.top_k(&q, 10, None), brute(&rows, &q, 10));
        // One full-width row widens the codes; the answer stays exact.
        let wide: Vector = clustered(1, 64, 9).remove(0);
        flat.put(1000, wide.clone());
        rows.push((1000, wide.clone()));
        assert_eq!(flat.width(), 64);
        for q in [q.clone(), wide.to_vec()] {
            assert_eq!(flat.top_k(&q, 10, None), brute(&rows, &q, 10));
        }
        // Gone again: compacting narrows back.
        flat.remove(1000);
        rows.pop();
        flat.compact();
        assert_eq!(flat.width(), 16);
        assert_eq!(flat.top_k(&q, 10, None), brute(&rows, &q, 10));
    }

    #[test]
    fn built_at_once_it_equals_rows_put_one_by_one() {
        let padded: Vec<Vector> = clustered(300, 16, 8)
            .into_iter()
            .map(|v| {
                let mut p = v.to_vec();
                p.resize(64, 0.0);
                p.into()
            })
            .collect();
        let (mut by_put, rows) = numbered(padded);
        let full = FlatRows::of_rows(rows.clone(), false);
        assert_eq!(full.width(), by_put.width());
        by_put.compact();
        let narrow = FlatRows::of_rows(rows.clone(), true);
        assert_eq!(
            (narrow.width(), narrow.code_bytes()),
            (by_put.width(), by_put.code_bytes())
        );
        let q = rows[7].1.to_vec();
        for flat in [&full, &narrow] {
            assert_eq!(flat.top_k(&q, 10, None), brute(&rows, &q, 10));
        }
        assert!(FlatRows::of_rows(Vec::new(), true).is_empty());
    }

    #[test]
    fn the_filter_applies_before_the_top_k() {
        let vectors = clustered(400, 64, 11);
        let (flat, rows) = numbered(vectors);
        let even = |s: u64| s.is_multiple_of(2);
        let q = rows[3].1.to_vec();
        let kept: Vec<(u64, Vector)> = rows.iter().filter(|(s, _)| even(*s)).cloned().collect();
        let got = flat.top_k(&q, 10, Some(&even));
        assert_eq!(got, brute(&kept, &q, 10));
        assert!(got.iter().all(|(s, _)| s % 2 == 0));
    }

    #[test]
    fn the_first_pass_keeps_few_rows_for_the_exact_pass() {
        // What makes it pay: on clustered 512-d rows, few survive.
        let dims = 512;
        let vectors = clustered(20_000, dims, 5);
        let mut flat = FlatRows::default();
        for (i, v) in vectors.iter().enumerate() {
            flat.put(i as u64, v.clone());
        }
        let q = vectors[17].to_vec();
        let survivors = survivors(&flat, &q, 100);
        assert!(survivors >= 100);
        assert!(survivors < 2_000, "{survivors} of 20000 rows re-scored");
    }

    #[test]
    fn zero_rows_and_a_wrong_length_query_do_not_panic() {
        let mut flat = FlatRows::default();
        assert!(flat.top_k(&[1.0, 0.0], 3, None).is_empty());
        flat.put(1, vec![0.0, 0.0].into());
        flat.put(2, vec![0.6, 0.8].into());
        assert_eq!(flat.top_k(&[1.0, 0.0, 0.0], 3, None), vec![]);
        let got = flat.top_k(&[1.0, 0.0], 3, None);
        assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), vec![2, 1]);
        flat.remove(1);
        flat.remove(2);
        assert!(flat.is_empty() && flat.code_bytes() == 0);
    }
}
