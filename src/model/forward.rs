//! The model's forward composition, shared by every backend: backbone features,
//! then (in f32) the CGD head. Export writes it as ONNX; the trainer runs it on tch.
use crate::model::arch::Arch;
use crate::model::error::Result;
use crate::model::head::HeadConfig;
use crate::model::ops::Ops;
use crate::model::vars::VarPath;

/// Prefix of the CGD head's parameters in every checkpoint.
pub const HEAD_PREFIX: &str = "head";

pub struct Forward<T> {
    /// The backbone's final feature map [N, C, h, w], in full precision.
    pub features: T,
    /// The L2-normalised descriptor [N, D].
    pub descriptor: T,
}

pub fn forward<O: Ops>(
    ops: &mut O,
    arch: Arch,
    head: &HeadConfig,
    x: &O::Tensor,
) -> Result<Forward<O::Tensor>> {
    let root = VarPath::root();
    let feats = arch.features(ops, x, &root)?;
    let features = ops.full_precision(&feats)?;
    let descriptor = head.build(ops, &features, &root.pp(HEAD_PREFIX))?;
    Ok(Forward {
        features,
        descriptor,
    })
}
