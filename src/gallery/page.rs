//! ListItems page tokens: opaque to clients, checked when they come back.
//! A token is the last id of the previous page, hex-encoded, with a short
//! checksum, so that a token that was never issued is refused instead of
//! silently starting somewhere.

use sha2::{Digest, Sha256};

use super::GalleryError;

const CHECK_BYTES: usize = 4;

fn check(id: &[u8]) -> String {
    hex::encode(&Sha256::digest(id)[..CHECK_BYTES])
}

/// The token that resumes a listing after `last_id`.
pub fn encode(last_id: &str) -> String {
    format!("{}{}", check(last_id.as_bytes()), hex::encode(last_id))
}

/// The id a token resumes after.
pub fn decode(token: &str) -> Result<String, GalleryError> {
    let bad = || GalleryError::PageToken(token.chars().take(40).collect());
    let split = 2 * CHECK_BYTES;
    if token.len() <= split || !token.is_char_boundary(split) {
        return Err(bad());
    }
    let (sum, body) = token.split_at(split);
    let id = hex::decode(body).map_err(|_| bad())?;
    if check(&id) != sum {
        return Err(bad());
    }
    String::from_utf8(id).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgeries() {
        for id in ["a", "train/Fruit/Banana/Banana_001.jpg", "ünï cödé"] {
            assert_eq!(decode(&encode(id)).unwrap(), id);
        }
        let t = encode("item-7");
        let mut forged = t.clone();
        forged.replace_range(t.len() - 1.., "0");
        for bad in ["", "item-7", "zzzz", &forged, &t[..8], "ééééééééé"] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
    }
}
