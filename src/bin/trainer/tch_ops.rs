//! `Ops` on tch (libtorch), for training: the architectures and the CGD head run
//! eagerly with autograd, reading parameters by their state_dict keys from `TchVars`.
//! Batch norm has a train mode (batch statistics, running-statistic momentum) and
//! stochastic depth is live; in eval mode the forward equals the ONNX export's.
use std::collections::BTreeMap;

use tch::{Kind, TchError, Tensor};

use lookalike::model::error::{ModelError, Result};
use lookalike::model::ops::{Activation, Conv2d, GlobalPool, Ops, Padding, Pool2d};
use lookalike::model::tensor::HostTensor;
use lookalike::model::vars::VarPath;
use lookalike::model::weights::StateDict;

/// tch's `Tensor` is not `Clone`; a shallow clone shares storage and autograd history.
pub struct TchTensor(pub Tensor);

impl Clone for TchTensor {
    fn clone(&self) -> Self {
        Self(self.0.shallow_clone())
    }
}

pub(crate) fn tch_err(e: TchError) -> ModelError {
    ModelError::Graph(format!("tch: {e}"))
}

/// The model's tensors by state_dict key (trainable parameters and BN buffers).
#[derive(Default)]
pub struct TchVars {
    pub tensors: BTreeMap<String, Tensor>,
}

/// A host tensor as an f32 CPU tensor of the same shape.
pub fn from_host(t: &HostTensor) -> Result<Tensor> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_slice(&t.data)
        .and_then(|x| x.f_reshape(shape))
        .map_err(tch_err)
}

/// An f32 copy on the host (any device, any float kind).
pub fn to_host(t: &Tensor) -> Result<HostTensor> {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let flat = t
        .f_detach()
        .and_then(|x| x.f_to_kind(Kind::Float))
        .and_then(|x| x.f_to_device(tch::Device::Cpu))
        .and_then(|x| x.f_contiguous())
        .and_then(|x| x.f_reshape([-1]))
        .map_err(tch_err)?;
    let data = Vec::<f32>::try_from(&flat).map_err(tch_err)?;
    HostTensor::new(shape, data)
}

impl TchVars {
    /// Every tensor of a state dict, as is (the parity tests).
    #[cfg(test)]
    pub fn from_state(state: &StateDict) -> Result<Self> {
        let tensors = state
            .iter()
            .map(|(k, t)| Ok((k.clone(), from_host(t)?)))
            .collect::<Result<_>>()?;
        Ok(Self { tensors })
    }

    /// Host copies of every tensor, keyed as in the model.
    pub fn to_state(&self) -> Result<StateDict> {
        self.tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), to_host(t)?)))
            .collect()
    }

    fn get(&self, key: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| ModelError::Graph(format!("no variable {key}")))?;
        let want: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if t.size() != want {
            return Err(ModelError::Graph(format!(
                "{key}: expected {want:?}, have {:?}",
                t.size()
            )));
        }
        Ok(t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    /// Training forward: dropout / drop-path live.
    pub train: bool,
    /// Batch norm normalises with batch statistics and updates the running ones
    /// (off = frozen statistics, the affine parameters still learn).
    pub bn_batch_stats: bool,
    /// PyTorch's running-statistics momentum.
    pub bn_momentum: f64,
    /// Stochastic-depth rate of the deepest block.
    pub drop_path: f64,
}

impl Mode {
    pub fn eval() -> Self {
        Self {
            train: false,
            bn_batch_stats: false,
            bn_momentum: 0.1,
            drop_path: 0.0,
        }
    }
}

pub struct TchOps<'a> {
    vars: &'a TchVars,
    pub mode: Mode,
}

impl<'a> TchOps<'a> {
    pub fn new(vars: &'a TchVars, mode: Mode) -> Self {
        Self { vars, mode }
    }
}

/// TF "SAME" padding of one spatial dim: (before, after), the odd pixel after.
fn same_pad(input: i64, kernel: i64, stride: i64, dilation: i64) -> (i64, i64) {
    let out = (input + stride - 1) / stride;
    let total = ((out - 1) * stride + (kernel - 1) * dilation + 1 - input).max(0);
    (total / 2, total - total / 2)
}

fn hw(x: &Tensor) -> Result<(i64, i64)> {
    match x.size()[..] {
        [_, _, h, w] => Ok((h, w)),
        ref s => Err(ModelError::Graph(format!("expected [N,C,H,W], got {s:?}"))),
    }
}

