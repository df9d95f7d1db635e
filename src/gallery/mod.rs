//! Named galleries: the durable store plus the in-memory state (items,
//! their unit descriptors, the ANN index) derived from it.
//!
//! Writes go to the store first, in one transaction per call; only after
//! it commits is the in-memory state changed and the caller answered.
//!
//! Post-processing state (neighbour lists, DBA vectors) lives in `post`
//! and is refreshed in the background after writes; the per-request
//! stages that use it run in the query layer (`crate::query::online`),
//! over the public reads here (`search`, `get`, `post_snapshot`). The
//! derived state (that and the HNSW graph) is saved at shutdown and
//! reloaded at start where it matches the store (`persist`, `restore`),
//! else recomputed from the store.
//!
//! Files: `state` (the item maps), `write` and `read` (the calls),
//! `maintenance` (refresh, index upkeep, the worker thread), `restore`
//! (opening from the store and a saved state), `galleries` (all of them).
//!
//! Locks, in the one order they may be taken (never an earlier one while
//! holding a later one):
//! 1. `Galleries::map`;
//! 2. `Gallery::refreshing` (one refresh at a time);
//! 3. `Gallery::writer` (held as `Writing`: store order and memory order
//!    agree, and what needs it takes a `&Writing`);
//! 4. `Gallery::state`;
//! 5. `Gallery::post`;
//! 6. the index's own (pending inserts, then the graph).
//!
//! The maintenance worker takes 2-6, so it is joined only by a caller
//! holding none of them.

mod galleries;
pub mod limits;
mod maintenance;
pub mod page;
pub mod persist;
pub mod post;
pub mod projection;
mod read;
mod restore;
mod state;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::index::{AnnIndex, IndexStatus, Vector};
use crate::store::{GalleryMeta, Store, StoreError};

pub use galleries::Galleries;
use persist::PersistError;
use post::{PostConfig, Snapshot};
use projection::Projection;
use state::State;

pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("gallery {0:?} does not exist")]
    NoGallery(String),
    #[error("gallery {0:?} already exists")]
    Exists(String),
    #[error("item {id:?} is not in gallery {gallery:?}")]
    NoItem { gallery: String, id: String },
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "descriptor has {got} dimensions; gallery {gallery:?} holds {want}-dimensional descriptors"
    )]
    Dims {
        gallery: String,
        got: usize,
        want: usize,
    },
    #[error("descriptor is zero or not finite")]
    Degenerate,
    #[error("page_token {0:?} was not issued by ListItems; pass the previous page's next_page_token, or none for the first page")]
    PageToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("post-processing state: {0}")]
    Post(#[from] crate::rerank::RerankError),
    #[error("saving the derived state: {0}")]
    Persist(#[from] PersistError),
}

/// A stored item as searches see it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub metadata: Metadata,
    /// The raw unit descriptor (what GetItem returns).
    pub vector: Vector,
    /// What the index and the exact scan hold, in the gallery's current
    /// space: the raw descriptor, or once a refresh has computed them its
    /// projection (zero-padded to the gallery's dims) and/or its DBA
    /// vector.
    pub indexed: Vector,
    /// The index point holding `indexed` (a new one each time it changes).
    pub point: u64,
}

/// One item to add; `vector` must already be unit length.
pub struct NewItem {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub seq: u64,
    pub distance: f32,
    pub metadata: Metadata,
}

pub struct Gallery {
    name: String,
    meta: GalleryMeta,
    store: Arc<Store>,
    state: RwLock<State>,
    index: Arc<AnnIndex>,
    /// Serialises writers so store order and memory order agree.
    writer: Mutex<()>,
    post_cfg: PostConfig,
    post: RwLock<Option<Arc<Snapshot>>>,
    /// One refresh at a time.
    refreshing: Mutex<()>,
    /// Runs the debounced refreshes and the background graph builds.
    worker: maintenance::Worker,
}

/// The gallery's writer lock, held. Whatever must run under it (writes,
/// publishing a snapshot, starting a rebuild) takes a `&Writing`.
struct Writing<'a> {
    _guard: MutexGuard<'a, ()>,
}

/// What a search asks for, besides the query vector.
pub struct SearchParams<'a> {
    pub k: usize,
    pub ef: usize,
    pub exact: bool,
    pub filter: &'a Metadata,
    /// An item to leave out (the query itself, for search-by-id).
    pub exclude: Option<&'a str>,
    /// The projection the query was projected with (None: raw space).
    pub space: Option<&'a Arc<Projection>>,
}

/// The gallery's projection is no longer the one a query was projected
/// with (a refresh refitted it meanwhile): project again and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gallery's projection was refitted during the search")]
pub struct SpaceChanged;

/// Whether two optional projections are the same fit.
pub fn same_space(a: Option<&Arc<Projection>>, b: Option<&Arc<Projection>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct GalleryStats {
    pub name: String,
    pub count: usize,
    pub meta: GalleryMeta,
    pub index: IndexStatus,
    pub tombstones: usize,
    /// Changes not yet reflected in neighbour lists / DBA vectors.
    pub stale_items: u64,
    /// Generation of the current post-processing snapshot (0: none yet).
    pub post_generation: u64,
    pub dba: bool,
    /// Components of the fitted projection in use (0: none).
    pub projection_components: usize,
}

impl Gallery {
    /// Takes the writer lock (third in the lock order).
    fn writing(&self) -> Writing<'_> {
        Writing {
            _guard: self.writer.lock(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn meta(&self) -> &GalleryMeta {
        &self.meta
    }

    pub fn dims(&self) -> usize {
        self.meta.dims as usize
    }

    /// Checks a descriptor against this gallery and returns it unit length.
    pub fn prepare(&self, v: &[f32]) -> Result<Vec<f32>, GalleryError> {
        if v.len() != self.dims() {
            return Err(GalleryError::Dims {
                gallery: self.name.clone(),
                got: v.len(),
                want: self.dims(),
            });
        }
        crate::index::distance::normalised(v).ok_or(GalleryError::Degenerate)
    }

    /// The current post-processing snapshot, if one was computed.
    pub fn post_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.post.read().clone()
    }

    pub fn post_config(&self) -> &PostConfig {
        &self.post_cfg
    }
}

/// Gallery names: 1-64 characters from A-Z a-z 0-9 . _ -, not all dots.
pub fn validate_gallery_name(name: &str) -> Result<(), GalleryError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if name.is_empty() || name.len() > 64 || !ok_chars {
        return Err(GalleryError::InvalidName {
            what: "gallery name",
            value: name.to_string(),
            why: "use 1-64 characters from A-Z a-z 0-9 . _ -",
        });
    }
    // The name is a folder under data/index/: "." or ".." would be another one.
    if name.chars().all(|c| c == '.') {
        return Err(GalleryError::InvalidName {
            what: "gallery name",
            value: name.to_string(),
            why: "a name needs at least one character other than '.'",
        });
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), GalleryError> {
    if id.is_empty() || id.len() > 512 {
        return Err(GalleryError::InvalidName {
            what: "item id",
            value: id.to_string(),
            why: "ids are 1-512 bytes",
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
