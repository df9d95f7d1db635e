//! Preparing one item to add: the checks every item passes (id, metadata,
//! model or descriptor), its embedding and its thumbnail, whatever
//! transport it came by.

use super::checks::{self, Descriptor};
use super::ServiceError;
use crate::embed::Engine;
use crate::gallery::limits::MetadataLimits;
use crate::gallery::{Gallery, Metadata, NewItem};
use crate::store::thumbnail::{self, ThumbnailConfig};

pub enum Content {
    Image(Vec<u8>),
    Descriptor(Descriptor),
}

/// An item ready to commit.
pub struct Prepared {
    pub item: NewItem,
    /// JPEG, for items added as images while thumbnails are on.
    pub thumbnail: Option<Vec<u8>>,
}

/// What preparing items needs from the server.
#[derive(Clone)]
pub struct Preparer {
    pub engine: std::sync::Arc<Engine>,
    pub metadata: MetadataLimits,
    pub thumbnails: ThumbnailConfig,
}

impl Preparer {
    /// Checks the item against `g`, embeds its image and makes its
    /// thumbnail; the error is the item's outcome (its kind says whether
    /// sending it again may work).
    pub async fn prepare(
        &self,
        g: &Gallery,
        id: &str,
        content: Option<Content>,
        metadata: Metadata,
    ) -> Result<Prepared, ServiceError> {
        if id.is_empty() || id.len() > 512 {
            return Err(ServiceError::Invalid("item id must be 1-512 bytes".into()));
        }
        // Ids reach logs, page tokens and URLs: no control characters there.
        if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
            return Err(ServiceError::Invalid(format!(
                "item id has a control character (U+{:04X} at byte {at}); use printable characters",
                c as u32
            )));
        }
        self.metadata
            .check(&metadata)
            .map_err(ServiceError::Invalid)?;
        let (vector, thumbnail) = match content {
            Some(Content::Image(bytes)) => {
                checks::check_model(&self.engine, g)?;
                if self.thumbnails.wanted(&metadata) {
                    // Made from the image decoded for the embedding.
                    let cfg = self.thumbnails.clone();
                    let (v, _, made) = self
                        .engine
                        .embed_and(bytes, move |img| thumbnail::make(img, &cfg))
                        .await?;
                    // A failure costs the item its thumbnail, not its place.
                    let made = made.inspect_err(|e| tracing::warn!(id, error = %e, "no thumbnail"));
                    (v, made.ok())
                } else {
                    (self.engine.embed(bytes).await?.0, None)
                }
            }
            Some(Content::Descriptor(d)) => (checks::check_descriptor(g, &d)?, None),
            None => {
                return Err(ServiceError::Invalid(
                    "item has neither image nor descriptor".into(),
                ))
            }
        };
        let item = NewItem {
            id: id.to_string(),
            vector,
            metadata,
        };
        Ok(Prepared { item, thumbnail })
    }
}
