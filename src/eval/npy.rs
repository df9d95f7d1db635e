//! Minimal `.npy` (format 1.0) for 2-D little-endian f32 arrays in C order:
//! how `lookalike eval` saves and reloads descriptors, readable by numpy.

use std::path::Path;

use ndarray::Array2;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a 2-D little-endian f32 C-order .npy file ({why})")]
    Format { path: String, why: String },
}

pub fn write(path: &Path, a: &Array2<f32>) -> Result<(), NpyError> {
    let (r, c) = a.dim();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({r}, {c}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is 64-byte aligned.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub fn read(path: &Path) -> Result<Array2<f32>, NpyError> {
    let p = path.display().to_string();
    let bad = |why: &str| NpyError::Format {
        path: p.clone(),
        why: why.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: p.clone(),
        source,
    })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return Err(bad("bad magic or version"));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    if !header.contains("'<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad("dtype or order"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("shape"))?;
    let [r, c] = dims[..] else {
        return Err(bad("not 2-D"));
    };
    let data = &bytes[10 + hlen..];
    if data.len() != r * c * 4 {
        return Err(bad("data length does not match the shape"));
    }
    let vals = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Array2::from_shape_vec((r, c), vals).map_err(|_| bad("shape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let a = Array2::from_shape_fn((3, 5), |(i, j)| i as f32 * 10.0 + j as f32 - 0.5);
        write(&p, &a).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            (bytes.len() - 3 * 5 * 4) % 64,
            0,
            "header is 64-byte aligned"
        );
        assert_eq!(read(&p).unwrap(), a);
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(read(&p), Err(NpyError::Format { .. })));
    }
}
