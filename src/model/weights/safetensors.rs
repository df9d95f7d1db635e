//! safetensors reader (any float/int dtype -> f32) and f32 writer.
use std::collections::BTreeMap;

use half::{bf16, f16};
use serde_json::Value as Json;

use crate::model::error::{ModelError, Result};
use crate::model::tensor::HostTensor;

fn err<T>(m: impl Into<String>) -> Result<T> {
    Err(ModelError::Safetensors(m.into()))
}

fn decode(dtype: &str, b: &[u8]) -> Result<Vec<f32>> {
    fn chunks<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        b.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    Ok(match dtype {
        "F32" => chunks(b, f32::from_le_bytes),
        "F16" => chunks(b, |a| f16::from_le_bytes(a).to_f32()),
        "BF16" => chunks(b, |a| bf16::from_le_bytes(a).to_f32()),
        "F64" => chunks(b, |a| f64::from_le_bytes(a) as f32),
        "I64" => chunks(b, |a| i64::from_le_bytes(a) as f32),
        "I32" => chunks(b, |a| i32::from_le_bytes(a) as f32),
        "I16" => chunks(b, |a| i16::from_le_bytes(a) as f32),
        "I8" => chunks(b, |a: [u8; 1]| a[0] as i8 as f32),
        "U8" | "BOOL" => chunks(b, |a: [u8; 1]| a[0] as f32),
        other => return err(format!("unsupported dtype {other}")),
    })
}

pub fn is_safetensors(buf: &[u8]) -> bool {
    buf.len() >= 9 && buf[8] == b'{'
}

pub fn load_safetensors(buf: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    let Some(n) = buf
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    else {
        return err("file shorter than its header length");
    };
    let Some(header) = usize::try_from(n).ok().and_then(|n| buf.get(8..8 + n)) else {
        return err("header runs past end of file");
    };
    let data = &buf[8 + header.len()..];
    let header: BTreeMap<String, Json> =
        serde_json::from_slice(header).map_err(|e| ModelError::Safetensors(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or_default();
        let shape: Option<Vec<usize>> = info["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect());
        let offs: Option<Vec<usize>> = info["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect());
        let (Some(shape), Some(offs)) = (shape, offs) else {
            return err(format!("{name}: malformed header entry"));
        };
        let Some(bytes) = offs
            .first()
            .zip(offs.get(1))
            .and_then(|(&a, &b)| data.get(a..b))
        else {
            return err(format!("{name}: data offsets out of range"));
        };
        let values = decode(dtype, bytes)?;
        let t = HostTensor::new(shape, values)
            .map_err(|e| ModelError::Safetensors(format!("{name}: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Serialises tensors as F32 safetensors (e.g. to hand pth weights to a tch trainer).
pub fn save_safetensors(tensors: &BTreeMap<String, HostTensor>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.numel() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = Json::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' '); // spec: header may be space-padded; keeps data 8-byte aligned
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for t in tensors.values() {
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_preserves_values_and_shapes() {
        let mut m = BTreeMap::new();
        m.insert(
            "a.weight".to_string(),
            HostTensor::new(vec![2, 3], vec![1., -2., 3.5, 0., 1e-8, 7.]).unwrap(),
        );
        m.insert("b".to_string(), HostTensor::scalar(4.0));
        let bytes = save_safetensors(&m);
        assert!(is_safetensors(&bytes));
        assert_eq!(load_safetensors(&bytes).unwrap(), m);
    }

    #[test]
    fn reads_f16_and_i64() {
        let h = br#"{"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"n":{"dtype":"I64","shape":[],"data_offsets":[4,12]}}"#;
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h);
        b.extend_from_slice(&f16::from_f32(1.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-2.0).to_le_bytes());
        b.extend_from_slice(&42i64.to_le_bytes());
        let m = load_safetensors(&b).unwrap();
        assert_eq!(m["x"].data, vec![1.5, -2.0]);
        assert_eq!(m["n"].data, vec![42.0]);
        assert_eq!(m["n"].shape, Vec::<usize>::new());
    }
}
