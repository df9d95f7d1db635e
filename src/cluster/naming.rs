//! Names in NATS: the KV bucket of gallery definitions, and each gallery
//! incarnation's stream and item subjects. Gallery names may hold '.'
//! and item ids any byte, neither of which a subject token may, so both
//! travel base64url-encoded (A-Z a-z 0-9 - _).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The gallery definitions' KV bucket.
pub fn bucket(prefix: &str) -> String {
    format!("{prefix}_galleries")
}

/// A gallery's key in the definitions bucket.
pub fn key(gallery: &str) -> String {
    URL_SAFE_NO_PAD.encode(gallery)
}

/// The gallery named by a definitions key (None: not one of ours).
pub fn gallery_of_key(key: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    String::from_utf8(bytes).ok()
}

/// One incarnation of a gallery: its name, the revision of its
/// definition, and its stream's token (random, chosen by the creator,
/// which creates the stream before the definition, so no replica ever
/// sees a definition whose stream does not exist yet). A gallery dropped
/// and created again has a new revision and stream, so nothing of the old
/// one is ever applied to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    pub gallery: String,
    pub revision: u64,
    pub stream_token: String,
}

/// A fresh stream token.
pub fn new_stream_token() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

impl Incarnation {
    fn token(&self) -> String {
        format!(
            "{}-{}",
            URL_SAFE_NO_PAD.encode(&self.gallery),
            self.stream_token
        )
    }

    pub fn stream(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.token())
    }

    /// Every item subject of the stream.
    pub fn subjects(&self, prefix: &str) -> String {
        format!("{prefix}.items.{}.>", self.token())
    }

    /// Item `id`'s subject: the stream keeps its latest message only.
    pub fn subject(&self, prefix: &str, id: &str) -> String {
        format!(
            "{prefix}.items.{}.{}",
            self.token(),
            URL_SAFE_NO_PAD.encode(id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_nats_tokens_and_round_trip() {
        let inc = Incarnation {
            gallery: "shoes.v2".into(),
            revision: 12,
            stream_token: new_stream_token(),
        };
        let stream = inc.stream("lookalike");
        assert!(!stream.contains('.') && !stream.contains(' '), "{stream}");
        let subject = inc.subject("lookalike", "a.b c*>/é");
        let last = subject.rsplit('.').next().unwrap();
        assert_eq!(subject.split('.').count(), 4, "{subject}");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(last).unwrap(),
            "a.b c*>/é".as_bytes()
        );
        assert!(subject.starts_with(inc.subjects("lookalike").trim_end_matches('>')));
        assert_eq!(
            gallery_of_key(&key("shoes.v2")).as_deref(),
            Some("shoes.v2")
        );
        let other = Incarnation {
            revision: 13,
            stream_token: new_stream_token(),
            ..inc.clone()
        };
        assert_ne!(other.stream("lookalike"), stream);
    }
}
