//! Small ONNX graph builder over the prost types: opset 17, IR version 8.
//! Initializers stay host-side f32 until `finish` so passes such as BatchNorm folding
//! can rewrite them; FP16 conversion happens at serialisation.
use std::collections::HashMap;

use half::f16;
use prost::Message;

use crate::model::error::{ModelError, Result};
use crate::model::onnx_pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::model::tensor::HostTensor;

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// Element type of a graph edge or initializer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
}

impl Elem {
    pub fn onnx(self) -> i32 {
        match self {
            Elem::F32 => DataType::Float as i32,
            Elem::F16 => DataType::Float16 as i32,
        }
    }
}

/// A graph input/output dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
}

struct Init {
    name: String,
    tensor: HostTensor,
    elem: Elem,
}

#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    inits: Vec<Init>,
    init_index: HashMap<String, usize>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    metadata: Vec<(String, String)>,
    counter: usize,
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

pub fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| crate::model::onnx_pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Symbolic(s) => dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem.onnx()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh, unique value name.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds an initializer; the name must be unique.
    pub fn initializer(&mut self, name: &str, tensor: HostTensor, elem: Elem) -> Result<String> {
        if self.init_index.contains_key(name) {
            return Err(ModelError::Graph(format!("duplicate initializer {name}")));
        }
        self.init_index.insert(name.to_string(), self.inits.len());
        self.inits.push(Init {
            name: name.to_string(),
            tensor,
            elem,
        });
        Ok(name.to_string())
    }

    /// Anonymous constant (e.g. Clip bounds, Pow exponents).
    pub fn constant(&mut self, hint: &str, tensor: HostTensor, elem: Elem) -> Result<String> {
        let name = self.fresh(hint);
        self.initializer(&name, tensor, elem)
    }

    pub fn initializer_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        let i = *self.init_index.get(name)?;
        Some(&mut self.inits[i].tensor)
    }

    /// Appends a node with one output; returns the output name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_into(op, inputs, &out, attrs);
        out
    }

    /// Appends a node writing to a caller-chosen output name.
    pub fn node_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) {
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(name),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Index of the node producing `output`, if any.
    pub fn producer(&self, output: &str) -> Option<usize> {
        self.nodes
            .iter()
            .rposition(|n| n.output.iter().any(|o| o == output))
    }

    pub fn node_inputs_mut(&mut self, idx: usize) -> Option<&mut Vec<String>> {
        self.nodes.get_mut(idx).map(|n| &mut n.input)
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) {
        self.inputs.push(value_info(name, elem, dims));
    }

    pub fn output(&mut self, name: &str, elem: Elem, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    pub fn metadata(&mut self, key: &str, value: impl Into<String>) {
        self.metadata.push((key.into(), value.into()));
    }

    /// Number of initializer elements (after any folding).
    pub fn initializer_elements(&self) -> usize {
        self.inits.iter().map(|i| i.tensor.numel()).sum()
    }

    pub fn finish(self, graph_name: &str) -> ModelProto {
        let initializer = self
            .inits
            .into_iter()
            .map(|i| {
                let raw: Vec<u8> = match i.elem {
                    Elem::F32 => i.tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    Elem::F16 => i
                        .tensor
                        .data
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                };
                TensorProto {
                    dims: i.tensor.shape.iter().map(|&d| d as i64).collect(),
                    data_type: Some(i.elem.onnx()),
                    name: Some(i.name),
                    raw_data: Some(raw),
                    ..Default::default()
                }
            })
            .collect();
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("lookalike".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(graph_name.into()),
                initializer,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k),
                    value: Some(v),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// Serialised protobuf bytes of a model.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    Ok(ModelProto::decode(bytes)?)
}
