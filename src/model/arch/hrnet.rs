//! HRNet-C (classification HRNet, Wang et al. TPAMI 2020) in timm key layout (`hrnet_w18`,
//! `hrnet_w30`): stem `conv1/bn1/conv2/bn2`, `layer1` (4 bottlenecks), `transition{1,2,3}`,
//! `stage{2,3,4}.M.{branches.B.K, fuse_layers.I.J}`, then the classification head
//! `incre_modules.I.0`, `downsamp_modules.I.{0,1}`, `final_layer.{0,1}` and `classifier`.
use crate::model::arch::resnet::ResNet;
use crate::model::error::{ModelError, Result};
use crate::model::ops::{Activation, Conv2d, Ops};
use crate::model::vars::VarPath;

const STEM: usize = 64;
/// Stage-1 bottleneck width (output 4x) and block counts.
const LAYER1_PLANES: usize = 64;
const BLOCKS: usize = 4;
/// Modules per stage 2, 3, 4 (branches 2, 3, 4).
const MODULES: [usize; 3] = [1, 4, 3];
/// Head bottleneck widths per resolution (outputs 128, 256, 512, 1024).
const HEAD_PLANES: [usize; 4] = [32, 64, 128, 256];
pub const NUM_FEATURES: usize = 2048;

pub struct HrNet {
    /// Branch-0 width (18 or 30); branch b has `width << b` channels.
    pub width: usize,
    pub num_classes: usize,
}

impl HrNet {
    pub fn w18() -> Self {
        Self {
            width: 18,
            num_classes: 1000,
        }
    }
    pub fn w30() -> Self {
        Self {
            width: 30,
            num_classes: 1000,
        }
    }

