//! FP16 -> FP32 rewrite of an ONNX model, applied in memory when a model
//! stored in FP16 runs on the CPU provider: ORT's CPU kernels are mostly
//! FP32, so it would wrap every FP16 op in casts and run about 2x slower.

use half::f16;
use prost::Message;

use super::onnx_pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, GraphProto, ModelProto,
    NodeProto, TensorProto, ValueInfoProto,
};

const F16: i32 = DataType::Float16 as i32;
const F32: i32 = DataType::Float as i32;

#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("FP16 tensor {name:?} has {got} bytes of raw data, expected an even count")]
    OddRawData { name: String, got: usize },
}

/// Whether any initializer is stored as FP16.
pub fn has_fp16_weights(model: &ModelProto) -> bool {
    model
        .graph
        .as_ref()
        .is_some_and(|g| g.initializer.iter().any(|t| t.data_type == Some(F16)))
}

/// Decodes `bytes`; if it holds FP16 weights, rewrites every FP16 tensor,
/// type and cast target to FP32 and returns the re-encoded model.
pub fn upcast_if_fp16(bytes: &[u8]) -> Result<Option<Vec<u8>>, UpcastError> {
    let mut model = ModelProto::decode(bytes)?;
    if !has_fp16_weights(&model) {
        return Ok(None);
    }
    if let Some(g) = model.graph.as_mut() {
        upcast_graph(g)?;
    }
    Ok(Some(model.encode_to_vec()))
}

fn upcast_graph(g: &mut GraphProto) -> Result<(), UpcastError> {
    for t in &mut g.initializer {
        upcast_tensor(t)?;
    }
    for v in g
        .input
        .iter_mut()
        .chain(&mut g.output)
        .chain(&mut g.value_info)
    {
        upcast_value_info(v);
    }
    for n in &mut g.node {
        upcast_node(n)?;
    }
    Ok(())
}

fn upcast_value_info(v: &mut ValueInfoProto) {
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        if t.elem_type == Some(F16) {
            t.elem_type = Some(F32);
        }
    }
}

fn upcast_node(n: &mut NodeProto) -> Result<(), UpcastError> {
    let is_cast = n.op_type.as_deref() == Some("Cast");
    for a in &mut n.attribute {
        if is_cast && a.name.as_deref() == Some("to") && a.i == Some(F16 as i64) {
            a.i = Some(F32 as i64);
        }
        if a.r#type == Some(AttributeType::Tensor as i32) {
            if let Some(t) = a.t.as_mut() {
                upcast_tensor(t)?;
            }
        }
        for t in &mut a.tensors {
            upcast_tensor(t)?;
        }
        if let Some(g) = a.g.as_mut() {
            upcast_graph(g)?;
        }
        for g in &mut a.graphs {
            upcast_graph(g)?;
        }
    }
    Ok(())
}

fn upcast_tensor(t: &mut TensorProto) -> Result<(), UpcastError> {
    if t.data_type != Some(F16) {
        return Ok(());
    }
    // FP16 values live either packed in raw_data or one per int32_data slot.
    let raw = t.raw_data.take().unwrap_or_default();
    let values: Vec<f32> = if !raw.is_empty() {
        if !raw.len().is_multiple_of(2) {
            return Err(UpcastError::OddRawData {
                name: t.name.clone().unwrap_or_default(),
                got: raw.len(),
            });
        }
        raw.chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    } else {
        t.int32_data
            .iter()
            .map(|&b| f16::from_bits(b as u16).to_f32())
            .collect()
    };
    t.int32_data.clear();
    t.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    t.data_type = Some(F32);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx_pb::AttributeProto;

    fn f16_tensor(values: &[f32], raw: bool) -> TensorProto {
        let bits: Vec<u16> = values.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
        TensorProto {
            name: Some("w".into()),
            data_type: Some(F16),
            dims: vec![values.len() as i64],
            raw_data: raw.then(|| bits.iter().flat_map(|b| b.to_le_bytes()).collect()),
            int32_data: if raw {
                vec![]
            } else {
                bits.iter().map(|b| *b as i32).collect()
            },
            ..Default::default()
        }
    }

    #[test]
    fn converts_both_fp16_storage_forms_and_cast_targets() {
        for raw in [true, false] {
            let cast = NodeProto {
                op_type: Some("Cast".into()),
                attribute: vec![AttributeProto {
                    name: Some("to".into()),
                    i: Some(F16 as i64),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let model = ModelProto {
                graph: Some(GraphProto {
                    initializer: vec![f16_tensor(&[1.5, -2.0, 0.25], raw)],
                    node: vec![cast],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let out = upcast_if_fp16(&model.encode_to_vec())
                .unwrap()
                .expect("had fp16 weights");
            let g = ModelProto::decode(out.as_slice()).unwrap().graph.unwrap();
            let t = &g.initializer[0];
            assert_eq!(t.data_type, Some(F32));
            let vals: Vec<f32> = t
                .raw_data
                .as_deref()
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(vals, vec![1.5, -2.0, 0.25]);
            assert_eq!(g.node[0].attribute[0].i, Some(F32 as i64));
        }
    }

    #[test]
    fn fp32_model_is_left_alone() {
        let model = ModelProto {
            graph: Some(GraphProto::default()),
            ..Default::default()
        };
        assert!(upcast_if_fp16(&model.encode_to_vec()).unwrap().is_none());
    }
}