impl TchOps<'_> {
    /// Zero-pads `x` for a TF-SAME window; returns the padded tensor.
    fn pad_same(x: &Tensor, kernel: usize, stride: usize, dilation: usize) -> Result<Tensor> {
        let (h, w) = hw(x)?;
        let (k, s, d) = (kernel as i64, stride as i64, dilation as i64);
        let (t, b) = same_pad(h, k, s, d);
        let (l, r) = same_pad(w, k, s, d);
        x.f_constant_pad_nd([l, r, t, b]).map_err(tch_err)
    }

    fn linear_with(
        &self,
        x: &TchTensor,
        w: &Tensor,
        vp: &VarPath,
        out: usize,
        bias: bool,
    ) -> Result<TchTensor> {
        let b = if bias {
            Some(self.vars.get(&vp.key("bias"), &[out])?)
        } else {
            None
        };
        x.0.f_linear(w, b).map(TchTensor).map_err(tch_err)
    }
}

impl Ops for TchOps<'_> {
    type Tensor = TchTensor;

    fn channels(&self, x: &TchTensor) -> usize {
        x.0.size().get(1).map_or(0, |&c| c as usize)
    }

    fn conv2d(&mut self, x: &TchTensor, vp: &VarPath, cfg: &Conv2d) -> Result<TchTensor> {
        let c = self.channels(x);
        if cfg.groups == 0 || !c.is_multiple_of(cfg.groups) {
            return Err(ModelError::Graph(format!(
                "{}: {c} channels not divisible by groups {}",
                vp.prefix(),
                cfg.groups
            )));
        }
        let k = cfg.kernel;
        let w = self
            .vars
            .get(&vp.key("weight"), &[cfg.out_channels, c / cfg.groups, k, k])?;
        let b = if cfg.bias {
            Some(self.vars.get(&vp.key("bias"), &[cfg.out_channels])?)
        } else {
            None
        };
        let (input, pad) = match cfg.padding {
            Padding::Explicit(p) => (x.0.shallow_clone(), p as i64),
            Padding::TfSame => (Self::pad_same(&x.0, k, cfg.stride, cfg.dilation)?, 0),
        };
        let (s, d) = (cfg.stride as i64, cfg.dilation as i64);
        input
            .f_conv2d(w, b, [s, s], [pad, pad], [d, d], cfg.groups as i64)
            .map(TchTensor)
            .map_err(tch_err)
    }

    fn batch_norm(&mut self, x: &TchTensor, vp: &VarPath, eps: f32) -> Result<TchTensor> {
        let c = [self.channels(x)];
        let [w, b, m, v] = ["weight", "bias", "running_mean", "running_var"]
            .map(|k| self.vars.get(&vp.key(k), &c));
        let stats = self.mode.bn_batch_stats;
        x.0.f_batch_norm(
            Some(w?),
            Some(b?),
            Some(m?),
            Some(v?),
            stats,
            self.mode.bn_momentum,
            eps as f64,
            false,
        )
        .map(TchTensor)
        .map_err(tch_err)
    }

    fn activation(&mut self, x: &TchTensor, act: Activation) -> Result<TchTensor> {
        let x = &x.0;
        let y = match act {
            Activation::Identity => Ok(x.shallow_clone()),
            Activation::Relu => x.f_relu(),
            Activation::Relu6 => x.f_clamp(0.0, 6.0),
            Activation::Sigmoid => x.f_sigmoid(),
            Activation::Silu => x.f_silu(),
        };
        y.map(TchTensor).map_err(tch_err)
    }

    fn add(&mut self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        a.0.f_add(&b.0).map(TchTensor).map_err(tch_err)
    }

    fn mul(&mut self, a: &TchTensor, b: &TchTensor) -> Result<TchTensor> {
        a.0.f_mul(&b.0).map(TchTensor).map_err(tch_err)
    }

    fn concat(&mut self, xs: &[TchTensor]) -> Result<TchTensor> {
        let ts: Vec<&Tensor> = xs.iter().map(|x| &x.0).collect();
        Tensor::f_cat(&ts, 1).map(TchTensor).map_err(tch_err)
    }

    fn pool2d(
        &mut self,
        x: &TchTensor,
        kind: Pool2d,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<TchTensor> {
        let (input, p) = match padding {
            Padding::Explicit(p) => (x.0.shallow_clone(), p as i64),
            // No architecture pools with SAME padding (zeros would be wrong for max).
            Padding::TfSame => {
                return Err(ModelError::Graph(
                    "SAME-padded pooling is not supported".into(),
                ))
            }
        };
        let (k, s) = (kernel as i64, stride as i64);
        let y = match kind {
            Pool2d::Max => input.f_max_pool2d([k, k], [s, s], [p, p], [1, 1], false),
            Pool2d::Avg => input.f_avg_pool2d([k, k], [s, s], [p, p], false, true, None),
        };
        y.map(TchTensor).map_err(tch_err)
    }

    fn global_pool(&mut self, x: &TchTensor, kind: GlobalPool) -> Result<TchTensor> {
        let x = &x.0;
        let y = match kind {
            GlobalPool::Avg => x.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float),
            GlobalPool::Max => x.f_amax([2i64, 3], false),
            GlobalPool::Gem { p, eps } => (|| {
                // As exported: m = mean(sign(x) max(|x|,eps)^p), sign(m) |m|^(1/p); |m| is
                // clamped before the root so its gradient stays finite at m = 0.
                let (p, eps) = (p as f64, eps as f64);
                let a = x.f_abs()?.f_clamp_min(eps)?.f_pow_tensor_scalar(p)?;
                let t = a.f_mul(&x.f_sign()?)?;
                let m = t.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float)?;
                let r = m
                    .f_abs()?
                    .f_clamp_min(f64::from(f32::MIN_POSITIVE))?
                    .f_pow_tensor_scalar(1.0 / p)?;
                r.f_mul(&m.f_sign()?)
            })(),
        };
        y.map(TchTensor).map_err(tch_err)
    }

    fn global_avg_pool_map(&mut self, x: &TchTensor) -> Result<TchTensor> {
        x.0.f_mean_dim([2i64, 3].as_slice(), true, Kind::Float)
            .map(TchTensor)
            .map_err(tch_err)
    }

    fn sum_channel_groups(&mut self, x: &TchTensor, k: usize) -> Result<TchTensor> {
        let c = self.channels(x);
        if k == 0 || !c.is_multiple_of(k) {
            return Err(ModelError::Graph(format!(
                "cannot sum {c} channels in groups of {k}"
            )));
        }
        let (h, w) = hw(&x.0)?;
        let n = x.0.size()[0];
        let (c, k) = (c as i64, k as i64);
        x.0.f_reshape([n, c / k, k, h, w])
            .and_then(|t| t.f_sum_dim_intlist([2i64].as_slice(), false, Kind::Float))
            .map(TchTensor)
            .map_err(tch_err)
    }

    fn upsample_nearest(&mut self, x: &TchTensor, scale: usize) -> Result<TchTensor> {
        let (h, w) = hw(&x.0)?;
        let s = scale as i64;
        x.0.f_upsample_nearest2d([h * s, w * s], None, None)
            .map(TchTensor)
            .map_err(tch_err)
    }

    fn linear(&mut self, x: &TchTensor, vp: &VarPath, out: usize, bias: bool) -> Result<TchTensor> {
        let w = self.vars.get(&vp.key("weight"), &[out, self.channels(x)])?;
        self.linear_with(x, w, vp, out, bias)
    }

    fn linear_conv1x1(
        &mut self,
        x: &TchTensor,
        vp: &VarPath,
        out: usize,
        bias: bool,
    ) -> Result<TchTensor> {
        let c = self.channels(x);
        let w = self.vars.get(&vp.key("weight"), &[out, c, 1, 1])?;
        let w = w.f_reshape([out as i64, c as i64]).map_err(tch_err)?;
        self.linear_with(x, &w, vp, out, bias)
    }

    fn l2_normalize(&mut self, x: &TchTensor, eps: f32) -> Result<TchTensor> {
        let x = &x.0;
        x.f_norm_scalaropt_dim(2.0, [1i64], true)
            .and_then(|n| n.f_clamp_min(eps as f64))
            .and_then(|n| x.f_div(&n))
            .map(TchTensor)
            .map_err(tch_err)
    }

    fn full_precision(&mut self, x: &TchTensor) -> Result<TchTensor> {
        Ok(x.clone())
    }

    fn drop_path(&mut self, x: &TchTensor, depth: f32) -> Result<TchTensor> {
        let rate = self.mode.drop_path * depth as f64;
        if !self.mode.train || rate <= 0.0 {
            return Ok(x.clone());
        }
        // One Bernoulli draw per sample, from torch's seeded generator.
        let n = x.0.size()[0];
        let keep = 1.0 - rate;
        Tensor::f_empty([n, 1, 1, 1], (Kind::Float, x.0.device()))
            .and_then(|t| t.f_bernoulli_p(keep))
            .and_then(|m| x.0.f_mul(&m))
            .and_then(|y| y.f_div_scalar(keep))
            .map(TchTensor)
            .map_err(tch_err)
    }
}

#[cfg(test)]
mod tests {
    use super::same_pad;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224, k3 s2: out 112, total pad 1, all of it after.
        assert_eq!(same_pad(224, 3, 2, 1), (0, 1));
        // 7, k5 s1: pad 2 each side.
        assert_eq!(same_pad(7, 5, 1, 1), (2, 2));
        // 225, k3 s2: out 113, pad 2 split evenly.
        assert_eq!(same_pad(225, 3, 2, 1), (1, 1));
    }
}
