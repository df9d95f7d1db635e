//! Minimal read-only zip archive reader for torch checkpoints.
//!
//! `torch.save` writes every entry *stored* (uncompressed, 64-byte aligned), so only
//! method 0 is supported; a compressed entry gives a clear error instead of garbage.
//! Zip64 sizes/offsets (files over 4 GiB) are honoured.
use crate::model::error::{ModelError, Result};

pub struct ZipEntry {
    pub name: String,
    method: u16,
    size: u64,
    local_offset: u64,
}

pub struct ZipArchive<'a> {
    buf: &'a [u8],
    pub entries: Vec<ZipEntry>,
}

fn err<T>(m: impl Into<String>) -> Result<T> {
    Err(ModelError::Zip(m.into()))
}

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .map_or_else(|| err("truncated"), Ok)
}
fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .map_or_else(|| err("truncated"), Ok)
}
fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    match b.get(o..o + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_le_bytes(a))
        }
        None => err("truncated"),
    }
}

pub fn is_zip(buf: &[u8]) -> bool {
    buf.starts_with(b"PK\x03\x04")
}

impl<'a> ZipArchive<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        // End-of-central-directory record: scan back over a possible comment.
        let min = buf.len().saturating_sub(22 + 65535);
        let eocd = (min..=buf.len().saturating_sub(22))
            .rev()
            .find(|&i| buf[i..].starts_with(b"PK\x05\x06"))
            .map_or_else(|| err("no end-of-central-directory record"), Ok)?;
        let mut count = u16_at(buf, eocd + 10)? as u64;
        let mut cd = u32_at(buf, eocd + 16)? as u64;
        if count == 0xFFFF || cd == 0xFFFF_FFFF {
            // Zip64 locator sits right before the EOCD.
            let loc = eocd
                .checked_sub(20)
                .filter(|&l| buf[l..].starts_with(b"PK\x06\x07"))
                .map_or_else(|| err("zip64 locator missing"), Ok)?;
            let rec = u64_at(buf, loc + 8)? as usize;
            if !buf.get(rec..).is_some_and(|s| s.starts_with(b"PK\x06\x06")) {
                return err("zip64 end record missing");
            }
            count = u64_at(buf, rec + 32)?;
            cd = u64_at(buf, rec + 48)?;
        }
        let mut entries = Vec::new();
        let mut p = cd as usize;
        for _ in 0..count {
            if !buf.get(p..).is_some_and(|s| s.starts_with(b"PK\x01\x02")) {
                return err(format!("bad central directory entry at {p}"));
            }
            let method = u16_at(buf, p + 10)?;
            let mut size = u32_at(buf, p + 24)? as u64;
            let csize = u32_at(buf, p + 20)? as u64; // compressed size
            let name_len = u16_at(buf, p + 28)? as usize;
            let extra_len = u16_at(buf, p + 30)? as usize;
            let comment_len = u16_at(buf, p + 32)? as usize;
            let mut local_offset = u32_at(buf, p + 42)? as u64;
            let name_bytes = buf
                .get(p + 46..p + 46 + name_len)
                .map_or_else(|| err("truncated name"), Ok)?;
            let name = String::from_utf8_lossy(name_bytes).into_owned();
            // Zip64 extended info: fields present only for values saturated in the header.
            let extra = buf
                .get(p + 46 + name_len..p + 46 + name_len + extra_len)
                .map_or_else(|| err("truncated extra"), Ok)?;
            let mut e = 0;
            while e + 4 <= extra.len() {
                let id = u16_at(extra, e)?;
                let len = u16_at(extra, e + 2)? as usize;
                if id == 1 {
                    let mut q = e + 4;
                    if size == 0xFFFF_FFFF {
                        size = u64_at(extra, q)?;
                        q += 8;
                    }
                    if csize == 0xFFFF_FFFF {
                        q += 8;
                    }
                    if local_offset == 0xFFFF_FFFF {
                        local_offset = u64_at(extra, q)?;
                    }
                }
                e += 4 + len;
            }
            entries.push(ZipEntry {
                name,
                method,
                size,
                local_offset,
            });
            p += 46 + name_len + extra_len + comment_len;
        }
        Ok(Self { buf, entries })
    }

    /// Raw bytes of a stored entry.
    pub fn data(&self, entry: &ZipEntry) -> Result<&'a [u8]> {
        if entry.method != 0 {
            return err(format!(
                "entry {} uses compression method {} (only stored entries, as torch.save writes, are supported)",
                entry.name, entry.method
            ));
        }
        let lo = entry.local_offset as usize;
        if !self
            .buf
            .get(lo..)
            .is_some_and(|s| s.starts_with(b"PK\x03\x04"))
        {
            return err(format!("bad local header for {}", entry.name));
        }
        let start =
            lo + 30 + u16_at(self.buf, lo + 26)? as usize + u16_at(self.buf, lo + 28)? as usize;
        let end = usize::try_from(entry.size)
            .ok()
            .and_then(|n| start.checked_add(n));
        end.and_then(|end| self.buf.get(start..end)).map_or_else(
            || err(format!("entry {} runs past end of file", entry.name)),
            Ok,
        )
    }

    pub fn find(&self, name: &str) -> Option<&ZipEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// Writes a stored (uncompressed) zip; used by tests to build torch-zip checkpoints.
