//! Model toolchain: checkpoint import (safetensors / torch zip / torch legacy pickle),
//! architectures written once over the `Ops` trait, ONNX export with the CGD retrieval
//! head, and inspection of exported models.
pub mod arch;
pub mod bn_fold;
pub mod error;
pub mod export;
pub mod forward;
pub mod graph;
pub mod head;
pub mod inspect;
pub mod onnx_ops;
pub mod onnx_pb;
pub mod ops;
pub mod spec_ops;
pub mod synthetic;
pub mod tensor;
pub mod upcast;
pub mod vars;
pub mod weights;

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod tests;

pub use arch::Arch;
pub use error::{ModelError, Result, WeightReport};
pub use export::{
    build_model, export, ExportOptions, ExportedModel, ManifestEntry, Precision, ResizePolicy,
};
pub use inspect::{inspect, ModelInfo};
pub use weights::{load_weights, StateDict};
