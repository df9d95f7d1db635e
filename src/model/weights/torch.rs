//! PyTorch checkpoints (`torch.save`): zip format (torch >= 1.6) and the legacy
//! back-to-back-pickles format, read without Python.
use std::collections::{BTreeMap, HashMap};

use half::{bf16, f16};

use super::pickle::{unpickle, Value};
use super::zip::{is_zip, ZipArchive};
use crate::model::error::{ModelError, Result};
use crate::model::tensor::HostTensor;

/// Magic number that opens a legacy torch file (pickled as a LONG1).
const LEGACY_MAGIC: &str = "long:1950a86a20f9469cfc6c";

fn err<T>(m: impl Into<String>) -> Result<T> {
    Err(ModelError::Torch(m.into()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    fn from_storage(name: &str) -> Result<Self> {
        Ok(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            other => return err(format!("unsupported storage type {other}")),
        })
    }
    fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    fn read(self, b: &[u8]) -> f32 {
        match self {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::F64 => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            DType::I64 => {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
            DType::I8 => b[0] as i8 as f32,
            DType::U8 | DType::Bool => b[0] as f32,
        }
    }
}

/// A tensor as described by `_rebuild_tensor_v2`: a strided view into a storage.
#[derive(Debug, Clone)]
struct TensorSpec {
    storage: String,
    dtype: DType,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn ints(v: &Value, what: &str) -> Result<Vec<usize>> {
    v.as_seq()
        .and_then(|s| {
            s.iter()
                .map(|x| x.as_int().and_then(|i| usize::try_from(i).ok()))
                .collect()
        })
        .map_or_else(
            || err(format!("{what} is not a tuple of non-negative ints")),
            Ok,
        )
}

/// Interprets `('storage', StorageType, key, location, numel, ...)`.
fn storage_ref(pid: &Value) -> Result<(String, DType)> {
    let Some(t) = pid.as_seq() else {
        return err("persistent id is not a tuple");
    };
    if t.first().and_then(Value::as_str) != Some("storage") || t.len() < 3 {
        return err(format!("unsupported persistent id {pid:?}"));
    }
    let dtype = match &t[1] {
        Value::Global { name, .. } => DType::from_storage(name)?,
        other => return err(format!("storage type is {other:?}")),
    };
    let key = match &t[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return err(format!("storage key is {other:?}")),
    };
    Ok((key, dtype))
}

fn tensor_spec(v: &Value) -> Result<Option<TensorSpec>> {
    let Value::Call { func, args } = v else {
        return Ok(None);
    };
    if func.is_global("torch._utils", "_rebuild_parameter")
        || func.is_global("torch._utils", "_rebuild_parameter_with_state")
    {
        return match args.first() {
            Some(inner) => tensor_spec(inner),
            None => err("_rebuild_parameter without data"),
        };
    }
    // Tensors carrying Python attributes: (_rebuild_tensor_v2, type, args, state).
    if func.is_global("torch._tensor", "_rebuild_from_type_v2") {
        return match (args.first(), args.get(2).and_then(Value::as_seq)) {
            (Some(f), Some(inner)) => tensor_spec(&Value::Call {
                func: Box::new(f.clone()),
                args: inner.to_vec(),
            }),
            _ => err("malformed _rebuild_from_type_v2"),
        };
    }
    if !func.is_global("torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    if args.len() < 4 {
        return err("_rebuild_tensor_v2 with too few arguments");
    }
    let Value::PersId(pid) = &args[0] else {
        return err("_rebuild_tensor_v2 storage is not a persistent id");
    };
    let (storage, dtype) = storage_ref(pid)?;
    let offset = args[1]
        .as_int()
        .and_then(|i| usize::try_from(i).ok())
        .map_or_else(|| err("bad storage offset"), Ok)?;
    Ok(Some(TensorSpec {
        storage,
        dtype,
        offset,
        size: ints(&args[2], "size")?,
        stride: ints(&args[3], "stride")?,
    }))
}

/// Items of a dict or `OrderedDict()` call (whose SETITEMS batches become Dict args).
fn dict_items(v: &Value) -> Option<Vec<&(Value, Value)>> {
    match v {
        Value::Dict(d) => Some(d.iter().collect()),
        Value::Call { func, args } if func.is_global("collections", "OrderedDict") => Some(
            args.iter()
                .filter_map(|a| match a {
                    Value::Dict(d) => Some(d.iter()),
                    _ => None,
                })
                .flatten()
                .collect(),
        ),
        _ => None,
    }
}

/// Collects tensors; nested dicts get dotted keys. A checkpoint wrapping its weights in
/// `state_dict` / `model_state_dict` / `model` is unwrapped first.
fn collect(root: &Value) -> Result<Vec<(String, TensorSpec)>> {
    let mut root = root;
    if let Some(items) = dict_items(root) {
        for wrapper in ["state_dict", "model_state_dict", "model"] {
            if let Some((_, v)) = items.iter().find(|(k, _)| k.as_str() == Some(wrapper)) {
                if dict_items(v).is_some() {
                    root = v;
                    break;
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    if out.is_empty() {
        return err("checkpoint contains no tensors");
    }
    Ok(out)
}

fn walk(v: &Value, prefix: &str, out: &mut Vec<(String, TensorSpec)>) -> Result<()> {
    if let Some(spec) = tensor_spec(v)? {
        out.push((prefix.to_string(), spec));
    } else if let Some(items) = dict_items(v) {
        for (k, val) in items {
            let key = match k {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => continue,
            };
            let full = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            walk(val, &full, out)?;
        }
    }
    Ok(())
}

/// Gathers a strided view into a dense row-major f32 tensor. Sizes,
/// strides and offset come from the file: the arithmetic is checked, and a
/// view may not hold more elements than its storage (no saved weight
/// repeats elements with stride 0), so a small file cannot ask for a huge
/// allocation.
fn materialise(name: &str, spec: &TensorSpec, storage: &[u8]) -> Result<HostTensor> {
    let es = spec.dtype.size();
    if spec.size.len() != spec.stride.len() {
        return err(format!("{name}: size/stride rank differ"));
    }
    let overflow = || {
        ModelError::Torch(format!(
            "{name}: size {:?}, stride {:?} and offset {} overflow",
            spec.size, spec.stride, spec.offset
        ))
    };
    let numel = spec
        .size
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(s))
        .ok_or_else(overflow)?;
    let max_index = spec
        .size
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |at, (s, st)| {
            at.checked_add(s.saturating_sub(1).checked_mul(*st)?)
        })
        .ok_or_else(overflow)?;
    let stored = storage.len() / es;
    if numel > 0 && max_index >= stored {
        return err(format!(
            "{name}: view exceeds its storage ({} bytes)",
            storage.len()
        ));
    }
    if numel > stored {
        return err(format!(
            "{name}: {numel} elements from a storage of {stored}: views that repeat elements are not supported"
        ));
    }
    let mut data = Vec::with_capacity(numel);
    let mut idx = vec![0usize; spec.size.len()];
    for _ in 0..numel {
        let off = spec.offset
            + idx
                .iter()
                .zip(&spec.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        data.push(spec.dtype.read(&storage[off * es..off * es + es]));
        // Row-major odometer increment.
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < spec.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    HostTensor::new(spec.size.clone(), data)
}

/// Loads every tensor of a torch checkpoint (either format) as f32.
pub fn load_torch(buf: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    if is_zip(buf) {
        load_zip(buf)
    } else {
        load_legacy(buf)
    }
}

fn build<'a>(
    specs: Vec<(String, TensorSpec)>,
    storage: impl Fn(&TensorSpec) -> Result<&'a [u8]>,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for (name, spec) in specs {
        let t = materialise(&name, &spec, storage(&spec)?)?;
        if out.insert(name.clone(), t).is_some() {
            return err(format!("duplicate key {name}"));
        }
    }
    Ok(out)
}

fn load_zip(buf: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    let zip = ZipArchive::parse(buf)?;
    let Some(pkl) = zip.entries.iter().find(|e| e.name.ends_with("data.pkl")) else {
        return err("zip checkpoint without data.pkl");
    };
    let prefix = pkl.name.trim_end_matches("data.pkl").to_string();
    let (root, _) = unpickle(zip.data(pkl)?)?;
    let specs = collect(&root)?;
    build(specs, |spec| {
        let name = format!("{prefix}data/{}", spec.storage);
        match zip.find(&name) {
            Some(e) => zip.data(e),
            None => err(format!("storage {name} missing from archive")),
        }
    })
}

fn load_legacy(buf: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Value> {
        let (v, n) =
            unpickle(&buf[pos..]).map_err(|e| ModelError::Torch(format!("{what}: {e}")))?;
        pos += n;
        Ok(v)
    };
    if next("magic number")?.as_str() != Some(LEGACY_MAGIC) {
        return err("not a torch checkpoint (bad magic number)");
    }
    if next("protocol version")?.as_int() != Some(1001) {
        return err("unsupported legacy protocol version");
    }
    let _sys_info = next("sys_info")?;
    let root = next("state dict")?;
    let keys = next("storage keys")?;
    let Some(keys) = keys.as_seq() else {
        return err("storage key list is not a list");
    };
    let specs = collect(&root)?;
    let dtypes: HashMap<&str, DType> = specs
        .iter()
        .map(|(_, s)| (s.storage.as_str(), s.dtype))
        .collect();
    // Storages follow in key order, each as i64 element count + raw bytes.
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for k in keys {
        let Some(key) = k.as_str() else {
            return err("storage key is not a string");
        };
        let Some(&dtype) = dtypes.get(key) else {
            return err(format!("storage {key} is not referenced by any tensor"));
        };
        let n = buf
            .get(pos..pos + 8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .map_or_else(|| err("truncated storage header"), Ok)?;
        let bytes = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .map_or_else(|| err(format!("bad element count {n}")), Ok)?;
        let data = (pos + 8)
            .checked_add(bytes)
            .and_then(|end| buf.get(pos + 8..end))
            .map_or_else(|| err(format!("storage {key} truncated")), Ok)?;
        storages.insert(key.to_string(), data);
        pos += 8 + bytes;
    }
    build(specs, |spec| {
        storages
            .get(&spec.storage)
            .copied()
            .map_or_else(|| err(format!("storage {} missing", spec.storage)), Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::zip::write_stored;

    /// A zip checkpoint holding one float tensor `w` over a 4-element
    /// storage, viewed with this size and stride.
    fn checkpoint(size: &[u64], stride: &[u64]) -> Vec<u8> {
        let mut p = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00".to_vec();
        for dims in [size, stride] {
            p.push(b'(');
            for d in dims {
                p.extend([0x8a, 8]); // LONG1, 8 bytes
                p.extend(d.to_le_bytes());
            }
            p.push(b't');
        }
        p.extend(b"\x89ccollections\nOrderedDict\n)RtRs.");
        let storage: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        write_stored(&[("archive/data.pkl", &p), ("archive/data/0", &storage)])
    }

    /// Sizes and strides are the file's: a product past usize and a
    /// stride-0 view of 2^40 elements over 4 were a debug-build overflow
    /// panic and an allocation of 4 TiB; now both are errors.
    #[test]
    fn absurd_sizes_and_strides_are_errors() {
        let t = load_torch(&checkpoint(&[2, 2], &[1, 2])).unwrap();
        assert_eq!(
            t["w"].data,
            [1.0, 3.0, 2.0, 4.0],
            "the helper's pickle is valid"
        );
        let e = load_torch(&checkpoint(&[1 << 40, 1 << 40], &[1, 1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflow"), "{e}");
        let e = load_torch(&checkpoint(&[5], &[1 << 62]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflow"), "{e}");
        let e = load_torch(&checkpoint(&[1 << 40], &[0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("repeat elements"), "{e}");
        let e = load_torch(&checkpoint(&[5], &[1])).unwrap_err().to_string();
        assert!(e.contains("exceeds its storage"), "{e}");
    }
}
