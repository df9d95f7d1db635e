//! `Ops` backend that only records which parameters an architecture needs (name, shape,
//! parameter vs buffer): expected key sets, parameter counts, and later tch initialisation.
use crate::model::arch::Arch;
use crate::model::error::Result;
use crate::model::forward::forward;
use crate::model::head::HeadConfig;
use crate::model::ops::{Activation, Conv2d, GlobalPool, Ops, Padding, Pool2d};
use crate::model::vars::{ParamKind, VarPath};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub key: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

#[derive(Default)]
pub struct SpecOps {
    pub specs: Vec<ParamSpec>,
}

impl SpecOps {
    fn push(&mut self, key: String, shape: Vec<usize>, kind: ParamKind) {
        self.specs.push(ParamSpec { key, shape, kind });
    }

    /// Number of trainable parameters (what `sum(p.numel() for p in model.parameters())` gives).
    pub fn parameter_count(&self) -> usize {
        self.specs
            .iter()
            .filter(|s| s.kind == ParamKind::Param)
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }
}

impl Ops for SpecOps {
    /// Channel count is all the shape information parameters depend on.
    type Tensor = usize;

    fn channels(&self, x: &usize) -> usize {
        *x
    }
    fn conv2d(&mut self, x: &usize, vp: &VarPath, cfg: &Conv2d) -> Result<usize> {
        let k = cfg.kernel;
        self.push(
            vp.key("weight"),
            vec![cfg.out_channels, x / cfg.groups.max(1), k, k],
            ParamKind::Param,
        );
        if cfg.bias {
            self.push(vp.key("bias"), vec![cfg.out_channels], ParamKind::Param);
        }
        Ok(cfg.out_channels)
    }
    fn batch_norm(&mut self, x: &usize, vp: &VarPath, _eps: f32) -> Result<usize> {
        self.push(vp.key("weight"), vec![*x], ParamKind::Param);
        self.push(vp.key("bias"), vec![*x], ParamKind::Param);
        self.push(vp.key("running_mean"), vec![*x], ParamKind::Buffer);
        self.push(vp.key("running_var"), vec![*x], ParamKind::Buffer);
        self.push(vp.key("num_batches_tracked"), vec![], ParamKind::Buffer);
        Ok(*x)
    }
    fn activation(&mut self, x: &usize, _act: Activation) -> Result<usize> {
        Ok(*x)
    }
    fn add(&mut self, a: &usize, _b: &usize) -> Result<usize> {
        Ok(*a)
    }
    fn mul(&mut self, a: &usize, _b: &usize) -> Result<usize> {
        Ok(*a)
    }
    fn concat(&mut self, xs: &[usize]) -> Result<usize> {
        Ok(xs.iter().sum())
    }
    fn pool2d(
        &mut self,
        x: &usize,
        _k: Pool2d,
        _kernel: usize,
        _stride: usize,
        _p: Padding,
    ) -> Result<usize> {
        Ok(*x)
    }
    fn global_pool(&mut self, x: &usize, _kind: GlobalPool) -> Result<usize> {
        Ok(*x)
    }
    fn global_avg_pool_map(&mut self, x: &usize) -> Result<usize> {
        Ok(*x)
    }
    fn sum_channel_groups(&mut self, x: &usize, k: usize) -> Result<usize> {
        Ok(x / k.max(1))
    }
    fn upsample_nearest(&mut self, x: &usize, _scale: usize) -> Result<usize> {
        Ok(*x)
    }
    fn linear(&mut self, x: &usize, vp: &VarPath, out: usize, bias: bool) -> Result<usize> {
        self.push(vp.key("weight"), vec![out, *x], ParamKind::Param);
        if bias {
            self.push(vp.key("bias"), vec![out], ParamKind::Param);
        }
        Ok(out)
    }
    fn linear_conv1x1(&mut self, x: &usize, vp: &VarPath, out: usize, bias: bool) -> Result<usize> {
        self.push(vp.key("weight"), vec![out, *x, 1, 1], ParamKind::Param);
        if bias {
            self.push(vp.key("bias"), vec![out], ParamKind::Param);
        }
        Ok(out)
    }
    fn l2_normalize(&mut self, x: &usize, _eps: f32) -> Result<usize> {
        Ok(*x)
    }
    fn full_precision(&mut self, x: &usize) -> Result<usize> {
        Ok(*x)
    }
}

/// Every tensor a full model reads (backbone, CGD head under `head.`, optionally the
/// ImageNet classifier), in build order: the key set a tch trainer must create.
pub fn parameter_specs(arch: Arch, head: &HeadConfig, classifier: bool) -> Result<Vec<ParamSpec>> {
    let mut ops = SpecOps::default();
    let out = forward(&mut ops, arch, head, &3)?;
    if classifier {
        arch.classifier(&mut ops, &out.features, &VarPath::root())?;
    }
    Ok(ops.specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_model_specs_include_head_and_classifier() {
        let head = HeadConfig::parse("SG", 512, 3.0).unwrap();
        let specs = parameter_specs(Arch::EfficientnetLite0, &head, true).unwrap();
        let params: usize = specs
            .iter()
            .filter(|s| s.kind == ParamKind::Param)
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        // Backbone + classifier (4,652,008) + 2 x (fc 256x1280 + BN weight/bias 2x256).
        assert_eq!(params, 4_652_008 + 2 * (256 * 1280 + 512));
        assert_eq!(
            specs.first().map(|s| s.key.as_str()),
            Some("_conv_stem.weight")
        );
        assert_eq!(specs.last().map(|s| s.key.as_str()), Some("_fc.bias"));
    }
}
