//! Summary of an exported .onnx: metadata, I/O signatures and parameter count.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::model::error::{ModelError, Result};
use crate::model::graph::decode;
use crate::model::onnx_pb::{
    tensor_proto::DataType, tensor_shape_proto::dimension, type_proto, ValueInfoProto,
};

#[derive(Debug, Clone, PartialEq)]
pub struct IoInfo {
    pub name: String,
    /// ONNX element type name, e.g. "FLOAT", "FLOAT16".
    pub elem_type: String,
    /// Fixed sizes as numbers, symbolic ones by name ("N").
    pub dims: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub metadata: BTreeMap<String, String>,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    /// Total initializer elements.
    pub parameter_count: usize,
    pub opset: i64,
    pub file_bytes: u64,
}

fn io_info(v: &ValueInfoProto) -> IoInfo {
    let (mut elem_type, mut dims) = (String::from("?"), Vec::new());
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    {
        elem_type = t
            .elem_type
            .and_then(|e| DataType::try_from(e).ok())
            .map_or_else(|| "?".into(), |d| d.as_str_name().to_string());
        dims = t
            .shape
            .iter()
            .flat_map(|s| &s.dim)
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) => v.to_string(),
                Some(dimension::Value::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
    }
    IoInfo {
        name: v.name.clone().unwrap_or_default(),
        elem_type,
        dims,
    }
}

pub fn inspect(path: &Path) -> Result<ModelInfo> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let model = decode(&bytes)?;
    let graph = model.graph.unwrap_or_default();
    Ok(ModelInfo {
        metadata: model
            .metadata_props
            .into_iter()
            .map(|e| (e.key.unwrap_or_default(), e.value.unwrap_or_default()))
            .collect(),
        inputs: graph.input.iter().map(io_info).collect(),
        outputs: graph.output.iter().map(io_info).collect(),
        parameter_count: graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
            .sum(),
        opset: model
            .opset_import
            .iter()
            .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
            .and_then(|o| o.version)
            .unwrap_or(0),
        file_bytes: bytes.len() as u64,
    })
}

impl fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "opset {}, {} parameters, {} bytes",
            self.opset, self.parameter_count, self.file_bytes
        )?;
        for (kind, list) in [("input", &self.inputs), ("output", &self.outputs)] {
            for io in list {
                writeln!(
                    f,
                    "{kind} {}: {} [{}]",
                    io.name,
                    io.elem_type,
                    io.dims.join(", ")
                )?;
            }
        }
        for (k, v) in &self.metadata {
            writeln!(f, "{k} = {v}")?;
        }
        Ok(())
    }
}
