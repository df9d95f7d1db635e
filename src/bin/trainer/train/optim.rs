//! Adam, AdamW and SGD over the trainer's own tensors, with the moments kept in tensors
//! we own so that a checkpoint can hold them (tch's optimisers cannot be saved).
use std::collections::BTreeMap;

use tch::Tensor;

use crate::train::config::OptimKind;
use crate::train::error::{Result, TrainError};

const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

pub struct Group {
    pub key: String,
    pub tensor: Tensor,
    pub decay: bool,
    pub lr_mult: f64,
}

pub struct Optimizer {
    pub kind: OptimKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub params: Vec<Group>,
    /// First moments (Adam) or momentum buffers (SGD), by key.
    pub m: BTreeMap<String, Tensor>,
    /// Second moments (Adam only).
    pub v: BTreeMap<String, Tensor>,
    /// Optimiser steps taken (Adam's bias correction).
    pub t: u64,
}

impl Optimizer {
    pub fn new(
        kind: OptimKind,
        momentum: f64,
        weight_decay: f64,
        params: Vec<Group>,
    ) -> Result<Self> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for p in &params {
            m.insert(p.key.clone(), p.tensor.f_zeros_like()?);
            if kind != OptimKind::Sgd {
                v.insert(p.key.clone(), p.tensor.f_zeros_like()?);
            }
        }
        Ok(Self {
            kind,
            momentum,
            weight_decay,
            params,
            m,
            v,
            t: 0,
        })
    }

    /// Divides the gradients by `loss_scale` (the factor the loss was multiplied by
    /// before the backward pass; 1 without mixed precision), then returns their global
    /// L2 norm and scales them down to `max` when above it (0 = off). A non-finite norm
    /// (overflow) is returned without clipping.
    pub fn clip_grad_norm(&mut self, max: f64, loss_scale: f64) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        if loss_scale != 1.0 {
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.f_div_scalar_(loss_scale)?;
                }
            }
        }
        let mut sq = 0.0;
        for p in &self.params {
            let g = p.tensor.grad();
            if g.defined() {
                sq += g
                    .f_square()?
                    .f_sum(tch::Kind::Double)?
                    .f_double_value(&[])?;
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Ok(norm);
        }
        if max > 0.0 && norm > max {
            let f = max / norm;
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(f)?;
                }
            }
        }
        Ok(norm)
    }

    /// Clears the gradients without a step (a step skipped for overflow).
    pub fn zero_grad(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// One update with learning rate `lr` (times each group's multiplier); clears grads.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        // In-place updates below return aliases of their target; those are dropped.
        let _guard = tch::no_grad_guard();
        self.t += 1;
        let (b1, t) = (self.momentum, self.t as i32);
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let lr = lr * p.lr_mult;
            let wd = if p.decay { self.weight_decay } else { 0.0 };
            let mut w = p.tensor.shallow_clone();
            let missing = || TrainError::Data(format!("no optimiser state for {}", p.key));
            let m = self.m.get_mut(&p.key).ok_or_else(missing)?;
            match self.kind {
                OptimKind::Sgd => {
                    let g = if wd > 0.0 {
                        g.f_add(&w.f_mul_scalar(wd)?)?
                    } else {
                        g.shallow_clone()
                    };
                    let _ = m.f_mul_scalar_(b1)?.f_add_(&g)?;
                    // Nesterov: step along g + momentum * buffer.
                    let upd = g.f_add(&m.f_mul_scalar(b1)?)?;
                    let _ = w.f_sub_(&upd.f_mul_scalar(lr)?)?;
                }
                OptimKind::Adam | OptimKind::Adamw => {
                    let v = self.v.get_mut(&p.key).ok_or_else(missing)?;
                    let g = if self.kind == OptimKind::Adam && wd > 0.0 {
                        g.f_add(&w.f_mul_scalar(wd)?)?
                    } else {
                        g.shallow_clone()
                    };
                    let _ = m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
                    let _ = v
                        .f_mul_scalar_(BETA2)?
                        .f_add_(&g.f_square()?.f_mul_scalar(1.0 - BETA2)?)?;
                    let mhat = m.f_div_scalar(1.0 - b1.powi(t))?;
                    let vhat = v.f_div_scalar(1.0 - BETA2.powi(t))?;
                    let upd = mhat.f_div(&vhat.f_sqrt()?.f_add_scalar(ADAM_EPS)?)?;
                    if self.kind == OptimKind::Adamw && wd > 0.0 {
                        let _ = w.f_mul_scalar_(1.0 - lr * wd)?;
                    }
                    let _ = w.f_sub_(&upd.f_mul_scalar(lr)?)?;
                }
            }
            let _ = g.f_zero_()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimises (x - 3)^2 from x = 0.
    fn minimise(kind: OptimKind, lr: f64) -> f64 {
        let x = Tensor::from_slice(&[0.0f32]).set_requires_grad(true);
        let group = Group {
            key: "x".into(),
            tensor: x.shallow_clone(),
            decay: false,
            lr_mult: 1.0,
        };
        let mut opt = Optimizer::new(kind, 0.9, 0.0, vec![group]).unwrap();
        for _ in 0..300 {
            let loss = (&x - 3.0).square().sum(tch::Kind::Float);
            loss.backward();
            opt.step(lr).unwrap();
        }
        x.double_value(&[0])
    }

    #[test]
    fn every_optimiser_finds_the_minimum() {
        for (kind, lr) in [
            (OptimKind::Adam, 0.1),
            (OptimKind::Adamw, 0.1),
            (OptimKind::Sgd, 0.01),
        ] {
            let x = minimise(kind, lr);
            assert!((x - 3.0).abs() < 1e-2, "{kind:?}: {x}");
        }
    }

    #[test]
    fn adam_first_step_moves_by_the_learning_rate() {
        let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let g = Group {
            key: "x".into(),
            tensor: x.shallow_clone(),
            decay: false,
            lr_mult: 1.0,
        };
        let mut opt = Optimizer::new(OptimKind::Adam, 0.9, 0.0, vec![g]).unwrap();
        (&x * 5.0).sum(tch::Kind::Float).backward();
        opt.step(0.01).unwrap();
        assert!((x.double_value(&[0]) - 0.99).abs() < 1e-6);
    }
}
