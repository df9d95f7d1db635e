//! Validation: the held-out images, preprocessed exactly as the server does, embedded by
//! the model in eval mode; each one queries all the others (leave-one-out) and the
//! rankings are scored by `eval::metrics`, the code behind `lookalike eval`.
use std::path::Path;

use rayon::prelude::*;
use tch::{Kind, Tensor};

use crate::tch_ops::{Mode, TchOps, TchTensor, TchVars};
use crate::train::error::{Result, TrainError};
use lookalike::embed::preprocess::{decode, write_input, DecodeLimits, InputSpec};
use lookalike::eval::metrics::{evaluate, Metrics, CUTOFF};
use lookalike::model::arch::Arch;
use lookalike::model::forward::forward;
use lookalike::model::head::HeadConfig;

pub struct ValSet {
    /// [n, 3, s, s] network inputs.
    pub inputs: Vec<f32>,
    pub labels: Vec<usize>,
    pub size: usize,
}

impl ValSet {
    pub fn prepare(items: &[(&Path, usize)], spec: &InputSpec) -> Result<Self> {
        let per = spec.values();
        let rows: Vec<Vec<f32>> = items
            .par_iter()
            .map(|(p, _)| {
                let bytes = std::fs::read(p).map_err(|e| TrainError::io(*p, e))?;
                let img_err = |source| TrainError::Image {
                    path: p.to_path_buf(),
                    source,
                };
                let img = decode(&bytes, &DecodeLimits::default()).map_err(img_err)?;
                let mut row = vec![0.0; per];
                write_input(&img, spec, &mut row).map_err(img_err)?;
                Ok(row)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            inputs: rows.concat(),
            labels: items.iter().map(|&(_, l)| l).collect(),
            size: spec.input_size as usize,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Descriptors [n, D] of the whole set, in eval mode, `batch` images at a time on
/// `device`; on the CPU.
pub fn embed(
    vars: &TchVars,
    arch: Arch,
    head: &HeadConfig,
    set: &ValSet,
    batch: usize,
    device: tch::Device,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let s = set.size as i64;
    let per = 3 * set.size * set.size;
    let mut outs = Vec::new();
    for chunk in set.inputs.chunks(per * batch.max(1)) {
        let n = (chunk.len() / per) as i64;
        let x = Tensor::f_from_slice(chunk)?
            .f_reshape([n, 3, s, s])?
            .f_to_device(device)?;
        let mut ops = TchOps::new(vars, Mode::eval());
        let d = forward(&mut ops, arch, head, &TchTensor(x))?.descriptor.0;
        outs.push(
            d.f_to_kind(tch::Kind::Float)?
                .f_to_device(tch::Device::Cpu)?,
        );
    }
    Ok(Tensor::f_cat(&outs, 0)?)
}

/// Leave-one-out retrieval metrics: queries are the items with at least one other item
/// of their class.
pub fn leave_one_out(desc: &Tensor, labels: &[usize]) -> Result<Metrics> {
    let n = labels.len() as i64;
    let eye = Tensor::f_eye(n, (Kind::Float, tch::Device::Cpu))?;
    // Self-similarity pushed below every real score.
    let sims = desc
        .f_matmul(&desc.f_tr()?)?
        .f_sub(&eye.f_mul_scalar(10.0)?)?;
    let k = (CUTOFF as i64).min(n - 1).max(1);
    let (_, idx) = sims.f_topk(k, 1, true, true)?;
    let idx = Vec::<i64>::try_from(&idx.f_reshape([-1])?)?;
    let count = |c: usize| labels.iter().filter(|&&l| l == c).count();
    let (mut q, mut ranked, mut r_q) = (Vec::new(), Vec::new(), Vec::new());
    for (i, &l) in labels.iter().enumerate() {
        let others = count(l) - 1;
        if others == 0 {
            continue;
        }
        let row = &idx[i * k as usize..(i + 1) * k as usize];
        q.push(l);
        ranked.push(row.iter().map(|&j| labels[j as usize]).collect::<Vec<_>>());
        r_q.push(others);
    }
    Ok(evaluate(&q, &ranked, &r_q)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_scores_separated_classes_perfectly_and_excludes_self() {
        // Two tight clusters; the lone third-class item is a distractor, not a query.
        let d: Vec<f32> = vec![1.0, 0.0, 0.99, 0.14, 0.0, 1.0, 0.14, 0.99, 0.7, 0.7];
        let desc = Tensor::from_slice(&d).reshape([5, 2]);
        let desc = &desc / desc.norm_scalaropt_dim(2.0, [1i64], true);
        let m = leave_one_out(&desc, &[0, 0, 1, 1, 2]).unwrap();
        assert_eq!(m.n_queries, 4);
        assert_eq!(m.top1, 1.0);
        assert_eq!(m.map10, 1.0);
        // Swapping labels of one pair breaks top-1 for both of them.
        let m = leave_one_out(&desc, &[0, 1, 0, 1, 2]).unwrap();
        assert!(m.top1 < 1.0);
    }
}
