//! Durable gallery storage in one redb file. The store is the source of
//! truth: the ANN index is derived from it and rebuilt from it at start.
//! Every write is one redb transaction with immediate durability, so a
//! caller that saw `Ok` can acknowledge: kill -9 after that loses nothing.

mod record;
pub mod thumbnail;

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

pub use record::ItemRecord;

const GALLERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("galleries");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Db(#[from] redb::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("gallery {0:?} does not exist")]
    NoGallery(String),
    #[error("gallery {0:?} already exists")]
    GalleryExists(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What a gallery is bound to, fixed at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GalleryMeta {
    pub model_fingerprint: String,
    pub dims: u32,
}

/// A change to one item inside a [`Store::write`] transaction.
pub enum Change<'a> {
    Put(&'a str, &'a ItemRecord),
    Delete(&'a str),
}

pub struct Store {
    db: Database,
}

fn items_table(gallery: &str) -> String {
    format!("items/{gallery}")
}

impl Store {
    /// Opens (or creates) the database file. redb repairs an unclean
    /// shutdown itself on open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(GALLERIES)?;
        txn.commit()?;
        Ok(Self { db })
    }

    pub fn galleries(&self) -> Result<Vec<(String, GalleryMeta)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(GALLERIES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, meta) = entry?;
            let meta: GalleryMeta = serde_json::from_slice(meta.value())
                .map_err(|e| StoreError::Corrupt(format!("gallery {}: {e}", name.value())))?;
            out.push((name.value().to_string(), meta));
        }
        Ok(out)
    }

    pub fn create_gallery(&self, name: &str, meta: &GalleryMeta) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(GALLERIES)?;
            if table.get(name)?.is_some() {
                return Err(StoreError::GalleryExists(name.to_string()));
            }
            let json = serde_json::to_vec(meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            table.insert(name, json.as_slice())?;
            let def = items_table(name);
            txn.open_table(TableDefinition::<&str, &[u8]>::new(&def))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a gallery and all its items; returns how many items it had.
    pub fn drop_gallery(&self, name: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let def = items_table(name);
        let count;
        {
            let mut table = txn.open_table(GALLERIES)?;
            if table.remove(name)?.is_none() {
                return Err(StoreError::NoGallery(name.to_string()));
            }
            count = txn
                .open_table(TableDefinition::<&str, &[u8]>::new(&def))?
                .len()?;
        }
        txn.delete_table(TableDefinition::<&str, &[u8]>::new(&def))?;
        thumbnail::drop_table(&txn, name)?;
        txn.commit()?;
        Ok(count)
    }

    /// Every item of a gallery, in id order.
    pub fn load_items(&self, gallery: &str) -> Result<Vec<(String, ItemRecord)>, StoreError> {
        let def = items_table(gallery);
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&def)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(StoreError::NoGallery(gallery.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(table.len()? as usize);
        for entry in table.iter()? {
            let (id, value) = entry?;
            let record = ItemRecord::decode(value.value())
                .map_err(|e| StoreError::Corrupt(format!("item {:?}: {e}", id.value())))?;
            out.push((id.value().to_string(), record));
        }
        Ok(out)
    }

    /// Applies all changes in one durable transaction. Returns, per change,
    /// whether the id existed before (replaced / removed).
    pub fn write(&self, gallery: &str, changes: &[Change<'_>]) -> Result<Vec<bool>, StoreError> {
        self.write_with(gallery, changes, &[])
    }

    /// `write`, storing `thumbs` (item id, JPEG) in the same transaction.
    pub fn write_with(
        &self,
        gallery: &str,
        changes: &[Change<'_>],
        thumbs: &[(&str, &[u8])],
    ) -> Result<Vec<bool>, StoreError> {
        let def = items_table(gallery);
        let txn = self.db.begin_write()?;
        let mut existed = Vec::with_capacity(changes.len());
        {
            if txn.open_table(GALLERIES)?.get(gallery)?.is_none() {
                return Err(StoreError::NoGallery(gallery.to_string()));
            }
            let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&def))?;
            for change in changes {
                let old = match change {
                    Change::Put(id, record) => table.insert(*id, record.encode().as_slice())?,
                    Change::Delete(id) => table.remove(*id)?,
                };
                existed.push(old.is_some());
            }
        }
        thumbnail::apply(&txn, gallery, changes, thumbs)?;
        txn.commit()?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> GalleryMeta {
        GalleryMeta {
            model_fingerprint: "abc".into(),
            dims: 2,
        }
    }

    fn rec(seq: u64) -> ItemRecord {
        ItemRecord {
            seq,
            descriptor: vec![1.0, 0.0],
            metadata: Default::default(),
        }
    }

    #[test]
    fn items_survive_reopen_and_galleries_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let store = Store::open(&path).unwrap();
            store.create_gallery("a", &meta()).unwrap();
            store.create_gallery("b", &meta()).unwrap();
            let r = rec(1);
            assert_eq!(
                store.write("a", &[Change::Put("x", &r)]).unwrap(),
                vec![false]
            );
            assert_eq!(
                store.write("a", &[Change::Put("x", &rec(2))]).unwrap(),
                vec![true]
            );
        }
        let store = Store::open(&path).unwrap();
        let a = store.load_items("a").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1.seq, 2);
        assert!(store.load_items("b").unwrap().is_empty());
        assert_eq!(store.galleries().unwrap().len(), 2);
    }

    #[test]
    fn gallery_lifecycle_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        store.create_gallery("a", &meta()).unwrap();
        assert!(matches!(
            store.create_gallery("a", &meta()),
            Err(StoreError::GalleryExists(_))
        ));
        assert!(matches!(
            store.write("nope", &[Change::Delete("x")]),
            Err(StoreError::NoGallery(_))
        ));
        store.write("a", &[Change::Put("x", &rec(1))]).unwrap();
        assert_eq!(store.drop_gallery("a").unwrap(), 1);
        assert!(matches!(
            store.load_items("a"),
            Err(StoreError::NoGallery(_))
        ));
        assert!(matches!(
            store.drop_gallery("a"),
            Err(StoreError::NoGallery(_))
        ));
    }
}
