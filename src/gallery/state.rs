//! The live items of one gallery: the id -> entry map and the two maps
//! derived from it (seq -> id, index point -> seq), and the space (the
//! fitted projection, or none) every indexed vector is in. Fields are
//! private: opening (`restore_points`, `point_the_rest`), writes
//! (`insert`, `remove`) and refreshes (`repoint`, `publish`) are the only
//! ways to change them, so the maps and the space always agree.
//!
//! The indexed vectors are also kept in `flat`, the exact scan's
//! contiguous int8 matrix: built once when a gallery opens
//! (`point_the_rest`), then updated by `insert`, `remove` and `repoint`.
//!
//! It also counts the changes applied (`writes`) and remembers how many
//! of them the published post-processing snapshot covers (`covered`): the
//! difference is what GalleryStats reports as stale.

use std::collections::{btree_map, BTreeMap, HashMap};
use std::sync::Arc;

use super::post::Snapshot;
use super::projection::{pad, Projection};
use super::Entry;
use crate::index::flat::FlatRows;
use crate::index::Vector;
use crate::rerank::RerankError;

/// The point of an item that has none yet (only while opening).
const NO_POINT: u64 = u64::MAX;

#[derive(Default)]
pub(super) struct State {
    items: BTreeMap<String, Entry>,
    by_seq: HashMap<u64, String>,
    /// Live index point -> item seq.
    by_point: HashMap<u64, u64>,
    /// Every live item's indexed vector, by seq, for the exact scan.
    flat: FlatRows,
    /// The next item seq to issue; loaded from the store, which keeps it
    /// durably (a removed item's seq is never issued again).
    next_seq: u64,
    /// The first point id never issued. Saved at shutdown with the graph
    /// (`persist`), whose dead points may lie above every live one.
    next_point: u64,
    /// The projection every `indexed` vector is in (None: raw space);
    /// switched together with the vectors, under this lock (`publish`).
    projection: Option<Arc<Projection>>,
    /// Items inserted, replaced or removed since open (plus, at open, the
    /// differences between the store and the restored snapshot).
    writes: u64,
    /// `writes` as it was when the published snapshot was taken.
    covered: u64,
}

impl State {
    /// The stored items, none of them indexed yet; `next_seq` is the
    /// store's durable counter.
    pub fn loaded(items: impl IntoIterator<Item = (String, Entry)>, next_seq: u64) -> Self {
        let mut state = State {
            next_seq,
            ..State::default()
        };
        for (id, mut e) in items {
            e.point = NO_POINT;
            state.next_seq = state.next_seq.max(e.seq + 1);
            state.by_seq.insert(e.seq, id.clone());
            state.items.insert(id, e);
        }
        state
    }

    /// Whether a saved snapshot belongs to this gallery's store: every row
    /// whose item is still live holds that item's descriptor bit for bit (a
    /// gallery dropped and re-created under the same name reuses seqs).
    pub fn matches(&self, snap: &Snapshot) -> bool {
        let mut live = 0;
        for (row, seq) in snap.seqs.iter().enumerate() {
            let Some((_, e)) = self.by_seq(*seq) else {
                continue;
            };
            if snap.raw.row(row).as_slice() != Some(&e.vector[..]) {
                return false;
            }
            live += 1;
        }
        live > 0 || snap.is_empty()
    }

    /// Gives the live rows of a restored snapshot back their saved index
    /// `points` and indexed vectors (DBA or projected), and the state
    /// the snapshot's space (its projection); `next_point` is the saved
    /// counter.
    pub fn restore_points(&mut self, snap: &Snapshot, points: &[u64], next_point: u64) {
        let dims = snap.raw.ncols();
        self.projection = snap.projection.clone();
        let above_live = points
            .iter()
            .filter(|&&p| p != NO_POINT)
            .max()
            .map_or(0, |m| m + 1);
        self.next_point = next_point.max(above_live);
        for (row, (&seq, &point)) in snap.seqs.iter().zip(points).enumerate() {
            let Some(id) = self.by_seq.get(&seq) else {
                continue;
            };
            if let (Some(e), true) = (self.items.get_mut(id), point != NO_POINT) {
                e.point = point;
                if let Some(ix) = snap.indexed() {
                    e.indexed = pad(ix.row(row).iter().copied(), dims).into();
                }
                self.by_point.insert(point, seq);
            }
        }
    }

