//! Reads: items by id or page, nearest-neighbour search, statistics.

use super::{
    same_space, Entry, Gallery, GalleryError, GalleryStats, Hit, SearchParams, SpaceChanged,
};
use crate::index::read::{Accept, Nearest};

impl Gallery {
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.state.read().get(id).cloned()
    }

    /// Whether item `id` is here (without copying it out, as `get` does).
    pub fn contains(&self, id: &str) -> bool {
        self.state.read().get(id).is_some()
    }

    /// The thumbnail stored with item `id`, if any.
    pub fn thumbnail(&self, id: &str) -> Result<Option<Vec<u8>>, GalleryError> {
        Ok(self.store.thumbnail(&self.name, id)?)
    }

    /// Items in id order after `after` (exclusive), at most `limit`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> (Vec<(String, Entry)>, bool) {
        let state = self.state.read();
        let mut it = state.after(after);
        let page: Vec<_> = it
            .by_ref()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = it.next().is_some();
        (page, more)
    }

    pub fn len(&self) -> usize {
        self.state.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nearest items to the unit vector `q`, in the space `p.space`
    /// names (Err when the gallery is no longer in it), from the graph or
    /// the exact scan as [`Nearest::choose`] picks. Blocking.
    pub fn search(&self, q: &[f32], p: &SearchParams<'_>) -> Result<Vec<Hit>, SpaceChanged> {
        let state = self.state.read();
        if !same_space(state.projection(), p.space) {
            return Err(SpaceChanged);
        }
        let matches = |e: &Entry| p.filter.iter().all(|(k, v)| e.metadata.get(k) == Some(v));
        let wanted = p.k + usize::from(p.exclude.is_some());
        let accept = |seq: u64| state.by_seq(seq).is_some_and(|(_, e)| matches(e));
        // No filter: every live item, and the scan makes no call per row.
        let accept = (!p.filter.is_empty()).then_some(&accept as &Accept<'_>);
        let seq_at = |point: u64| state.seq_at(point);
        let read = Nearest::choose(&self.index, &seq_at, state.flat(), state.len(), p.exact);
        let raw = read.nearest(q, wanted, p.ef, accept);
        Ok(raw
            .into_iter()
            .filter_map(|(seq, distance)| {
                let (id, e) = state.by_seq(seq)?;
                if Some(id.as_str()) == p.exclude {
                    return None;
                }
                Some(Hit {
                    id: id.clone(),
                    seq,
                    distance,
                    metadata: e.metadata.clone(),
                })
            })
            .take(p.k)
            .collect())
    }

    pub fn default_ef(&self) -> usize {
        self.index.default_ef()
    }

    pub fn stats(&self) -> GalleryStats {
        let index = self.index.status();
        // Each lock taken alone: install holds the state lock while it
        // publishes a snapshot.
        let (count, stale_items, projection_components) = {
            let state = self.state.read();
            let components = state.projection().map_or(0, |p| p.components());
            (state.len(), state.stale(), components)
        };
        let post_generation = self.post.read().as_ref().map_or(0, |s| s.generation);
        GalleryStats {
            name: self.name.clone(),
            count,
            meta: self.meta.clone(),
            tombstones: index.points.saturating_sub(count),
            index,
            stale_items,
            post_generation,
            dba: self.post_cfg.dba,
            projection_components,
        }
    }
}
