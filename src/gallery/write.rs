//! Adding, replacing and removing items: the store first (one durable
//! transaction per call), then the in-memory state and the index. A
//! cluster replica applies its stream through the same path (`apply`).

use crate::index::Vector;
use crate::store::{Change, ItemRecord, Position};

use super::{validate_id, Entry, Gallery, GalleryError, NewItem, Writing};

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
            self.check_item(&it.id, &it.vector)?;
        }
        let w = self.writing();
        let first_seq = self.state.read().next_seq();
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
        self.commit(&w, changes, thumbs, None)
    }

    /// Removes items durably; returns the ids that were not there.
    pub fn remove(&self, ids: &[String]) -> Result<Vec<String>, GalleryError> {
        let w = self.writing();
        let changes: Vec<Change> = ids
            .iter()
            .map(|id| Change::Delete { id: id.clone() })
            .collect();
        let existed = self.commit(&w, changes, &[], None)?;
        Ok(ids
            .iter()
            .zip(existed)
            .filter(|(_, was)| !was)
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// A cluster replica's write: a run of its stream's changes, in stream
    /// order (puts carry their stream sequence as seq, and unit
    /// descriptors), with the position they bring the gallery to, in one
    /// transaction. Returns, per change, whether its id existed before.
    pub fn apply(
        &self,
        changes: Vec<Change>,
        thumbs: &[(&str, &[u8])],
        position: Position,
    ) -> Result<Vec<bool>, GalleryError> {
        for c in &changes {
            self.check_change(c)?;
        }
        let w = self.writing();
        self.commit(&w, changes, thumbs, Some(position))
    }

    /// Where this replica's copy stands in its stream (None: not a
    /// replicated gallery).
    pub fn position(&self) -> Result<Option<Position>, GalleryError> {
        Ok(self.store.position(&self.name)?)
    }

    /// Records that the stream held nothing after `p.applied` at `p.at_ms`
    /// (see [`Position::at_ms`]); false when the stored position moved on.
    pub fn confirm_position(&self, p: &Position) -> Result<bool, GalleryError> {
        Ok(self.store.confirm_position(&self.name, p)?)
    }

    /// Whether this gallery can take `change` (its id, its dims).
    pub fn check_change(&self, change: &Change) -> Result<(), GalleryError> {
        match change {
            Change::Put { id, record } => self.check_item(id, &record.descriptor),
            Change::Delete { id } => validate_id(id),
        }
    }

    fn check_item(&self, id: &str, vector: &[f32]) -> Result<(), GalleryError> {
        validate_id(id)?;
        if vector.len() != self.dims() {
            return Err(GalleryError::Dims {
                gallery: self.name.clone(),
                got: vector.len(),
                want: self.dims(),
            });
        }
        Ok(())
    }

    /// Stores `changes` in one transaction, then applies them in order to
    /// the state and the index. Returns, per change, whether its id
    /// existed before.
    fn commit(
        &self,
        w: &Writing<'_>,
        changes: Vec<Change>,
        thumbs: &[(&str, &[u8])],
        position: Option<Position>,
    ) -> Result<Vec<bool>, GalleryError> {
        let space = self.state.read().projection().cloned();
        // In the index's space (the writer lock keeps it from changing).
        let indexed: Vec<Option<Vector>> = changes
            .iter()
            .map(|c| match (c, &space) {
                (Change::Put { record, .. }, Some(p)) => {
                    p.apply(&record.descriptor).map(|v| Some(Vector::from(v)))
                }
                (Change::Put { record, .. }, None) => Ok(Some(record.descriptor.clone().into())),
                (Change::Delete { .. }, _) => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        let existed = self
            .store
            .write_at(&self.name, &changes, thumbs, position)?;

        let mut state = self.state.write();
        let puts = indexed.iter().flatten().count();
        let mut points = state.reserve_points(puts)..;
        let mut new_points = Vec::with_capacity(puts);
        let mut changed = false;
        for ((change, indexed), was) in changes.into_iter().zip(indexed).zip(&existed) {
            match (change, indexed) {
                (Change::Put { id, record }, Some(indexed)) => {
                    let point = points.next().unwrap_or_default();
                    let entry = Entry {
                        seq: record.seq,
                        metadata: record.metadata,
                        vector: record.descriptor.into(),
                        indexed: indexed.clone(),
                        point,
                    };
                    state.insert(id, entry);
                    new_points.push((point, indexed));
                    changed = true;
                }
                (Change::Delete { id }, _) if *was => {
                    state.remove(&id);
                    changed = true;
                }
                _ => {}
            }
        }
        self.index.insert_many(&new_points);
        drop(state);
        if changed {
            self.request_refresh();
        }
        self.maintain_index(w);
        Ok(existed)
    }
}
