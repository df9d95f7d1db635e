//! DLA-X-102 (Deep Layer Aggregation, Yu et al. CVPR 2018) in timm key layout (`dla102x`):
//! `base_layer.{0,1}`, `level0/level1.{0,1}` conv levels, then `level2..level5` as nested
//! `DlaTree`s (`tree1`, `tree2`, `root.{conv,bn}`, `project.{0,1}`) of ResNeXt bottlenecks
//! (cardinality 32, base width 4, expansion 2), and a 1x1-conv classifier `fc`.
use crate::model::arch::resnet::ResNet;
use crate::model::error::Result;
use crate::model::ops::{Activation, Conv2d, Ops, Padding, Pool2d};
use crate::model::vars::VarPath;

const EXPANSION: usize = 2;

pub struct Dla {
    /// Tree depth of level0..level5 (level0/1 count plain 3x3 convs).
    pub levels: [usize; 6],
    pub channels: [usize; 6],
    pub cardinality: usize,
    pub base_width: usize,
    /// Root adds its first child (timm `shortcut_root`).
    pub root_shortcut: bool,
    pub num_classes: usize,
}

impl Dla {
    pub fn dla102x() -> Self {
        Self {
            levels: [1, 1, 1, 3, 4, 1],
            channels: [16, 32, 128, 256, 512, 1024],
            cardinality: 32,
            base_width: 4,
            root_shortcut: true,
            num_classes: 1000,
        }
    }

    fn conv_bn_relu<O: Ops>(
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        i: usize,
        cfg: Conv2d,
    ) -> Result<O::Tensor> {
        let y = ResNet::conv_bn(ops, x, &vp.pp(i), &vp.pp(i + 1), cfg)?;
        ops.activation(&y, Activation::Relu)
    }

    /// timm `DlaBottleneck`: grouped 3x3 in the middle, caller-supplied shortcut.
    fn bottleneck<O: Ops>(
        &self,
        ops: &mut O,
        x: &O::Tensor,
        shortcut: &O::Tensor,
        vp: &VarPath,
        out: usize,
        stride: usize,
    ) -> Result<O::Tensor> {
        let mid = out * self.base_width / 64 * self.cardinality / EXPANSION;
        let bn = |n: &str| vp.pp(n);
        let mut y = ResNet::conv_bn(ops, x, &bn("conv1"), &bn("bn1"), Conv2d::new(mid, 1))?;
        y = ops.activation(&y, Activation::Relu)?;
        let c2 = Conv2d::new(mid, 3).stride(stride).groups(self.cardinality);
        y = ResNet::conv_bn(ops, &y, &bn("conv2"), &bn("bn2"), c2)?;
        y = ops.activation(&y, Activation::Relu)?;
        y = ResNet::conv_bn(ops, &y, &bn("conv3"), &bn("bn3"), Conv2d::new(out, 1))?;
        let y = ops.add(&y, shortcut)?;
        ops.activation(&y, Activation::Relu)
    }

    /// timm `DlaTree.forward`: `children` collects the aggregation inputs of the root that
    /// finally closes this subtree (the level_root `bottom` and each left subtree's output).
    #[allow(clippy::too_many_arguments)]
    fn tree<O: Ops>(
        &self,
        ops: &mut O,
        x: &O::Tensor,
        vp: &VarPath,
        levels: usize,
        out: usize,
        stride: usize,
        level_root: bool,
        mut children: Vec<O::Tensor>,
    ) -> Result<O::Tensor> {
        let bottom = if stride > 1 {
            ops.pool2d(x, Pool2d::Max, stride, stride, Padding::Explicit(0))?
        } else {
            x.clone()
        };
        if level_root {
            children.push(bottom.clone());
        }
        if levels == 1 {
            let shortcut = if ops.channels(x) != out {
                let p = vp.pp("project");
                let cfg = Conv2d::new(out, 1);
                ResNet::conv_bn(ops, &bottom, &p.pp(0), &p.pp(1), cfg)?
            } else {
                bottom
            };
            let x1 = self.bottleneck(ops, x, &shortcut, &vp.pp("tree1"), out, stride)?;
            let x2 = self.bottleneck(ops, &x1, &x1, &vp.pp("tree2"), out, 1)?;
            let mut cat = vec![x2.clone(), x1];
            cat.extend(children);
            let root = vp.pp("root");
            let y = ops.concat(&cat)?;
            let cfg = Conv2d::new(out, 1);
            let mut y = ResNet::conv_bn(ops, &y, &root.pp("conv"), &root.pp("bn"), cfg)?;
            if self.root_shortcut {
                y = ops.add(&y, &x2)?;
            }
            ops.activation(&y, Activation::Relu)
        } else {
            let t1 = vp.pp("tree1");
            let x1 = self.tree(ops, x, &t1, levels - 1, out, stride, false, Vec::new())?;
            children.push(x1.clone());
            self.tree(
                ops,
                &x1,
                &vp.pp("tree2"),
                levels - 1,
                out,
                1,
                false,
                children,
            )
        }
    }

    /// Final feature map of timm `forward_features` (level5): [N, 1024, H/32, W/32].
    pub fn features<O: Ops>(&self, ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        let c = self.channels;
        let base = Conv2d::new(c[0], 7);
        let mut y = Self::conv_bn_relu(ops, x, &vp.pp("base_layer"), 0, base)?;
        for (l, stride) in [(0usize, 1usize), (1, 2)] {
            let lp = vp.pp(format!("level{l}"));
            for i in 0..self.levels[l] {
                let s = if i == 0 { stride } else { 1 };
                y = Self::conv_bn_relu(ops, &y, &lp, 3 * i, Conv2d::new(c[l], 3).stride(s))?;
            }
        }
        // level2..level5 are stride-2 trees; all but level2 keep their input as a root child.
        for (l, (&levels, &out)) in self.levels.iter().zip(&c).enumerate().skip(2) {
            let lp = vp.pp(format!("level{l}"));
            y = self.tree(ops, &y, &lp, levels, out, 2, l > 2, Vec::new())?;
        }
        Ok(y)
    }

    pub fn classifier<O: Ops>(
        &self,
        ops: &mut O,
        pooled: &O::Tensor,
        vp: &VarPath,
    ) -> Result<O::Tensor> {
        ops.linear_conv1x1(pooled, &vp.pp("fc"), self.num_classes, true)
    }
}
