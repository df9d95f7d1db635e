//! ResNet-50/101 (bottleneck, stride on the 3x3 conv) in timm/torchvision key layout:
//! `conv1`, `bn1`, `layerL.B.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}`, `fc`.
use crate::model::error::Result;
use crate::model::ops::{Activation, Conv2d, Ops, Padding, Pool2d};
use crate::model::vars::VarPath;

const BN_EPS: f32 = 1e-5;
const EXPANSION: usize = 4;

pub struct ResNet {
    pub layers: [usize; 4],
    pub num_classes: usize,
}

impl ResNet {
    pub fn resnet50() -> Self {
        Self {
            layers: [3, 4, 6, 3],
            num_classes: 1000,
        }
    }
    pub fn resnet101() -> Self {
        Self {
            layers: [3, 4, 23, 3],
            num_classes: 1000,
        }
    }

    pub(crate) fn conv_bn<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        conv: &VarPath,
        bn: &VarPath,
        cfg: Conv2d,
    ) -> Result<O::Tensor> {
        let y = ops.conv2d(x, conv, &cfg)?;
        ops.batch_norm(&y, bn, BN_EPS)
    }

    /// timm/torchvision `Bottleneck` (expansion 4): 1x1 -> 3x3 (stride) -> 1x1, projection
    /// shortcut `downsample.{0,1}` when the stride or width changes. Also HRNet's stage-1 and
    /// head block.
    pub(crate) fn bottleneck<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        width: usize,
        stride: usize,
    ) -> Result<O::Tensor> {
        let out = width * EXPANSION;
        let mut y = Self::conv_bn(
            ops,
            x,
            &vp.pp("conv1"),
            &vp.pp("bn1"),
            Conv2d::new(width, 1),
        )?;
        y = ops.activation(&y, Activation::Relu)?;
        y = Self::conv_bn(
            ops,
            &y,
            &vp.pp("conv2"),
            &vp.pp("bn2"),
            Conv2d::new(width, 3).stride(stride),
        )?;
        y = ops.activation(&y, Activation::Relu)?;
        y = Self::conv_bn(ops, &y, &vp.pp("conv3"), &vp.pp("bn3"), Conv2d::new(out, 1))?;
        let shortcut = if stride != 1 || ops.channels(x) != out {
            let ds = vp.pp("downsample");
            Self::conv_bn(
                ops,
                x,
                &ds.pp(0),
                &ds.pp(1),
                Conv2d::new(out, 1)
                    .stride(stride)
                    .padding(Padding::Explicit(0)),
            )?
        } else {
            x.clone()
        };
        let y = ops.add(&y, &shortcut)?;
        ops.activation(&y, Activation::Relu)
    }

    /// timm `BasicBlock` (expansion 1): two 3x3 convs, identity or `downsample` shortcut.
    pub(crate) fn basic_block<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        out: usize,
        stride: usize,
    ) -> Result<O::Tensor> {
        let c1 = Conv2d::new(out, 3).stride(stride);
        let mut y = Self::conv_bn(ops, x, &vp.pp("conv1"), &vp.pp("bn1"), c1)?;
        y = ops.activation(&y, Activation::Relu)?;
        y = Self::conv_bn(ops, &y, &vp.pp("conv2"), &vp.pp("bn2"), Conv2d::new(out, 3))?;
        let shortcut = if stride != 1 || ops.channels(x) != out {
            let ds = vp.pp("downsample");
            let c = Conv2d::new(out, 1)
                .stride(stride)
                .padding(Padding::Explicit(0));
            Self::conv_bn(ops, x, &ds.pp(0), &ds.pp(1), c)?
        } else {
            x.clone()
        };
        let y = ops.add(&y, &shortcut)?;
        ops.activation(&y, Activation::Relu)
    }

    /// Feature map [N, 2048, H/32, W/32].
    pub fn features<O: Ops>(&self, ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        let mut y = Self::conv_bn(
            ops,
            x,
            &vp.pp("conv1"),
            &vp.pp("bn1"),
            Conv2d::new(64, 7).stride(2),
        )?;
        y = ops.activation(&y, Activation::Relu)?;
        y = ops.pool2d(&y, Pool2d::Max, 3, 2, Padding::Explicit(1))?;
        for (i, &blocks) in self.layers.iter().enumerate() {
            let layer = vp.pp(format!("layer{}", i + 1));
            let width = 64 << i;
            for b in 0..blocks {
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                y = Self::bottleneck(ops, &y, &layer.pp(b), width, stride)?;
            }
        }
        Ok(y)
    }

    pub fn classifier<O: Ops>(
        &self,
        ops: &mut O,
        pooled: &O::Tensor,
        vp: &VarPath,
    ) -> Result<O::Tensor> {
        ops.linear(pooled, &vp.pp("fc"), self.num_classes, true)
    }
}
