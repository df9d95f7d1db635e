//! Adding, replacing and removing items: the store first (one durable
//! transaction per call), then the in-memory state and the index.

use crate::index::Vector;
use crate::store::{Change, ItemRecord};

use super::{validate_id, Entry, Gallery, GalleryError, NewItem};

impl Gallery {
    /// Adds or replaces items durably (one transaction); returns, per item,
    /// whether it replaced an existing one. Blocking: call off the executor.
    pub fn upsert(&self, items: Vec<NewItem>) -> Result<Vec<bool>, GalleryError> {
        self.upsert_with(items, &[])
    }

    /// `upsert`, storing thumbnails (item id, JPEG) in the same transaction.
    pub fn upsert_with(
        &self,
        items: Vec<NewItem>,
        thumbs: &[(&str, &[u8])],
    ) -> Result<Vec<bool>, GalleryError> {
        for it in &items {
            validate_id(&it.id)?;
            if it.vector.len() != self.dims() {
                return Err(GalleryError::Dims {
                    gallery: self.name.clone(),
                    got: it.vector.len(),
                    want: self.dims(),
                });
            }
        }
        let w = self.writing();
        let (first_seq, space) = {
            let state = self.state.read();
            (state.next_seq(), state.projection().cloned())
        };
        // In the index's space (the writer lock keeps it from changing).
        let indexed: Vec<Vector> = items
            .iter()
            .map(|it| match &space {
                Some(p) => p.apply(&it.vector).map(Vector::from),
                None => Ok(it.vector.clone().into()),
            })
            .collect::<Result<_, _>>()?;
        let changes: Vec<Change> = items
            .into_iter()
            .zip(first_seq..)
            .map(|(it, seq)| Change::Put {
                id: it.id,
                record: ItemRecord {
                    seq,
                    descriptor: it.vector,
                    metadata: it.metadata,
                },
            })
            .collect();
        let replaced = self.store.write_with(&self.name, &changes, thumbs)?;

        let mut state = self.state.write();
        let first_point = state.reserve_points(changes.len());
        let mut new_points = Vec::with_capacity(changes.len());
        for ((change, point), indexed) in changes.into_iter().zip(first_point..).zip(indexed) {
            // Every change here is a put.
            let Change::Put { id, record } = change else {
                continue;
            };
            let entry = Entry {
                seq: record.seq,
                metadata: record.metadata,
                vector: record.descriptor.into(),
                indexed: indexed.clone(),
                point,
            };
            state.insert(id, entry);
            new_points.push((point, indexed));
        }
        self.index.insert_many(&new_points);
        drop(state);
        self.request_refresh();
        self.maintain_index(&w);
        Ok(replaced)
    }

    /// Removes items durably; returns the ids that were not there.
    pub fn remove(&self, ids: &[String]) -> Result<Vec<String>, GalleryError> {
        let w = self.writing();
        let changes: Vec<Change> = ids
            .iter()
            .map(|id| Change::Delete { id: id.clone() })
            .collect();
        let existed = self.store.write(&self.name, &changes)?;
        let mut state = self.state.write();
        let mut missing = Vec::new();
        for (id, was) in ids.iter().zip(existed) {
            if !was {
                missing.push(id.clone());
            } else {
                state.remove(id);
            }
        }
        drop(state);
        if missing.len() < ids.len() {
            self.request_refresh();
        }
        self.maintain_index(&w);
        Ok(missing)
    }
}
