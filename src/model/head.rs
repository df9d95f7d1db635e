//! CGD (Combination of multiple Global Descriptors) retrieval head.
//!
//! One branch per letter of the config (S = mean, M = max, G = sign-preserving GeM).
//! With projection (`feature_dim > 0`) each branch is pool -> `head.branches.{i}.fc`
//! (Linear, no bias, to feature_dim/n) -> `head.branches.{i}.bn` (BatchNorm1d, eps 1e-5)
//! -> L2; without projection a branch is just the L2-normalised pooled vector. Branches
//! are concatenated and L2-normalised again.
use crate::model::error::{ModelError, Result};
use crate::model::ops::{GlobalPool, Ops};
use crate::model::vars::VarPath;

const L2_EPS: f32 = 1e-12;
const GEM_EPS: f32 = 1e-6;
const BN_EPS: f32 = 1e-5;

#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub pools: Vec<GlobalPool>,
    /// 0 = no projection (pretrained backbone, no trained head).
    pub feature_dim: usize,
}

impl HeadConfig {
    /// Parses a gd_config such as "G" or "SMG".
    pub fn parse(gd_config: &str, feature_dim: usize, gem_p: f32) -> Result<Self> {
        if gd_config.is_empty() {
            return Err(ModelError::InvalidOption("empty gd_config".into()));
        }
        if !(gem_p.is_finite() && gem_p > 0.0) {
            return Err(ModelError::InvalidOption(format!(
                "gem_p must be > 0, got {gem_p}"
            )));
        }
        let pools = gd_config
            .chars()
            .map(|c| match c {
                'S' => Ok(GlobalPool::Avg),
                'M' => Ok(GlobalPool::Max),
                'G' => Ok(GlobalPool::Gem {
                    p: gem_p,
                    eps: GEM_EPS,
                }),
                other => Err(ModelError::InvalidOption(format!(
                    "gd_config letter {other:?} (expected S, M or G)"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        if !feature_dim.is_multiple_of(pools.len()) {
            return Err(ModelError::InvalidOption(format!(
                "feature_dim {feature_dim} not divisible by {} branches",
                pools.len()
            )));
        }
        Ok(Self { pools, feature_dim })
    }

    /// Length of the final descriptor for a backbone with `channels` feature channels.
    pub fn descriptor_dim(&self, channels: usize) -> usize {
        if self.feature_dim == 0 {
            channels * self.pools.len()
        } else {
            self.feature_dim
        }
    }

    /// Builds the head on a [N,C,H,W] feature map; `vp` is normally `VarPath::root().pp("head")`.
    pub fn build<O: Ops>(
        &self,
        ops: &mut O,
        features: &O::Tensor,
        vp: &VarPath,
    ) -> Result<O::Tensor> {
        let branch_dim = self.feature_dim / self.pools.len();
        let mut outs = Vec::with_capacity(self.pools.len());
        for (i, pool) in self.pools.iter().enumerate() {
            let mut y = ops.global_pool(features, *pool)?;
            if self.feature_dim > 0 {
                let b = vp.pp("branches").pp(i);
                y = ops.linear(&y, &b.pp("fc"), branch_dim, false)?;
                y = ops.batch_norm(&y, &b.pp("bn"), BN_EPS)?;
            }
            outs.push(ops.l2_normalize(&y, L2_EPS)?);
        }
        let y = if outs.len() == 1 {
            outs.swap_remove(0)
        } else {
            ops.concat(&outs)?
        };
        ops.l2_normalize(&y, L2_EPS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spec_ops::SpecOps;

    #[test]
    fn parses_configs_and_dims() {
        let h = HeadConfig::parse("SMG", 0, 3.0).unwrap();
        assert_eq!(h.pools.len(), 3);
        assert_eq!(h.descriptor_dim(1280), 3840);
        assert_eq!(
            HeadConfig::parse("G", 0, 3.0).unwrap().descriptor_dim(1280),
            1280
        );
        assert_eq!(
            HeadConfig::parse("SG", 512, 3.0)
                .unwrap()
                .descriptor_dim(2048),
            512
        );
        assert!(HeadConfig::parse("SX", 0, 3.0).is_err());
        assert!(HeadConfig::parse("SMG", 512, 3.0).is_err());
        assert!(HeadConfig::parse("G", 0, 0.0).is_err());
    }

    #[test]
    fn projection_head_parameter_names() {
        let h = HeadConfig::parse("SG", 512, 3.0).unwrap();
        let mut ops = SpecOps::default();
        let out = h
            .build(&mut ops, &2048, &VarPath::root().pp("head"))
            .unwrap();
        assert_eq!(out, 512);
        let keys: Vec<_> = ops
            .specs
            .iter()
            .map(|s| (s.key.as_str(), s.shape.clone()))
            .collect();
        assert_eq!(keys[0], ("head.branches.0.fc.weight", vec![256, 2048]));
        assert_eq!(keys[1], ("head.branches.0.bn.weight", vec![256]));
        assert_eq!(keys[6], ("head.branches.1.fc.weight", vec![256, 2048]));
        assert_eq!(keys.len(), 12);
    }
}
