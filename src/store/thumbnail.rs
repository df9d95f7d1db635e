//! Thumbnails: a small JPEG per image item, made at add time and kept in
//! its own table per gallery (`thumbs/<gallery>`), written and deleted in
//! the item's own transaction so that an item and its thumbnail never
//! disagree. Loading a gallery never reads this table.

use std::io::Cursor;

use fast_image_resize as fr;
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use redb::{ReadableDatabase, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Change, Store, StoreError};

/// `[thumbnails]` in the server config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThumbnailConfig {
    /// Keep a thumbnail with every item added as an image.
    pub enabled: bool,
    /// Longest side in pixels; smaller images keep their size.
    pub max_side: u32,
    /// JPEG quality, 1-100.
    pub quality: u8,
    /// An item whose metadata has this key is shown from that URL instead
    /// (no thumbnail is stored for it). Empty: no such key.
    pub url_key: String,
}

impl Default for ThumbnailConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_side: 256,
            quality: 80,
            url_key: "image_url".into(),
        }
    }
}

impl ThumbnailConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=2048).contains(&self.max_side) {
            return Err("thumbnails.max_side must be between 16 and 2048".into());
        }
        if !(1..=100).contains(&self.quality) {
            return Err("thumbnails.quality must be between 1 and 100".into());
        }
        Ok(())
    }

    /// Whether an item with this metadata gets a stored thumbnail.
    pub fn wanted(&self, metadata: &crate::gallery::Metadata) -> bool {
        self.enabled && (self.url_key.is_empty() || !metadata.contains_key(&self.url_key))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("resizing: {0}")]
    Resize(String),
    #[error("JPEG encoding: {0}")]
    Encode(#[from] image::ImageError),
}

/// The JPEG thumbnail of a decoded image. Blocking (a few ms).
pub fn make(img: &RgbImage, cfg: &ThumbnailConfig) -> Result<Vec<u8>, ThumbnailError> {
    let (w, h) = img.dimensions();
    let scale = (cfg.max_side as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let small = if (tw, th) == (w, h) {
        img.clone()
    } else {
        let src = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3)
            .map_err(|e| ThumbnailError::Resize(e.to_string()))?;
        let mut dst = fr::images::Image::new(tw, th, fr::PixelType::U8x3);
        let opts = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        fr::Resizer::new()
            .resize(&src, &mut dst, &opts)
            .map_err(|e| ThumbnailError::Resize(e.to_string()))?;
        RgbImage::from_raw(tw, th, dst.into_vec())
            .ok_or_else(|| ThumbnailError::Resize("buffer size".into()))?
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut out), cfg.quality).encode_image(&small)?;
    Ok(out)
}

fn table_name(gallery: &str) -> String {
    format!("thumbs/{gallery}")
}

/// Inside an item write: every deleted or replaced item loses its old
/// thumbnail; `thumbs` (id, JPEG) are then stored.
pub(super) fn apply(
    txn: &WriteTransaction,
    gallery: &str,
    changes: &[Change],
    thumbs: &[(&str, &[u8])],
) -> Result<(), StoreError> {
    let name = table_name(gallery);
    let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name))?;
    for change in changes {
        table.remove(change.id())?;
    }
    for (id, jpeg) in thumbs {
        table.insert(*id, *jpeg)?;
    }
    Ok(())
}

/// Inside a gallery drop.
pub(super) fn drop_table(txn: &WriteTransaction, gallery: &str) -> Result<(), StoreError> {
    let name = table_name(gallery);
    txn.delete_table(TableDefinition::<&str, &[u8]>::new(&name))?;
    Ok(())
}

impl Store {
    /// The thumbnail stored with item `id`, if any.
    pub fn thumbnail(&self, gallery: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = table_name(gallery);
        self.with(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(t) => t,
                // A gallery without any thumbnail written yet.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(table.get(id)?.map(|v| v.value().to_vec()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GalleryMeta, ItemRecord};

    fn put(seq: u64) -> [Change; 1] {
        let record = ItemRecord {
            seq,
            descriptor: vec![1.0, 0.0],
            metadata: Default::default(),
        };
        [Change::Put {
            id: "x".into(),
            record,
        }]
    }

    #[test]
    fn thumbnail_keeps_aspect_and_longest_side() {
        let img = RgbImage::from_fn(1000, 500, |x, y| image::Rgb([(x % 256) as u8, y as u8, 7]));
        let jpeg = make(&img, &ThumbnailConfig::default()).unwrap();
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (256, 128));
        let tiny = RgbImage::new(40, 30);
        let back = image::load_from_memory(&make(&tiny, &ThumbnailConfig::default()).unwrap());
        assert_eq!(back.unwrap().width(), 40, "small images are not enlarged");
    }

    #[test]
    fn written_replaced_and_deleted_with_the_item() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        let meta = GalleryMeta {
            model_fingerprint: "f".into(),
            dims: 2,
        };
        store.create_gallery("g", &meta).unwrap();
        assert_eq!(store.thumbnail("g", "x").unwrap(), None);
        store.write_with("g", &put(0), &[("x", b"jpeg1")]).unwrap();
        assert_eq!(store.thumbnail("g", "x").unwrap().unwrap(), b"jpeg1");
        // Replaced without a thumbnail (e.g. as a descriptor): the old one goes.
        store.write("g", &put(1)).unwrap();
        assert_eq!(store.thumbnail("g", "x").unwrap(), None);
        store.write_with("g", &put(2), &[("x", b"jpeg2")]).unwrap();
        let delete = Change::Delete { id: "x".into() };
        store.write("g", &[delete]).unwrap();
        assert_eq!(store.thumbnail("g", "x").unwrap(), None);
        store.write_with("g", &put(3), &[("x", b"jpeg3")]).unwrap();
        store.drop_gallery("g").unwrap();
        store.create_gallery("g", &meta).unwrap();
        assert_eq!(
            store.thumbnail("g", "x").unwrap(),
            None,
            "dropped with the gallery"
        );
    }
}
