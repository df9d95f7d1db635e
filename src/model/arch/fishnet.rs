//! FishNet-99 (Sun et al., NeurIPS 2018) in the key layout of the original release
//! (github kevin-ssy/FishNet, `models/fishnet.py` + `fish_block.py`): stem `conv{1,2,3}.{0,1}`,
//! then `fish.fish.{stage}.{part}` for the 10 stages: tail (0-2, down), body (3 score/SE
//! bridge, 4-6 up), head (7-9, down), each concatenating a "transferred" earlier feature.
//! Blocks are pre-activation bottlenecks: `bn1,conv1,bn2,conv2,bn3,conv3[,shortcut.{0,2}]`.
use crate::model::error::{ModelError, Result};
use crate::model::ops::{Activation, Conv2d, Ops, Padding, Pool2d};
use crate::model::vars::VarPath;

const BN_EPS: f32 = 1e-5;
/// Stage widths after the 64-ch stem (`network_planes[1:]` of `fishnet99`).
const PLANES: [usize; 10] = [128, 256, 512, 512, 512, 384, 256, 320, 832, 1600];
const RES_BLOCKS: [usize; 10] = [2, 2, 6, 2, 1, 1, 1, 1, 2, 2];
/// Transfer blocks of stages 4..9.
const TRANS_BLOCKS: [usize; 6] = [1, 1, 1, 1, 1, 4];
/// Which earlier feature (index into the stage-input list, 0 = stem) stages 4..9 concatenate.
const TRANS_MAP: [usize; 6] = [2, 1, 0, 6, 5, 4];
const STEM: usize = 64;
const NUM_DOWN: usize = 3;
const NUM_UP: usize = 3;

pub struct FishNet {
    pub num_classes: usize,
}

/// Every intermediate map of a forward pass, for shape checks.
pub struct FishFeatures<T> {
    /// `all_feat` of the reference: [stem, stage0 out, ..., stage9 out] (11 maps).
    pub stages: Vec<T>,
    /// The final score map before pooling (`fish.fish.9.3` output): the backbone features.
    pub features: T,
}

impl FishNet {
    pub fn fishnet99() -> Self {
        Self { num_classes: 1000 }
    }

    fn bn_relu<O: Ops>(ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        let y = ops.batch_norm(x, vp, BN_EPS)?;
        ops.activation(&y, Activation::Relu)
    }

