//! The tensor-op vocabulary architectures are written in. Implemented by the ONNX
//! graph builder (`onnx_ops`), the parameter-spec collector (`spec_ops`) and, for
//! training, tch (`tch_ops`, feature `train`). Parameters are addressed by
//! `VarPath` so names equal PyTorch state_dict keys.
use crate::model::error::Result;
use crate::model::vars::VarPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Symmetric zero padding of this many pixels (PyTorch style).
    Explicit(usize),
    /// TensorFlow "SAME": output = ceil(input / stride); the odd extra pixel goes at the
    /// bottom/right, i.e. ONNX `auto_pad = SAME_UPPER`.
    TfSame,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub bias: bool,
    pub padding: Padding,
    /// Kernel dilation (FishNet's up-sampling blocks use 2, 4).
    pub dilation: usize,
}

impl Conv2d {
    pub fn new(out_channels: usize, kernel: usize) -> Self {
        Self {
            out_channels,
            kernel,
            stride: 1,
            groups: 1,
            bias: false,
            padding: Padding::Explicit(kernel / 2),
            dilation: 1,
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// Dilation `d` with the matching "same" padding `d * (kernel / 2)`.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = d;
        self.padding = Padding::Explicit(d * (self.kernel / 2));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
    Sigmoid,
    Silu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool2d {
    Max,
    /// PyTorch default semantics: padded zeros count in the average.
    Avg,
}

/// Global spatial pooling of [N,C,H,W] into [N,C].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GlobalPool {
    Avg,
    Max,
    /// Generalised mean, sign-preserving: sign(m)|m|^(1/p), m = mean(sign(x) max(|x|,eps)^p).
    Gem {
        p: f32,
        eps: f32,
    },
}

pub trait Ops {
    type Tensor: Clone;

    /// Channel count of an [N,C,...] tensor.
    fn channels(&self, x: &Self::Tensor) -> usize;
    /// Declares that `x` (e.g. a raw conv output) feeds several ops, so a later BatchNorm
    /// must not be folded into its producer. Backends that fold override this.
    fn shared(&mut self, x: &Self::Tensor) -> Self::Tensor {
        x.clone()
    }
    /// Weight `vp.weight` [out, in/groups, k, k], optional `vp.bias` [out].
    fn conv2d(&mut self, x: &Self::Tensor, vp: &VarPath, cfg: &Conv2d) -> Result<Self::Tensor>;
    /// Inference BatchNorm over dim 1 of [N,C] or [N,C,H,W]: `vp.{weight,bias,running_mean,running_var}`.
    fn batch_norm(&mut self, x: &Self::Tensor, vp: &VarPath, eps: f32) -> Result<Self::Tensor>;
    fn activation(&mut self, x: &Self::Tensor, act: Activation) -> Result<Self::Tensor>;
    fn add(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// Broadcasting product (e.g. squeeze-excite gates [N,C,1,1]).
    fn mul(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// Concatenate along dim 1.
    fn concat(&mut self, xs: &[Self::Tensor]) -> Result<Self::Tensor>;
    fn pool2d(
        &mut self,
        x: &Self::Tensor,
        kind: Pool2d,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<Self::Tensor>;
    fn global_pool(&mut self, x: &Self::Tensor, kind: GlobalPool) -> Result<Self::Tensor>;
    /// Spatial mean keeping the map layout: [N,C,H,W] -> [N,C,1,1] (squeeze-excite gates).
    fn global_avg_pool_map(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Sums each run of `k` adjacent channels: [N,C,H,W] -> [N,C/k,H,W]
    /// (FishNet's `squeeze_idt`, i.e. `x.view(n, c/k, k, h, w).sum(2)`).
    fn sum_channel_groups(&mut self, x: &Self::Tensor, k: usize) -> Result<Self::Tensor>;
    fn upsample_nearest(&mut self, x: &Self::Tensor, scale: usize) -> Result<Self::Tensor>;
    /// `vp.weight` [out, in] (PyTorch layout), optional `vp.bias` [out], on [N,in].
    fn linear(
        &mut self,
        x: &Self::Tensor,
        vp: &VarPath,
        out: usize,
        bias: bool,
    ) -> Result<Self::Tensor>;
    /// Like `linear`, but the weight is stored as a 1x1 convolution `[out, in, 1, 1]`
    /// (classifiers written as `nn.Conv2d(c, classes, 1)`, e.g. timm DLA, FishNet).
    fn linear_conv1x1(
        &mut self,
        x: &Self::Tensor,
        vp: &VarPath,
        out: usize,
        bias: bool,
    ) -> Result<Self::Tensor>;
    /// x / max(||x||_2, eps) along dim 1 of [N,D].
    fn l2_normalize(&mut self, x: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// Stochastic depth on a residual branch: during training a backend drops whole
    /// samples with a probability growing linearly with `depth` (the block's position in
    /// [0, 1)) and rescales the rest. Inference backends: identity.
    fn drop_path(&mut self, x: &Self::Tensor, _depth: f32) -> Result<Self::Tensor> {
        Ok(x.clone())
    }
    /// Everything computed from the result runs in f32 (a no-op for f32 backends);
    /// used so the retrieval head of an FP16 export cannot overflow.
    fn full_precision(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;
}