    /// Gives every item without a point a fresh one, in the state's
    /// space (projected when a restored snapshot brought a projection);
    /// returns them, for the index. The last step of opening: the scan's
    /// matrix is then built, each row encoded once, as wide as that space
    /// needs.
    pub fn point_the_rest(&mut self) -> Result<Vec<(u64, Vector)>, RerankError> {
        let mut fresh = Vec::new();
        for e in self.items.values_mut().filter(|e| e.point == NO_POINT) {
            if let Some(p) = &self.projection {
                e.indexed = p.apply(&e.vector)?.into();
            }
            e.point = self.next_point;
            self.next_point += 1;
            self.by_point.insert(e.point, e.seq);
            fresh.push((e.point, e.indexed.clone()));
        }
        let rows = self.items.values().map(|e| (e.seq, e.indexed.clone()));
        self.flat = FlatRows::of_rows(rows.collect(), self.projection.is_some());
        Ok(fresh)
    }

    /// Counts as unrefreshed what `snapshot` (restored at open, or none)
    /// does not cover: live items it lacks and rows whose item left.
    pub fn set_unrefreshed(&mut self, snapshot: Option<&Snapshot>) {
        let in_snapshot = snapshot.map_or(0, |s| {
            s.seqs
                .iter()
                .filter(|q| self.by_seq.contains_key(q))
                .count()
        });
        let gone = snapshot.map_or(0, |s| s.len() - in_snapshot);
        self.writes = (self.items.len() - in_snapshot + gone) as u64;
        self.covered = 0;
    }

