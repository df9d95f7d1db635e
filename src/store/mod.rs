//! Durable gallery storage in one redb file. The store is the source of
//! truth: the ANN index and the post-processing state are derived from it
//! (saved at shutdown as a cache, `gallery::persist`, and recomputed from
//! the store where that cache is missing or does not match). Every write
//! is one redb transaction with immediate durability, so a caller that saw
//! `Ok` can acknowledge: kill -9 after that loses nothing.
//!
//! Each gallery has a durable item sequence (`sequences`): the next seq
//! to issue, advanced in the transaction that stores the item, so a seq
//! is never issued twice, even after its item is removed and the server
//! restarts. Stores written before that table existed get it on open.
//!
//! A failed write to the file (a full disk) latches redb: every later
//! operation fails with `PreviousIo` until the database is reopened. The
//! store reopens it after such a failure (redb recovers the last commit),
//! so writes succeed again once space returns, without a restart.

mod record;
pub mod thumbnail;

use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

pub use record::ItemRecord;

const GALLERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("galleries");
/// Gallery -> the next item seq to issue.
const SEQUENCES: TableDefinition<&str, u64> = TableDefinition::new("sequences");
/// Gallery -> its replication position (JSON [`Position`]); only for
/// galleries a cluster replica applies from a stream.
const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("replication");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Db(redb::Error),
    #[error("the disk holding the store is full ({0}); free space and retry: nothing acknowledged was lost")]
    DiskFull(String),
    #[error("the store file was written by an older storage format (redb file format {0}, this build reads 3): open it with the lookalike release that wrote it and export, or start from an empty data folder")]
    OldFormat(u8),
    #[error("the store is unavailable after an I/O error and could not be reopened: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("gallery {0:?} does not exist")]
    NoGallery(String),
    #[error("gallery {0:?} already exists")]
    GalleryExists(String),
    #[error("gallery {0:?} was dropped and created again while a write of its old incarnation was applied; nothing was written")]
    OtherIncarnation(String),
    #[error("stream message {seq} of gallery {gallery:?} was already applied (up to {applied}): a bug, nothing was written")]
    Replayed {
        gallery: String,
        seq: u64,
        applied: u64,
    },
    #[error("item seq {seq} of gallery {gallery:?} was already issued (the next is {next}): a bug, nothing was written")]
    SeqReused {
        gallery: String,
        seq: u64,
        next: u64,
    },
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull(io.to_string()),
            redb::Error::UpgradeRequired(v) => StoreError::OldFormat(v),
            e => StoreError::Db(e),
        }
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl StoreError {
    /// The file failed under redb: it must be reopened before the next use.
    fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull(_) | StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull(_))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
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

/// How far a replicated gallery has applied its stream, written in the
/// same transaction as the changes it covers: a restart resumes after
/// `applied`, and nothing is applied twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The gallery's incarnation in the cluster (the revision of its
    /// definition): one dropped and created again under the same name is
    /// another gallery with another stream.
    pub incarnation: u64,
    /// The last stream sequence applied (0: none).
    pub applied: u64,
    /// The latest moment, ms since the epoch, the stream was known to hold
    /// nothing after `applied` (0: never): that message's timestamp, or
    /// later when this replica saw itself caught up. A tombstone it missed
    /// was published after this moment, so it still lives for a TTL from it.
    pub at_ms: u64,
}

/// A change to one item inside a [`Store::write`] transaction. Owned, so
/// that it can outlive the call (a write log can carry it).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put { id: String, record: ItemRecord },
    Delete { id: String },
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Change::Put { id, .. } | Change::Delete { id } => id,
        }
    }
}

pub struct Store {
    path: PathBuf,
    /// None after a failed reopen; the next operation tries again.
    db: RwLock<Option<Database>>,
}

/// Opens with redb's integrity check: every page's checksum verified, so
/// a file damaged outside redb is refused (`Corrupted`) instead of read
/// (a plain open trusts the pages, and may serve wrong values or panic).
/// It reads the whole file, as loading the galleries does anyway.
fn open_checked(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder()
        .set_check_integrity_on_open(true)
        .create(path)
}

