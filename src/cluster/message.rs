//! A write as it travels in a gallery's stream: one item put (its record
//! and thumbnail) or removed. Hand-written like the store's records, so
//! the descriptor is the same flat run and a foreign message is a typed
//! error.
//!
//! Layout (version 1): `u8 version | u8 op | u32 id len | id` then, for a
//! put, `u32 record len | ItemRecord | u32 thumbnail len | thumbnail`.

use crate::store::ItemRecord;

const VERSION: u8 = 1;
const PUT: u8 = 1;
const DELETE: u8 = 2;

#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// The record's seq is ignored: the stream sequence becomes it.
    Put {
        id: String,
        record: ItemRecord,
        thumbnail: Option<Vec<u8>>,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("not a lookalike stream message: {0}")]
pub struct Undecodable(String);

impl Write {
    pub fn id(&self) -> &str {
        match self {
            Write::Put { id, .. } | Write::Delete { id } => id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        let put = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        match self {
            Write::Put {
                id,
                record,
                thumbnail,
            } => {
                out.push(PUT);
                put(&mut out, id.as_bytes());
                put(&mut out, &record.encode());
                put(&mut out, thumbnail.as_deref().unwrap_or_default());
            }
            Write::Delete { id } => {
                out.push(DELETE);
                put(&mut out, id.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Undecodable> {
        let mut r = Reader(bytes);
        let header = r.take(2)?;
        if header[0] != VERSION {
            return Err(bad(&format!("unknown version {}", header[0])));
        }
        let op = header[1];
        let id = String::from_utf8(r.field()?.to_vec()).map_err(|_| bad("id is not UTF-8"))?;
        let write = match op {
            PUT => {
                let record = ItemRecord::decode(r.field()?).map_err(|e| bad(&e.to_string()))?;
                let thumb = r.field()?;
                Write::Put {
                    id,
                    record,
                    thumbnail: (!thumb.is_empty()).then(|| thumb.to_vec()),
                }
            }
            DELETE => Write::Delete { id },
            op => return Err(bad(&format!("unknown operation {op}"))),
        };
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(write)
    }
}

fn bad(why: &str) -> Undecodable {
    Undecodable(why.to_string())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Undecodable> {
        if self.0.len() < n {
            return Err(bad("cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// A `u32` length, then that many bytes.
    fn field(&mut self) -> Result<&'a [u8], Undecodable> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_round_trip_and_garbage_is_refused() {
        let put = Write::Put {
            id: "a.b".into(),
            record: ItemRecord {
                seq: 0,
                descriptor: vec![0.6, 0.8],
                metadata: [("k".to_string(), "v".to_string())].into(),
            },
            thumbnail: Some(vec![0xff, 0xd8, 1, 2]),
        };
        let del = Write::Delete { id: "x".into() };
        for w in [&put, &del] {
            assert_eq!(&Write::decode(&w.encode()).unwrap(), w);
        }
        let bytes = put.encode();
        for cut in [0, 1, 5, bytes.len() - 1] {
            assert!(Write::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Write::decode(&longer).is_err());
        assert!(Write::decode(b"{\"json\": true}").is_err());
    }
}
