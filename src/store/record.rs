//! Binary layout of one stored item. Hand-written rather than serde so the
//! descriptor is a flat little-endian f32 run (fast to load 100k items) and
//! so a truncated or foreign value is a typed error, never a panic.
//!
//! Layout (version 1):
//! `u8 version | u64 seq | u32 dims | f32 x dims | u32 n_meta | (u32 len, bytes) x 2n`

use std::collections::BTreeMap;

use super::StoreError;

const VERSION: u8 = 1;

/// One gallery item as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    /// Insertion sequence number from the gallery's durable sequence
    /// (`Store::next_seq`): never issued twice, even once its item is
    /// removed. The derived state's key for the item (the ANN index keys
    /// points, not seqs: see `index`). Re-adding an id gives it a new seq.
    pub seq: u64,
    pub descriptor: Vec<f32>,
    pub metadata: BTreeMap<String, String>,
}

impl ItemRecord {
    pub fn encode(&self) -> Vec<u8> {
        let meta_len: usize = self
            .metadata
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(1 + 8 + 4 + 4 * self.descriptor.len() + 4 + meta_len);
        out.push(VERSION);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&(self.descriptor.len() as u32).to_le_bytes());
        for v in &self.descriptor {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        for (k, v) in &self.metadata {
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(StoreError::Corrupt(format!(
                "unknown record version {version}"
            )));
        }
        let seq = r.u64()?;
        let dims = r.u32()? as usize;
        let raw = r.take(
            dims.checked_mul(4)
                .ok_or_else(|| corrupt("dims overflow"))?,
        )?;
        let descriptor = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n_meta = r.u32()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let k = r.string()?;
            let v = r.string()?;
            metadata.insert(k, v);
        }
        if r.pos != bytes.len() {
            return Err(corrupt("trailing bytes after record"));
        }
        Ok(Self {
            seq,
            descriptor,
            metadata,
        })
    }
}

fn corrupt(msg: &str) -> StoreError {
    StoreError::Corrupt(msg.to_string())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| corrupt("record is truncated"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("metadata is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ItemRecord {
        let mut metadata = BTreeMap::new();
        metadata.insert("sku".to_string(), "42".to_string());
        metadata.insert("colour".to_string(), "gr\u{fc}n".to_string());
        ItemRecord {
            seq: 7,
            descriptor: vec![0.5, -1.25, 3.0],
            metadata,
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(ItemRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                ItemRecord::decode(&bytes[..n]).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(
            ItemRecord::decode(&bytes),
            Err(StoreError::Corrupt(_))
        ));
    }
}