fn items_table(gallery: &str) -> String {
    format!("items/{gallery}")
}

/// Gives every gallery without a durable sequence one (stores written
/// before the `sequences` table existed): above its highest stored seq,
/// which is what those versions issued next.
fn add_sequences(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut seqs = txn.open_table(SEQUENCES)?;
    let names: Vec<String> = txn
        .open_table(GALLERIES)?
        .iter()?
        .map(|e| e.map(|(name, _)| name.value().to_string()))
        .collect::<Result<_, _>>()?;
    for name in names {
        if seqs.get(name.as_str())?.is_some() {
            continue;
        }
        let def = items_table(&name);
        let items = txn.open_table(TableDefinition::<&str, &[u8]>::new(&def))?;
        let mut next = 0u64;
        for entry in items.iter()? {
            let (id, value) = entry?;
            let record = ItemRecord::decode(value.value())
                .map_err(|e| StoreError::Corrupt(format!("item {:?}: {e}", id.value())))?;
            next = next.max(record.seq + 1);
        }
        seqs.insert(name.as_str(), next)?;
        tracing::info!(gallery = %name, next, "durable item sequence added to the store");
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the database file. redb repairs an unclean
    /// shutdown itself on open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // redb takes an empty file for a new database: an empty store file
        // that exists was truncated, and starting empty would hide it.
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Corrupt(format!(
                "{} is empty (0 bytes): the file was truncated; restore it from a backup, or delete it to start with no galleries",
                path.display()
            )));
        }
        let db = open_checked(path)?;
        let txn = db.begin_write()?;
        txn.open_table(GALLERIES)?;
        add_sequences(&txn)?;
        txn.commit()?;
        Ok(Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
        })
    }

    /// Runs `f` on the database; after an I/O failure, reopens it for the
    /// next caller (the failed call still reports its error).
    fn with<T>(&self, f: impl Fn(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.db.read().is_none() {
            self.reopen();
        }
        let r = match self.db.read().as_ref() {
            Some(db) => f(db),
            None => {
                return Err(StoreError::Unavailable(
                    "reopening failed; see the server log".into(),
                ))
            }
        };
        if matches!(&r, Err(e) if e.needs_reopen()) {
            self.reopen();
        }
        r
    }

    fn reopen(&self) {
        let mut db = self.db.write();
        // Close first: redb holds a lock on the file while open.
        *db = None;
        match open_checked(&self.path) {
            Ok(d) => *db = Some(d),
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "reopening the store")
            }
        }
    }

    pub fn galleries(&self) -> Result<Vec<(String, GalleryMeta)>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(GALLERIES)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (name, meta) = entry?;
                let meta: GalleryMeta = serde_json::from_slice(meta.value())
                    .map_err(|e| StoreError::Corrupt(format!("gallery {}: {e}", name.value())))?;
                out.push((name.value().to_string(), meta));
            }
            Ok(out)
        })
    }

    pub fn create_gallery(&self, name: &str, meta: &GalleryMeta) -> Result<(), StoreError> {
        self.create_gallery_at(name, meta, None)
    }

    /// `create_gallery`, for a replica: with its replication position.
    pub fn create_gallery_at(
        &self,
        name: &str,
        meta: &GalleryMeta,
        position: Option<Position>,
    ) -> Result<(), StoreError> {
        self.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(GALLERIES)?;
                if table.get(name)?.is_some() {
                    return Err(StoreError::GalleryExists(name.to_string()));
                }
                let json =
                    serde_json::to_vec(meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                table.insert(name, json.as_slice())?;
                txn.open_table(SEQUENCES)?.insert(name, 0u64)?;
                if let Some(p) = &position {
                    txn.open_table(POSITIONS)?
                        .insert(name, encode_position(p).as_slice())?;
                }
                let def = items_table(name);
                txn.open_table(TableDefinition::<&str, &[u8]>::new(&def))?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Removes a gallery and all its items; returns how many items it had.
    pub fn drop_gallery(&self, name: &str) -> Result<u64, StoreError> {
        self.with(|db| {
            let txn = db.begin_write()?;
            let def = items_table(name);
            let count;
            {
                let mut table = txn.open_table(GALLERIES)?;
                if table.remove(name)?.is_none() {
                    return Err(StoreError::NoGallery(name.to_string()));
                }
                txn.open_table(SEQUENCES)?.remove(name)?;
                txn.open_table(POSITIONS)?.remove(name)?;
                count = txn
                    .open_table(TableDefinition::<&str, &[u8]>::new(&def))?
                    .len()?;
            }
            txn.delete_table(TableDefinition::<&str, &[u8]>::new(&def))?;
            thumbnail::drop_table(&txn, name)?;
            txn.commit()?;
            Ok(count)
        })
    }

    /// Every item of a gallery, in id order.
    pub fn load_items(&self, gallery: &str) -> Result<Vec<(String, ItemRecord)>, StoreError> {
        self.with(|db| {
            let def = items_table(gallery);
            let txn = db.begin_read()?;
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
        })
    }

    /// The next item seq gallery `gallery` issues (none was issued at or
    /// above it, removed items included).
    pub fn next_seq(&self, gallery: &str) -> Result<u64, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let seq = txn.open_table(SEQUENCES)?.get(gallery)?.map(|v| v.value());
            seq.ok_or_else(|| StoreError::NoGallery(gallery.to_string()))
        })
    }

    /// Where a replicated gallery stands in its stream (None: not a
    /// replica's, or the gallery does not exist).
    pub fn position(&self, gallery: &str) -> Result<Option<Position>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(POSITIONS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            stored_position(&table, gallery)
        })
    }

    /// Moves the position's `at_ms` forward to `p.at_ms` when the stored
    /// position is `p`'s incarnation at `p.applied` (a replica that saw
    /// itself caught up); returns whether it did. Nothing else changes.
    pub fn confirm_position(&self, gallery: &str, p: &Position) -> Result<bool, StoreError> {
        self.with(|db| {
            let txn = db.begin_write()?;
            let moved = {
                let mut positions = txn.open_table(POSITIONS)?;
                let before = stored_position(&positions, gallery)?;
                let moved = before.is_some_and(|b| {
                    b.incarnation == p.incarnation && b.applied == p.applied && b.at_ms < p.at_ms
                });
                if moved {
                    positions.insert(gallery, encode_position(p).as_slice())?;
                }
                moved
            };
            txn.commit()?;
            Ok(moved)
        })
    }

    /// Applies all changes in one durable transaction. Returns, per change,
    /// whether the id existed before (replaced / removed).
    pub fn write(&self, gallery: &str, changes: &[Change]) -> Result<Vec<bool>, StoreError> {
        self.write_with(gallery, changes, &[])
    }

    /// `write`, storing `thumbs` (item id, JPEG) in the same transaction.
    /// The gallery's sequence moves past every seq put, in that same
    /// transaction; a seq below it is refused (`SeqReused`).
    pub fn write_with(
        &self,
        gallery: &str,
        changes: &[Change],
        thumbs: &[(&str, &[u8])],
    ) -> Result<Vec<bool>, StoreError> {
        self.write_at(gallery, changes, thumbs, None)
    }

    /// `write_with`, for a replica: records `position` in the same
    /// transaction, and refuses one at or below the position stored
    /// (`Replayed`), so a stream message is never applied twice.
    pub fn write_at(
        &self,
        gallery: &str,
        changes: &[Change],
        thumbs: &[(&str, &[u8])],
        position: Option<Position>,
    ) -> Result<Vec<bool>, StoreError> {
        self.with(|db| {
            let def = items_table(gallery);
            let txn = db.begin_write()?;
            let mut existed = Vec::with_capacity(changes.len());
            {
                if txn.open_table(GALLERIES)?.get(gallery)?.is_none() {
                    return Err(StoreError::NoGallery(gallery.to_string()));
                }
                let mut seqs = txn.open_table(SEQUENCES)?;
                let stored = seqs.get(gallery)?.map(|v| v.value());
                let mut next = stored.ok_or_else(|| {
                    StoreError::Corrupt(format!("gallery {gallery:?} has no item sequence"))
                })?;
                let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&def))?;
                for change in changes {
                    let old = match change {
                        Change::Put { id, record } => {
                            if record.seq < next {
                                return Err(StoreError::SeqReused {
                                    gallery: gallery.to_string(),
                                    seq: record.seq,
                                    next,
                                });
                            }
                            next = record.seq + 1;
                            table.insert(id.as_str(), record.encode().as_slice())?
                        }
                        Change::Delete { id } => table.remove(id.as_str())?,
                    };
                    existed.push(old.is_some());
                }
                if Some(next) != stored {
                    seqs.insert(gallery, next)?;
                }
                if let Some(p) = &position {
                    let mut positions = txn.open_table(POSITIONS)?;
                    let before = stored_position(&positions, gallery)?;
                    // A write of a dropped incarnation never lands in the
                    // gallery created again under its name.
                    match before {
                        Some(b) if b.incarnation != p.incarnation => {
                            return Err(StoreError::OtherIncarnation(gallery.to_string()))
                        }
                        None => return Err(StoreError::OtherIncarnation(gallery.to_string())),
                        Some(b) if b.applied >= p.applied => {
                            return Err(StoreError::Replayed {
                                gallery: gallery.to_string(),
                                seq: p.applied,
                                applied: b.applied,
                            })
                        }
                        Some(_) => {}
                    }
                    positions.insert(gallery, encode_position(p).as_slice())?;
                }
            }
            thumbnail::apply(&txn, gallery, changes, thumbs)?;
            txn.commit()?;
            Ok(existed)
        })
    }
}

