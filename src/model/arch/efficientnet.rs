//! EfficientNet-Lite (lukemelas EfficientNet-PyTorch key layout, TF semantics):
//! TF-SAME padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excite, fixed 32-ch stem and
//! 1280-ch head. Keys: `_conv_stem`, `_bn0`, `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,
//! _bn1,_project_conv,_bn2}`, `_conv_head`, `_bn1`, `_fc`.
use crate::model::error::Result;
use crate::model::ops::{Activation, Conv2d, Ops, Padding};
use crate::model::vars::VarPath;

const BN_EPS: f32 = 1e-3;
const ACT: Activation = Activation::Relu6;

/// One stage: `repeats` MBConv blocks; only the first has the stage's stride / input width.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub in_ch: usize,
    pub out_ch: usize,
}

pub struct EfficientNetLite {
    pub stages: Vec<Stage>,
    pub stem: usize,
    pub head: usize,
    pub num_classes: usize,
}

const fn st(
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    in_ch: usize,
    out_ch: usize,
) -> Stage {
    Stage {
        repeats,
        kernel,
        stride,
        expand,
        in_ch,
        out_ch,
    }
}

impl EfficientNetLite {
    /// EfficientNet-Lite0: width 1.0, depth 1.0, 224 px; 16 blocks.
    pub fn lite0() -> Self {
        Self {
            stages: vec![
                st(1, 3, 1, 1, 32, 16),
                st(2, 3, 2, 6, 16, 24),
                st(2, 5, 2, 6, 24, 40),
                st(3, 3, 2, 6, 40, 80),
                st(3, 5, 1, 6, 80, 112),
                st(4, 5, 2, 6, 112, 192),
                st(1, 3, 1, 6, 192, 320),
            ],
            stem: 32,
            head: 1280,
            num_classes: 1000,
        }
    }

    fn conv_bn_act<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        conv: &VarPath,
        bn: &VarPath,
        cfg: Conv2d,
        act: Activation,
    ) -> Result<O::Tensor> {
        let y = ops.conv2d(x, conv, &cfg.padding(Padding::TfSame))?;
        let y = ops.batch_norm(&y, bn, BN_EPS)?;
        ops.activation(&y, act)
    }

    fn mbconv<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        s: &Stage,
        in_ch: usize,
        stride: usize,
        depth: f32,
    ) -> Result<O::Tensor> {
        let mid = in_ch * s.expand;
        let mut y = x.clone();
        if s.expand != 1 {
            y = Self::conv_bn_act(
                ops,
                &y,
                &vp.pp("_expand_conv"),
                &vp.pp("_bn0"),
                Conv2d::new(mid, 1),
                ACT,
            )?;
        }
        let dw = Conv2d::new(mid, s.kernel).stride(stride).groups(mid);
        y = Self::conv_bn_act(ops, &y, &vp.pp("_depthwise_conv"), &vp.pp("_bn1"), dw, ACT)?;
        let proj = Conv2d::new(s.out_ch, 1);
        y = Self::conv_bn_act(
            ops,
            &y,
            &vp.pp("_project_conv"),
            &vp.pp("_bn2"),
            proj,
            Activation::Identity,
        )?;
        if stride == 1 && in_ch == s.out_ch {
            y = ops.drop_path(&y, depth)?;
            y = ops.add(&y, x)?;
        }
        Ok(y)
    }

    /// Feature map after `_conv_head`/`_bn1`/ReLU6: [N, 1280, H/32, W/32].
    pub fn features<O: Ops>(&self, ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        let stem = Conv2d::new(self.stem, 3).stride(2);
        let mut y = Self::conv_bn_act(ops, x, &vp.pp("_conv_stem"), &vp.pp("_bn0"), stem, ACT)?;
        let blocks = vp.pp("_blocks");
        let total: usize = self.stages.iter().map(|s| s.repeats).sum();
        let mut idx = 0;
        for s in &self.stages {
            for r in 0..s.repeats {
                let (in_ch, stride) = if r == 0 {
                    (s.in_ch, s.stride)
                } else {
                    (s.out_ch, 1)
                };
                let depth = idx as f32 / total as f32;
                y = Self::mbconv(ops, &y, &blocks.pp(idx), s, in_ch, stride, depth)?;
                idx += 1;
            }
        }
        let head = Conv2d::new(self.head, 1);
        Self::conv_bn_act(ops, &y, &vp.pp("_conv_head"), &vp.pp("_bn1"), head, ACT)
    }

    /// ImageNet logits from globally average-pooled features [N, 1280].
    pub fn classifier<O: Ops>(
        &self,
        ops: &mut O,
        pooled: &O::Tensor,
        vp: &VarPath,
    ) -> Result<O::Tensor> {
        ops.linear(pooled, &vp.pp("_fc"), self.num_classes, true)
    }
}