#[cfg(test)]
pub fn write_stored(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let off = out.len() as u32;
        let crc = crc32(data);
        for v in [
            &b"PK\x03\x04"[..],
            &20u16.to_le_bytes(),
            &0u16.to_le_bytes(),
            &0u16.to_le_bytes(),
            &0u32.to_le_bytes(),
        ] {
            out.extend_from_slice(v);
        }
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&[0u8; 6]); // flags, method, time
        central.extend_from_slice(&0u16.to_le_bytes()); // date
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0u8; 12]); // extra, comment, disk, attrs
        central.extend_from_slice(&off.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stored_entries() {
        let z = write_stored(&[("a/x", b"hello"), ("a/y", b"")]);
        assert!(is_zip(&z));
        let a = ZipArchive::parse(&z).unwrap();
        let names: Vec<_> = a.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a/x", "a/y"]);
        assert_eq!(a.data(a.find("a/x").unwrap()).unwrap(), b"hello");
        assert_eq!(a.data(a.find("a/y").unwrap()).unwrap(), b"");
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// A zip64 size of 2^64 - 1 (found reading the code; a debug build
    /// panicked on the overflow): an error, not a panic.
    #[test]
    fn entry_size_past_the_address_space_is_an_error() {
        let mut z = write_stored(&[("a/data.pkl", b"xyz")]);
        let cd = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        let name_len = u16_at(&z, cd + 28).unwrap() as usize;
        z[cd + 24..cd + 28].copy_from_slice(&[0xFF; 4]);
        z[cd + 30..cd + 32].copy_from_slice(&12u16.to_le_bytes());
        let mut extra = vec![1, 0, 8, 0];
        extra.extend(u64::MAX.to_le_bytes());
        let tail = z.split_off(cd + 46 + name_len);
        z.extend(extra);
        z.extend(tail);
        let a = ZipArchive::parse(&z).unwrap();
        assert_eq!(a.entries[0].size, u64::MAX);
        let e = a.data(&a.entries[0]).err().unwrap().to_string();
        assert!(e.contains("runs past end of file"), "{e}");
    }

    #[test]
    fn compressed_entry_is_a_clear_error() {
        let mut z = write_stored(&[("a/data.pkl", b"xyz")]);
        let cd = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        z[cd + 10] = 8; // method: deflate
        let a = ZipArchive::parse(&z).unwrap();
        let e = a.data(&a.entries[0]).err().unwrap().to_string();
        assert!(
            e.contains("a/data.pkl") && e.contains("compression method 8"),
            "{e}"
        );
    }
}