    /// Changes applied so far; a refresh that read the items at `writes()`
    /// covers them once published (`publish`).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    fn covered_up_to(&mut self, writes: u64) {
        self.covered = self.covered.max(writes);
    }

    /// Changes the published snapshot does not reflect yet.
    pub fn stale(&self) -> u64 {
        self.writes - self.covered
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn next_point(&self) -> u64 {
        self.next_point
    }

    /// Reserves `n` fresh point ids; returns the first.
    pub fn reserve_points(&mut self, n: usize) -> u64 {
        let first = self.next_point;
        self.next_point += n as u64;
        first
    }

    /// Adds or replaces item `id` (whose point was reserved); returns the
    /// entry it replaced.
    pub fn insert(&mut self, id: String, e: Entry) -> Option<Entry> {
        self.writes += 1;
        self.next_seq = self.next_seq.max(e.seq + 1);
        let old = self.items.remove(&id);
        if let Some(old) = &old {
            self.by_seq.remove(&old.seq);
            self.by_point.remove(&old.point);
            self.flat.remove(old.seq);
        }
        self.by_seq.insert(e.seq, id.clone());
        self.flat.put(e.seq, e.indexed.clone());
        self.by_point.insert(e.point, e.seq);
        self.items.insert(id, e);
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let old = self.items.remove(id)?;
        self.writes += 1;
        self.by_seq.remove(&old.seq);
        self.by_point.remove(&old.point);
        self.flat.remove(old.seq);
        Some(old)
    }

    /// Gives `seq`'s item (if still live) the indexed vector `v` under
    /// the reserved `point`.
    pub fn repoint(&mut self, seq: u64, point: u64, v: Vector) {
        let Some(id) = self.by_seq.get(&seq) else {
            return;
        };
        if let Some(e) = self.items.get_mut(id) {
            self.by_point.remove(&e.point);
            e.point = point;
            self.flat.put(seq, v.clone());
            e.indexed = v;
            self.by_point.insert(point, seq);
        }
    }

    /// The projection every indexed vector is in (None: raw space).
    pub fn projection(&self) -> Option<&Arc<Projection>> {
        self.projection.as_ref()
    }

    /// Switches to a refresh's space and marks its writes covered. Call
    /// under the same write lock as the `repoint`s that moved every
    /// vector into `projection`'s space (none when the space is
    /// unchanged), so that searches never see vectors of two spaces.
    pub fn publish(&mut self, projection: Option<Arc<Projection>>, writes_at: u64) {
        self.projection = projection;
        self.covered_up_to(writes_at);
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.items.get(id)
    }

    pub fn by_seq(&self, seq: u64) -> Option<(&String, &Entry)> {
        let id = self.by_seq.get(&seq)?;
        Some((id, self.items.get(id)?))
    }

    /// The item seq living at index point `point`.
    pub fn seq_at(&self, point: u64) -> Option<u64> {
        self.by_point.get(&point).copied()
    }

    /// Items in id order after `after` (exclusive).
    pub fn after(&self, after: Option<&str>) -> btree_map::Range<'_, String, Entry> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.items.range::<str, _>((start, Bound::Unbounded))
    }

    /// Entries in id order.
    pub fn entries(&self) -> btree_map::Values<'_, String, Entry> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The exact scan over the indexed vectors.
    pub fn flat(&self) -> &FlatRows {
        &self.flat
    }

    /// After the indexed vectors moved to another space: the scan's codes
    /// cover only what the new rows need (a projection's components).
    pub fn compact_scan(&mut self) {
        self.flat.compact();
    }

    /// Live (point, indexed vector) pairs: what a graph build takes;
    /// `new` (seq -> point, vector) stands in for the items it names.
    pub fn live_points(&self, new: &HashMap<u64, (u64, Vector)>) -> Vec<(u64, Vector)> {
        self.items
            .values()
            .map(|e| match new.get(&e.seq) {
                Some((point, v)) => (*point, v.clone()),
                None => (e.point, e.indexed.clone()),
            })
            .collect()
    }

    /// The point of each seq (NO_POINT for one no longer live), to save.
    pub fn points_of(&self, seqs: &[u64]) -> Vec<u64> {
        seqs.iter()
            .map(|&seq| self.by_seq(seq).map_or(NO_POINT, |(_, e)| e.point))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, point: u64) -> Entry {
        let v: Vector = vec![1.0, 0.0].into();
        Entry {
            seq,
            metadata: Default::default(),
            vector: v.clone(),
            indexed: v,
            point,
        }
    }

    /// The item living at index point `point`.
    fn at_point(s: &State, point: u64) -> Option<&Entry> {
        s.by_seq(s.seq_at(point)?).map(|(_, e)| e)
    }

    #[test]
    fn the_three_maps_agree_after_insert_replace_repoint_and_remove() {
        let mut s = State::loaded([("a".to_string(), entry(4, 0))], 2);
        assert_eq!(s.next_seq(), 5, "above every stored seq");
        assert_eq!(s.point_the_rest().unwrap().len(), 1);
        assert_eq!(at_point(&s, 0).map(|e| e.seq), Some(4));
        s.set_unrefreshed(None);
        assert_eq!(s.stale(), 1);
        s.covered_up_to(s.writes());
        assert_eq!(s.stale(), 0);

        let p = s.reserve_points(1);
        let old = s.insert("a".into(), entry(5, p)).unwrap();
        assert_eq!((old.seq, old.point), (4, 0));
        assert!(s.by_seq(4).is_none() && s.seq_at(0).is_none());
        assert_eq!(s.by_seq(5).map(|(id, _)| id.as_str()), Some("a"));
        assert_eq!(s.seq_at(p), Some(5));

        let q = s.reserve_points(1);
        s.repoint(5, q, vec![0.0, 1.0].into());
        assert!(s.seq_at(p).is_none());
        assert_eq!(at_point(&s, q).map(|e| e.indexed[1]), Some(1.0));
        let scan = s.flat().top_k(&[0.0, 1.0], 2, None);
        assert_eq!(scan, vec![(5, 0.0)], "the scan sees the repointed vector");
        s.repoint(99, 77, vec![0.0, 1.0].into());
        assert!(s.seq_at(77).is_none(), "a seq no longer live is skipped");

        assert!(s.remove("a").is_some());
        assert!(s.remove("a").is_none());
        assert!(s.by_seq(5).is_none() && s.seq_at(q).is_none());
        assert!(s.flat().is_empty());
        assert_eq!((s.len(), s.stale()), (0, 2), "a replace and a remove");
        assert_eq!(s.next_seq(), 6, "a removed item's seq is not reissued");
    }
}
