//! Bounds on what one item may carry besides its descriptor, so a client
//! cannot make the store (and every search hit) arbitrarily large.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataLimits {
    pub max_keys: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Keys and values together.
    pub max_total_bytes: usize,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        Self {
            max_keys: 64,
            max_key_bytes: 256,
            max_value_bytes: 4096,
            max_total_bytes: 16384,
        }
    }
}

impl MetadataLimits {
    /// Why `metadata` is refused, in words a client can act on.
    pub fn check<'a>(
        &self,
        metadata: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<(), String> {
        let (mut keys, mut total) = (0usize, 0usize);
        for (k, v) in metadata {
            keys += 1;
            if keys > self.max_keys {
                return Err(format!(
                    "metadata has more than {} keys (the limit)",
                    self.max_keys
                ));
            }
            if k.len() > self.max_key_bytes {
                return Err(format!(
                    "metadata key {:?}... is {} bytes, over the limit of {}",
                    prefix(k),
                    k.len(),
                    self.max_key_bytes
                ));
            }
            if v.len() > self.max_value_bytes {
                return Err(format!(
                    "metadata value of {:?} is {} bytes, over the limit of {}",
                    prefix(k),
                    v.len(),
                    self.max_value_bytes
                ));
            }
            total += k.len() + v.len();
        }
        if total > self.max_total_bytes {
            return Err(format!(
                "metadata is {total} bytes in all, over the limit of {}",
                self.max_total_bytes
            ));
        }
        Ok(())
    }
}

/// The first few characters, for a message that stays short.
fn prefix(s: &str) -> &str {
    let end = s.char_indices().nth(32).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(pairs: &[(&str, usize)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, n)| (k.to_string(), "v".repeat(*n)))
            .collect()
    }

    #[test]
    fn each_bound_is_enforced() {
        let l = MetadataLimits {
            max_keys: 3,
            max_key_bytes: 4,
            max_value_bytes: 10,
            max_total_bytes: 20,
        };
        assert!(l.check(&meta(&[("a", 10), ("b", 5)])).is_ok());
        let e = l.check(&meta(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]));
        assert!(e.unwrap_err().contains("more than 3 keys"));
        let e = l.check(&meta(&[("toolong", 1)]));
        assert!(e.unwrap_err().contains("over the limit of 4"));
        let e = l.check(&meta(&[("a", 11)]));
        assert!(e.unwrap_err().contains("11 bytes"));
        let e = l.check(&meta(&[("a", 10), ("b", 10)]));
        assert!(e.unwrap_err().contains("22 bytes in all"));
    }
}