fn stored_position(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    gallery: &str,
) -> Result<Option<Position>, StoreError> {
    match table.get(gallery)? {
        Some(v) => decode_position(v.value()).map(Some),
        None => Ok(None),
    }
}

fn encode_position(p: &Position) -> Vec<u8> {
    // A struct of three integers always serialises.
    serde_json::to_vec(p).unwrap_or_default()
}

fn decode_position(bytes: &[u8]) -> Result<Position, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("replication position: {e}")))
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

    fn put(id: &str, seq: u64) -> Change {
        Change::Put {
            id: id.into(),
            record: rec(seq),
        }
    }

    fn delete(id: &str) -> Change {
        Change::Delete { id: id.into() }
    }

    #[test]
    fn the_sequence_is_durable_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let store = Store::open(&path).unwrap();
            store.create_gallery("a", &meta()).unwrap();
            assert_eq!(store.next_seq("a").unwrap(), 0);
            store.write("a", &[put("x", 0), put("y", 1)]).unwrap();
            // The newest item removed: its seq stays issued.
            store.write("a", &[delete("y")]).unwrap();
            assert!(matches!(
                store.write("a", &[put("z", 1)]),
                Err(StoreError::SeqReused {
                    seq: 1,
                    next: 2,
                    ..
                })
            ));
            assert_eq!(store.load_items("a").unwrap().len(), 1, "nothing written");
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.next_seq("a").unwrap(), 2);
        // Dropped with its gallery; a new gallery of that name starts over.
        store.drop_gallery("a").unwrap();
        assert!(matches!(store.next_seq("a"), Err(StoreError::NoGallery(_))));
        store.create_gallery("a", &meta()).unwrap();
        assert_eq!(store.next_seq("a").unwrap(), 0);
    }

    /// A store written before the `sequences` table existed opens, each
    /// gallery's sequence starting above its highest stored seq.
    #[test]
    fn a_store_without_sequences_gets_them_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            // What older versions wrote: galleries and items tables only.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut galleries = txn.open_table(GALLERIES).unwrap();
                let json = serde_json::to_vec(&meta()).unwrap();
                for name in ["a", "empty"] {
                    galleries.insert(name, json.as_slice()).unwrap();
                    let def = items_table(name);
                    txn.open_table(TableDefinition::<&str, &[u8]>::new(&def))
                        .unwrap();
                }
                let def = items_table("a");
                let mut items = txn
                    .open_table(TableDefinition::<&str, &[u8]>::new(&def))
                    .unwrap();
                for (id, seq) in [("x", 3u64), ("y", 7), ("z", 5)] {
                    items.insert(id, rec(seq).encode().as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.next_seq("a").unwrap(), 8);
        assert_eq!(store.next_seq("empty").unwrap(), 0);
        assert_eq!(store.load_items("a").unwrap().len(), 3);
        store.write("a", &[put("w", 8)]).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.next_seq("a").unwrap(), 9, "kept, not recomputed");
    }

    #[test]
    fn items_survive_reopen_and_galleries_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let store = Store::open(&path).unwrap();
            store.create_gallery("a", &meta()).unwrap();
            store.create_gallery("b", &meta()).unwrap();
            assert_eq!(store.write("a", &[put("x", 1)]).unwrap(), vec![false]);
            assert_eq!(store.write("a", &[put("x", 2)]).unwrap(), vec![true]);
        }
        let store = Store::open(&path).unwrap();
        let a = store.load_items("a").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1.seq, 2);
        assert!(store.load_items("b").unwrap().is_empty());
        assert_eq!(store.galleries().unwrap().len(), 2);
    }

    /// A replica's position moves with its changes, in one transaction,
    /// and a message at or below it is refused with nothing written.
    #[test]
    fn a_position_is_written_with_its_changes_and_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let at = |applied| Position {
            incarnation: 7,
            applied,
            at_ms: 100 + applied,
        };
        {
            let store = Store::open(&path).unwrap();
            store.create_gallery_at("a", &meta(), Some(at(0))).unwrap();
            store.create_gallery("plain", &meta()).unwrap();
            assert_eq!(store.position("plain").unwrap(), None);
            store
                .write_at("a", &[put("x", 1), put("y", 2)], &[], Some(at(2)))
                .unwrap();
            let replay = store.write_at("a", &[put("z", 3)], &[], Some(at(2)));
            assert!(matches!(
                replay,
                Err(StoreError::Replayed {
                    seq: 2,
                    applied: 2,
                    ..
                })
            ));
            assert_eq!(store.load_items("a").unwrap().len(), 2, "nothing written");
            store
                .write_at("a", &[delete("x")], &[], Some(at(3)))
                .unwrap();
            let older = Position {
                incarnation: 6,
                ..at(4)
            };
            assert!(matches!(
                store.write_at("a", &[delete("y")], &[], Some(older)),
                Err(StoreError::OtherIncarnation(_))
            ));
            assert!(matches!(
                store.write_at("plain", &[delete("y")], &[], Some(at(4))),
                Err(StoreError::OtherIncarnation(_))
            ));
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.position("a").unwrap(), Some(at(3)));
        assert_eq!(store.load_items("a").unwrap().len(), 1);
        // Seen caught up later: only the moment moves, and only forward,
        // only at the same incarnation and sequence.
        let later = Position {
            at_ms: 5000,
            ..at(3)
        };
        assert!(store.confirm_position("a", &later).unwrap());
        assert!(!store.confirm_position("a", &at(3)).unwrap(), "not back");
        assert!(!store
            .confirm_position(
                "a",
                &Position {
                    at_ms: 9000,
                    ..at(2)
                }
            )
            .unwrap());
        assert!(!store
            .confirm_position(
                "a",
                &Position {
                    incarnation: 6,
                    at_ms: 9000,
                    ..at(3)
                }
            )
            .unwrap());
        assert!(!store.confirm_position("plain", &later).unwrap());
        assert_eq!(store.position("a").unwrap(), Some(later));
        store.drop_gallery("a").unwrap();
        assert_eq!(store.position("a").unwrap(), None);
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
            store.write("nope", &[delete("x")]),
            Err(StoreError::NoGallery(_))
        ));
        store.write("a", &[put("x", 1)]).unwrap();
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