    /// `fish_block.Bottleneck`: pre-activation, width `out/4`; "UP" mode (k > 1 or
    /// `up`) replaces the shortcut by summing each run of k input channels.
    fn block<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        out: usize,
        up: Option<usize>,
        dilation: usize,
    ) -> Result<O::Tensor> {
        let mid = out / 4;
        let mut y = Self::bn_relu(ops, x, &vp.pp("bn1"))?;
        y = ops.conv2d(&y, &vp.pp("conv1"), &Conv2d::new(mid, 1))?;
        y = Self::bn_relu(ops, &y, &vp.pp("bn2"))?;
        let c2 = Conv2d::new(mid, 3).dilation(dilation);
        y = ops.conv2d(&y, &vp.pp("conv2"), &c2)?;
        y = Self::bn_relu(ops, &y, &vp.pp("bn3"))?;
        y = ops.conv2d(&y, &vp.pp("conv3"), &Conv2d::new(out, 1))?;
        let shortcut = match up {
            Some(k) => ops.sum_channel_groups(x, k)?,
            None if ops.channels(x) != out => {
                let s = vp.pp("shortcut");
                let r = Self::bn_relu(ops, x, &s.pp(0))?;
                ops.conv2d(&r, &s.pp(2), &Conv2d::new(out, 1))?
            }
            None => x.clone(),
        };
        ops.add(&y, &shortcut)
    }

    /// `_make_residual_block`: first block may change width (or be an UP block), the rest
    /// keep it and use the stage's dilation.
    fn res_blocks<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        out: usize,
        n: usize,
        up: Option<usize>,
        dilation: usize,
    ) -> Result<O::Tensor> {
        let first_dilation = if up.is_some() { dilation } else { 1 };
        let mut y = Self::block(ops, x, &vp.pp(0), out, up, first_dilation)?;
        for i in 1..n {
            y = Self::block(ops, &y, &vp.pp(i), out, None, dilation)?;
        }
        Ok(y)
    }

    /// `_make_score`: BN-ReLU-1x1(c -> c/2)-BN-ReLU at `vp` (`.0`, `.2`, `.3`).
    fn score_trans<O: Ops>(ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        let half = ops.channels(x) / 2;
        let y = Self::bn_relu(ops, x, &vp.pp(0))?;
        let y = ops.conv2d(&y, &vp.pp(2), &Conv2d::new(half, 1))?;
        Self::bn_relu(ops, &y, &vp.pp(3))
    }

    /// All stage outputs and the final score map.
    pub fn forward_all<O: Ops>(
        &self,
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
    ) -> Result<FishFeatures<O::Tensor>> {
        let mut y = x.clone();
        for (i, (name, c)) in [("conv1", STEM / 2), ("conv2", STEM / 2), ("conv3", STEM)]
            .into_iter()
            .enumerate()
        {
            let s = vp.pp(name);
            let cfg = Conv2d::new(c, 3).stride(if i == 0 { 2 } else { 1 });
            y = ops.conv2d(&y, &s.pp(0), &cfg)?;
            y = Self::bn_relu(ops, &y, &s.pp(1))?;
        }
        y = ops.pool2d(&y, Pool2d::Max, 3, 2, Padding::Explicit(1))?;
        let fish = vp.pp("fish").pp("fish");
        let mut feats = vec![y];
        for (i, &planes) in PLANES.iter().enumerate() {
            let sp = fish.pp(i);
            let x = feats[i].clone();
            let out = if i < NUM_DOWN {
                // Tail: residual blocks, 2x2 max-pool.
                let r = Self::res_blocks(ops, &x, &sp.pp(0), planes, RES_BLOCKS[i], None, 1)?;
                ops.pool2d(&r, Pool2d::Max, 2, 2, Padding::Explicit(0))?
            } else if i == NUM_DOWN {
                // Bridge: score (c -> c/2 -> 2c) feeds a residual block gated by an SE branch:
                // res(s) * att + att.
                let s = Self::score_trans(ops, &x, &sp.pp(0))?;
                let s = ops.conv2d(&s, &sp.pp(1), &Conv2d::new(2 * planes, 1).bias(true))?;
                // Raw conv output read by three BatchNorms: none may fold into the conv.
                let s = ops.shared(&s);
                let r = Self::res_blocks(ops, &s, &sp.pp(2), planes, RES_BLOCKS[i], None, 1)?;
                let se = sp.pp(3).pp(0);
                let a = Self::bn_relu(ops, &s, &se.pp(0))?;
                let a = ops.global_avg_pool_map(&a)?;
                let sq = Conv2d::new(planes / 16, 1).bias(true);
                let a = ops.conv2d(&a, &se.pp(3), &sq)?;
                let a = ops.activation(&a, Activation::Relu)?;
                let a = ops.conv2d(&a, &se.pp(5), &Conv2d::new(planes, 1).bias(true))?;
                let a = ops.activation(&a, Activation::Sigmoid)?;
                let g = ops.mul(&r, &a)?;
                ops.add(&g, &a)?
            } else {
                let j = i - NUM_DOWN - 1;
                let branch = &feats[TRANS_MAP[j]];
                let tc = ops.channels(branch);
                let t = Self::res_blocks(ops, branch, &sp.pp(1), tc, TRANS_BLOCKS[j], None, 1)?;
                let trunk = if i <= NUM_DOWN + NUM_UP {
                    // Body: UP blocks sum channel groups (k = in/out), dilation 2^(i-4).
                    let k = ops.channels(&x) / planes;
                    let d = 1 << j;
                    let r =
                        Self::res_blocks(ops, &x, &sp.pp(0), planes, RES_BLOCKS[i], Some(k), d)?;
                    ops.upsample_nearest(&r, 2)?
                } else {
                    // Head: plain residual blocks, 2x2 max-pool.
                    let r = Self::res_blocks(ops, &x, &sp.pp(0), planes, RES_BLOCKS[i], None, 1)?;
                    ops.pool2d(&r, Pool2d::Max, 2, 2, Padding::Explicit(0))?
                };
                ops.concat(&[trunk, t])?
            };
            feats.push(out);
        }
        let last = feats
            .last()
            .ok_or_else(|| ModelError::Graph("fishnet without stages".into()))?;
        let features = Self::score_trans(ops, last, &fish.pp(PLANES.len() - 1).pp(3))?;
        Ok(FishFeatures {
            stages: feats,
            features,
        })
    }

    /// Final score map before pooling: [N, 1056, H/32, W/32].
    pub fn features<O: Ops>(&self, ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        Ok(self.forward_all(ops, x, vp)?.features)
    }

    /// `fish.fish.9.4`: average pool, then a 1x1 conv with bias.
    pub fn classifier<O: Ops>(
        &self,
        ops: &mut O,
        pooled: &O::Tensor,
        vp: &VarPath,
    ) -> Result<O::Tensor> {
        let fc = vp.pp("fish").pp("fish").pp(PLANES.len() - 1).pp(4).pp(1);
        ops.linear_conv1x1(pooled, &fc, self.num_classes, true)
    }
}
