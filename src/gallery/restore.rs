//! Opening a gallery: its items from the store, with the derived state
//! saved at the last shutdown where it matches them (`persist`).

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::persist::Saved;
use super::post::PostConfig;
use super::state::State;
use super::{maintenance, Entry, Gallery, GalleryError};
use crate::index::{AnnIndex, HnswParams, Vector};
use crate::store::{GalleryMeta, Store, StoreError};

impl Gallery {
    /// Loads the gallery's items from the store. `saved`, the state saved
    /// at the last shutdown, is used where it matches the store; the
    /// caller refreshes what it does not cover and starts the worker.
    pub(super) fn open(
        name: String,
        meta: GalleryMeta,
        store: Arc<Store>,
        params: HnswParams,
        post_cfg: PostConfig,
        saved: Option<Saved>,
    ) -> Result<Self, GalleryError> {
        let records = store.load_items(&name)?;
        let next_seq = store.next_seq(&name)?;
        let mut entries = Vec::with_capacity(records.len());
        for (id, rec) in records {
            if rec.descriptor.len() != meta.dims as usize {
                return Err(StoreError::Corrupt(format!(
                    "item {id:?} of {name:?} has {} dims",
                    rec.descriptor.len()
                ))
                .into());
            }
            let vector: Vector = rec.descriptor.into();
            let e = Entry {
                seq: rec.seq,
                metadata: rec.metadata,
                indexed: vector.clone(),
                vector,
                point: 0,
            };
            entries.push((id, e));
        }
        let mut state = State::loaded(entries, next_seq);
        let saved = saved.filter(|s| {
            let ok = state.matches(&s.snapshot);
            if !ok {
                tracing::warn!(gallery = %name, "saved state does not match the store; recomputing");
            }
            ok
        });
        let (snapshot, graph) = match saved {
            Some(s) => {
                // Live rows take back their point and indexed vector.
                state.restore_points(&s.snapshot, &s.points, s.next_point);
                (Some(Arc::new(s.snapshot)), s.graph)
            }
            None => (None, None),
        };
        // Everything else is new to the index.
        let unindexed = state.point_the_rest()?;
        state.set_unrefreshed(snapshot.as_deref());
        // Without a saved graph, the first refresh (over the DBA vectors)
        // or `maintain_index` builds one, only past the exact limit.
        let index = Arc::new(match graph {
            Some((g, calibration)) => AnnIndex::with_graph(params, g, calibration),
            None => AnnIndex::empty(params),
        });
        index.insert_many(&unindexed);
        Ok(Self {
            name,
            meta,
            store,
            state: RwLock::new(state),
            index,
            writer: Mutex::new(()),
            post_cfg,
            post: RwLock::new(snapshot),
            refreshing: Mutex::new(()),
            worker: maintenance::Worker::default(),
        })
    }
}