    fn conv_bn_relu<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        cfg: Conv2d,
        relu: bool,
    ) -> Result<O::Tensor> {
        let y = ResNet::conv_bn(ops, x, &vp.pp(0), &vp.pp(1), cfg)?;
        if relu {
            ops.activation(&y, Activation::Relu)
        } else {
            Ok(y)
        }
    }

    /// `_make_transition_layer`: keeps, re-widths (3x3) or adds branches; new branches come
    /// from the lowest-resolution input through stride-2 3x3 convs.
    fn transition<O: Ops>(
        ops: &mut O,
        ys: &[O::Tensor],
        cur: &[usize],
        vp: &VarPath,
    ) -> Result<Vec<O::Tensor>> {
        let last = ys
            .last()
            .ok_or_else(|| ModelError::Graph("hrnet transition without inputs".into()))?;
        let mut out = Vec::with_capacity(cur.len());
        for (i, &c) in cur.iter().enumerate() {
            let t = vp.pp(i);
            match ys.get(i) {
                Some(y) if ops.channels(y) == c => out.push(y.clone()),
                Some(_) => out.push(Self::conv_bn_relu(ops, last, &t, Conv2d::new(c, 3), true)?),
                None => {
                    let mut y = last.clone();
                    let steps = i + 1 - ys.len();
                    for j in 0..steps {
                        let oc = if j + 1 == steps { c } else { ops.channels(&y) };
                        let cfg = Conv2d::new(oc, 3).stride(2);
                        y = Self::conv_bn_relu(ops, &y, &t.pp(j), cfg, true)?;
                    }
                    out.push(y);
                }
            }
        }
        Ok(out)
    }

    /// `HighResolutionModule`: BasicBlock branches, then every output i sums all inputs
    /// brought to its resolution/width (1x1 + nearest upsample, or stride-2 3x3 chains), ReLU.
    fn module<O: Ops>(
        ops: &mut O,
        xs: &[O::Tensor],
        chans: &[usize],
        vp: &VarPath,
    ) -> Result<Vec<O::Tensor>> {
        let mut branches = Vec::with_capacity(xs.len());
        for (b, x) in xs.iter().enumerate() {
            let bp = vp.pp("branches").pp(b);
            let mut y = x.clone();
            for k in 0..BLOCKS {
                y = ResNet::basic_block(ops, &y, &bp.pp(k), chans[b], 1)?;
            }
            branches.push(y);
        }
        let mut out = Vec::with_capacity(xs.len());
        for i in 0..branches.len() {
            let fp = vp.pp("fuse_layers").pp(i);
            let mut sum: Option<O::Tensor> = None;
            for (j, xj) in branches.iter().enumerate() {
                let fj = fp.pp(j);
                let y = if j > i {
                    let pad0 = Conv2d::new(chans[i], 1);
                    let y = Self::conv_bn_relu(ops, xj, &fj, pad0, false)?;
                    ops.upsample_nearest(&y, 1 << (j - i))?
                } else if j == i {
                    xj.clone()
                } else {
                    let mut y = xj.clone();
                    for k in 0..i - j {
                        let last = k + 1 == i - j;
                        let oc = if last { chans[i] } else { chans[j] };
                        let cfg = Conv2d::new(oc, 3).stride(2);
                        y = Self::conv_bn_relu(ops, &y, &fj.pp(k), cfg, !last)?;
                    }
                    y
                };
                sum = Some(match sum {
                    None => y,
                    Some(s) => ops.add(&s, &y)?,
                });
            }
            let s = sum.ok_or_else(|| ModelError::Graph("hrnet fuse of nothing".into()))?;
            out.push(ops.activation(&s, Activation::Relu)?);
        }
        Ok(out)
    }

    /// Final feature map of timm `forward_features`: [N, 2048, H/32, W/32].
    pub fn features<O: Ops>(&self, ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        let stem = |c| Conv2d::new(c, 3).stride(2);
        let mut y = ResNet::conv_bn(ops, x, &vp.pp("conv1"), &vp.pp("bn1"), stem(STEM))?;
        y = ops.activation(&y, Activation::Relu)?;
        y = ResNet::conv_bn(ops, &y, &vp.pp("conv2"), &vp.pp("bn2"), stem(64))?;
        y = ops.activation(&y, Activation::Relu)?;
        for k in 0..BLOCKS {
            y = ResNet::bottleneck(ops, &y, &vp.pp("layer1").pp(k), LAYER1_PLANES, 1)?;
        }
        let mut ys = vec![y];
        for (s, &modules) in MODULES.iter().enumerate() {
            let chans: Vec<usize> = (0..s + 2).map(|b| self.width << b).collect();
            ys = Self::transition(ops, &ys, &chans, &vp.pp(format!("transition{}", s + 1)))?;
            let sp = vp.pp(format!("stage{}", s + 2));
            for m in 0..modules {
                ys = Self::module(ops, &ys, &chans, &sp.pp(m))?;
            }
        }
        // Classification head: widen each resolution, then stride-2 merge from high to low.
        let mut acc: Option<O::Tensor> = None;
        for (i, yi) in ys.iter().enumerate() {
            let inc = ResNet::bottleneck(
                ops,
                yi,
                &vp.pp("incre_modules").pp(i).pp(0),
                HEAD_PLANES[i],
                1,
            )?;
            acc = Some(match acc {
                None => inc,
                Some(a) => {
                    let out = HEAD_PLANES[i] * 4;
                    let cfg = Conv2d::new(out, 3).stride(2).bias(true);
                    let dp = vp.pp("downsamp_modules").pp(i - 1);
                    let d = Self::conv_bn_relu(ops, &a, &dp, cfg, true)?;
                    ops.add(&inc, &d)?
                }
            });
        }
        let acc = acc.ok_or_else(|| ModelError::Graph("hrnet without branches".into()))?;
        let cfg = Conv2d::new(NUM_FEATURES, 1).bias(true);
        Self::conv_bn_relu(ops, &acc, &vp.pp("final_layer"), cfg, true)
    }

    pub fn classifier<O: Ops>(
        &self,
        ops: &mut O,
        pooled: &O::Tensor,
        vp: &VarPath,
    ) -> Result<O::Tensor> {
        ops.linear(pooled, &vp.pp("classifier"), self.num_classes, true)
    }
}
