//! Preparing one item to add: the checks every item passes (id, metadata,
//! model or descriptor) and its embedding, whatever transport it came by.

use super::checks::{self, Descriptor};
use super::ServiceError;
use crate::embed::Engine;
use crate::gallery::limits::MetadataLimits;
use crate::gallery::{Gallery, Metadata, NewItem};

pub enum Content {
    Image(Vec<u8>),
    Descriptor(Descriptor),
}

/// Checks the item against `g` and embeds its image; the error is the
/// item's outcome (its kind says whether sending it again may work).
pub async fn prepare(
    engine: &Engine,
    limits: &MetadataLimits,
    g: &Gallery,
    id: &str,
    content: Option<Content>,
    metadata: Metadata,
) -> Result<NewItem, ServiceError> {
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
    limits.check(&metadata).map_err(ServiceError::Invalid)?;
    let vector = match content {
        Some(Content::Image(bytes)) => {
            checks::check_model(engine, g)?;
            engine.embed(bytes).await?.0
        }
        Some(Content::Descriptor(d)) => checks::check_descriptor(g, &d)?,
        None => {
            return Err(ServiceError::Invalid(
                "item has neither image nor descriptor".into(),
            ))
        }
    };
    Ok(NewItem {
        id: id.to_string(),
        vector,
        metadata,
    })
}
