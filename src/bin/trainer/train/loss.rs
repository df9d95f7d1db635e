//! The training objective on the model's forward: a margin loss on cosine logits against
//! learned class centres (CosFace, ArcFace, plain cosine softmax), or the CGD paper's
//! recipe (batch-hard triplet on the descriptor plus an auxiliary classifier on the
//! first branch's pooled features). What the objective learns lives with the trainer
//! (checkpointed, never exported).
use tch::{Kind, Reduction, Tensor};

use crate::tch_ops::{Mode, TchOps, TchTensor, TchVars};
use crate::train::config::{LossKind, TrainConfig};
use crate::train::error::{Result, TrainError};
use lookalike::model::forward::Forward;
use lookalike::model::head::HeadConfig;
use lookalike::model::ops::{GlobalPool, Ops};
use lookalike::model::vars::VarPath;

/// Key of the class-centre matrix [classes, dim] in the trainer's state.
pub const CLASS_WEIGHT_KEY: &str = "loss.weight";
/// Prefix of the CGD recipe's auxiliary classifier (`aux.bn.*`, `aux.fc.*`).
const AUX_PREFIX: &str = "aux";
/// BatchNorm1d's default epsilon, as in the CGD paper's auxiliary module.
const AUX_BN_EPS: f32 = 1e-5;

/// Where the margin goes on the true class's cosine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Margin {
    /// s (cos - m).
    Cosine,
    /// s cos(theta + m).
    Angular,
    /// s cos: no margin.
    None,
}

pub struct MarginLoss {
    pub kind: Margin,
    pub scale: f64,
    pub margin: f64,
}

/// The CGD paper's (Jun et al. 2019) training objective.
pub struct CgdLoss {
    /// Batch-hard triplet margin on the descriptor (Euclidean, unit vectors).
    pub triplet_margin: f64,
    /// Label smoothing of the auxiliary classification.
    pub smoothing: f64,
    /// Its logits are divided by this before the softmax.
    pub temperature: f64,
    /// The first branch's pooling: the auxiliary classifier reads its output.
    pub first_pool: GlobalPool,
    pub classes: usize,
}

pub enum Objective {
    Margin(MarginLoss),
    Cgd(CgdLoss),
}

pub struct LossOut {
    pub loss: Tensor,
    /// Fraction of the batch whose predicted class (nearest centre, or the auxiliary
    /// classifier's argmax) is the true one.
    pub accuracy: f64,
}

/// The objective and the tensors it learns.
pub struct Criterion {
    pub objective: Objective,
    /// Trainer state by key: class centres, or the auxiliary classifier's
    /// parameters and batch-norm statistics.
    pub vars: TchVars,
}

fn param(t: Tensor) -> Result<Tensor> {
    Ok(t.f_set_requires_grad(true)?)
}

impl Criterion {
    /// The objective `cfg` asks for, fresh (from torch's generator: seed it first).
    /// `channels`: the backbone's feature channels; `classes`: the training classes.
    pub fn new(
        cfg: &TrainConfig,
        head: &HeadConfig,
        channels: usize,
        classes: usize,
        device: tch::Device,
    ) -> Result<Self> {
        let opts = (Kind::Float, device);
        let (c, k) = (channels as i64, classes as i64);
        let mut vars = TchVars::default();
        let objective = match cfg.loss {
            LossKind::Cgd => {
                let first_pool = *head.pools.first().ok_or_else(|| {
                    TrainError::InvalidOption("the CGD recipe needs a head branch".into())
                })?;
                // nn.BatchNorm1d then nn.Linear, PyTorch's default initialisation.
                let b = 1.0 / (channels.max(1) as f64).sqrt();
                let aux = |k: &str| format!("{AUX_PREFIX}.{k}");
                vars.tensors
                    .insert(aux("bn.weight"), param(Tensor::f_ones([c], opts)?)?);
                vars.tensors
                    .insert(aux("bn.bias"), param(Tensor::f_zeros([c], opts)?)?);
                vars.tensors
                    .insert(aux("bn.running_mean"), Tensor::f_zeros([c], opts)?);
                vars.tensors
                    .insert(aux("bn.running_var"), Tensor::f_ones([c], opts)?);
                vars.tensors.insert(
                    aux("fc.weight"),
                    param(Tensor::f_empty([k, c], opts)?.f_uniform_(-b, b)?)?,
                );
                vars.tensors.insert(
                    aux("fc.bias"),
                    param(Tensor::f_empty([k], opts)?.f_uniform_(-b, b)?)?,
                );
                Objective::Cgd(CgdLoss {
                    triplet_margin: cfg.triplet_margin,
                    smoothing: cfg.label_smoothing,
                    temperature: cfg.temperature,
                    first_pool,
                    classes,
                })
            }
            kind @ (LossKind::Cosface | LossKind::Arcface | LossKind::Softmax) => {
                let kind = match kind {
                    LossKind::Cosface => Margin::Cosine,
                    LossKind::Arcface => Margin::Angular,
                    _ => Margin::None,
                };
                // Class centres: uniformly random directions (normalised in the loss).
                let dim = cfg.feature_dim as i64;
                vars.tensors.insert(
                    CLASS_WEIGHT_KEY.into(),
                    param(Tensor::f_randn([k, dim], opts)?)?,
                );
                Objective::Margin(MarginLoss {
                    kind,
                    scale: cfg.scale,
                    margin: cfg.margin,
                })
            }
        };
        Ok(Self { objective, vars })
    }

    /// The learned tensors (key, tensor, takes weight decay, takes the head's learning
    /// rate), for the optimiser. Class centres are normalised in the loss, so they learn
    /// at the head's rate; the auxiliary classifier's logits grow with its weights, and
    /// at ten times the rate they swing by several units a step: it keeps the base rate.
    pub fn params(&self) -> Vec<(String, Tensor, bool, bool)> {
        self.vars
            .tensors
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(k, t)| {
                let centres = k == CLASS_WEIGHT_KEY;
                (
                    k.clone(),
                    t.shallow_clone(),
                    t.dim() > 1 && !centres,
                    centres,
                )
            })
            .collect()
    }

    /// The loss of a training forward; `mode` is the backbone's (batch norm, train flag).
    pub fn forward(
        &self,
        fwd: &Forward<TchTensor>,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<LossOut> {
        match &self.objective {
            Objective::Margin(m) => {
                let w = self.vars.tensors.get(CLASS_WEIGHT_KEY).ok_or_else(|| {
                    TrainError::Data(format!("trainer state lacks {CLASS_WEIGHT_KEY}"))
                })?;
                m.forward(&fwd.descriptor.0, w, labels)
            }
            Objective::Cgd(c) => {
                // The auxiliary batch norm always learns its statistics in training,
                // whatever `--freeze-bn` does to the backbone's.
                let aux_mode = Mode {
                    bn_batch_stats: mode.train,
                    ..mode
                };
                let mut ops = TchOps::new(&self.vars, aux_mode);
                let vp = VarPath::root().pp(AUX_PREFIX);
                let pooled = ops.global_pool(&fwd.features, c.first_pool)?;
                let y = ops.batch_norm(&pooled, &vp.pp("bn"), AUX_BN_EPS)?;
                let logits = ops.linear(&y, &vp.pp("fc"), c.classes, true)?.0;
                c.forward(&fwd.descriptor.0, &logits, labels)
            }
        }
    }
}

impl MarginLoss {
    /// `desc` [N, D] (L2-normalised), `labels` [N] int64.
    pub fn forward(&self, desc: &Tensor, weight: &Tensor, labels: &Tensor) -> Result<LossOut> {
        let w = weight.f_div(
            &weight
                .f_norm_scalaropt_dim(2.0, [1i64], true)?
                .f_clamp_min(1e-12)?,
        )?;
        let cos = desc.f_matmul(&w.f_tr()?)?.f_clamp(-1.0, 1.0)?;
        let classes = cos.size()[1];
        let onehot = labels.f_one_hot(classes)?.f_to_kind(Kind::Float)?;
        let target = match self.kind {
            Margin::Cosine => cos.f_sub_scalar(self.margin)?,
            Margin::Angular => {
                // cos(t + m) where t + m < pi, else the CosFace-like fallback
                // (insightface's `easy_margin = False`).
                let (cm, sm) = (self.margin.cos(), self.margin.sin());
                let th = (std::f64::consts::PI - self.margin).cos();
                let mm = (std::f64::consts::PI - self.margin).sin() * self.margin;
                let sin = cos
                    .f_square()?
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_clamp_min(1e-9)?
                    .f_sqrt()?;
                let phi = cos.f_mul_scalar(cm)?.f_sub(&sin.f_mul_scalar(sm)?)?;
                let fallback = cos.f_sub_scalar(mm)?;
                phi.f_where_self(&cos.f_gt(th)?, &fallback)?
            }
            Margin::None => cos.shallow_clone(),
        };
        // Margin only on the true class.
        let logits = onehot
            .f_mul(&target)?
            .f_add(&onehot.f_neg()?.f_add_scalar(1.0)?.f_mul(&cos)?)?
            .f_mul_scalar(self.scale)?;
        let loss =
            logits.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)?;
        let pred = cos.f_argmax(1, false)?;
        let accuracy = pred
            .f_eq_tensor(labels)?
            .f_to_kind(Kind::Float)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])?;
        Ok(LossOut { loss, accuracy })
    }
}

impl CgdLoss {
    /// `desc` [N, D] (L2-normalised), `logits` [N, classes] of the auxiliary
    /// classifier, `labels` [N] int64: triplet + label-smoothed, temperature-scaled
    /// cross-entropy, summed as in the paper.
    pub fn forward(&self, desc: &Tensor, logits: &Tensor, labels: &Tensor) -> Result<LossOut> {
        let triplet = batch_hard_triplet(desc, labels, self.triplet_margin)?;
        let ce = logits
            .f_div_scalar(self.temperature)?
            .f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, self.smoothing)?;
        let accuracy = logits
            .f_argmax(1, false)?
            .f_eq_tensor(labels)?
            .f_to_kind(Kind::Float)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])?;
        Ok(LossOut {
            loss: triplet.f_add(&ce)?,
            accuracy,
        })
    }
}

/// Batch-hard triplet loss (Hermans et al. 2017): for each anchor, its farthest
/// same-class item against its nearest other-class item, hinge at `margin`; anchors
/// with no positive or no negative in the batch contribute zero.
pub fn batch_hard_triplet(desc: &Tensor, labels: &Tensor, margin: f64) -> Result<Tensor> {
    let n = desc.size()[0];
    // Unit vectors: |a - b|^2 = 2 - 2 a.b (clamped: the sqrt's gradient at 0 is inf).
    let dist = desc
        .f_matmul(&desc.f_tr()?)?
        .f_mul_scalar(-2.0)?
        .f_add_scalar(2.0)?
        .f_clamp_min(1e-12)?
        .f_sqrt()?;
    let same = labels
        .f_unsqueeze(1)?
        .f_eq_tensor(&labels.f_unsqueeze(0)?)?;
    let eye = Tensor::f_eye(n, (Kind::Bool, desc.device()))?;
    let pos = same.f_logical_and(&eye.f_logical_not()?)?;
    let neg = same.f_logical_not()?;
    let hardest_pos = dist
        .f_mul(&pos.f_to_kind(Kind::Float)?)?
        .f_amax([1i64], false)?;
    // Same-class pairs pushed beyond every real distance (at most 2).
    let hardest_neg = dist
        .f_add(&same.f_to_kind(Kind::Float)?.f_mul_scalar(4.0)?)?
        .f_amin([1i64], false)?;
    let valid = pos
        .f_any_dim(1, false)?
        .f_logical_and(&neg.f_any_dim(1, false)?)?
        .f_to_kind(Kind::Float)?;
    let hinge = hardest_pos
        .f_sub(&hardest_neg)?
        .f_add_scalar(margin)?
        .f_relu()?
        .f_mul(&valid)?;
    Ok(hinge
        .f_sum(Kind::Float)?
        .f_div(&valid.f_sum(Kind::Float)?.f_clamp_min(1.0)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch-hard triplet by loops over pairs, in f64.
    fn triplet_reference(x: &[[f64; 2]], labels: &[i64], margin: f64) -> f64 {
        let d = |a: &[f64; 2], b: &[f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let (mut sum, mut n) = (0.0, 0);
        for (i, a) in x.iter().enumerate() {
            let pos = (0..x.len()).filter(|&j| j != i && labels[j] == labels[i]);
            let neg = (0..x.len()).filter(|&j| labels[j] != labels[i]);
            let hp = pos
                .map(|j| d(a, &x[j]))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let hn = neg
                .map(|j| d(a, &x[j]))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
            if let (Some(p), Some(q)) = (hp, hn) {
                sum += (p - q + margin).max(0.0);
                n += 1;
            }
        }
        sum / n.max(1) as f64
    }

    #[test]
    fn batch_hard_triplet_matches_the_pairwise_definition() {
        let angles = [0.0f64, 0.5, 1.2, 1.4, 2.9, 0.9];
        let x: Vec<[f64; 2]> = angles.iter().map(|a| [a.cos(), a.sin()]).collect();
        // Class 2 has a single item: an anchor without a positive adds nothing.
        let labels = [0i64, 0, 1, 1, 2, 0];
        let flat: Vec<f32> = x.iter().flatten().map(|&v| v as f32).collect();
        let desc = Tensor::from_slice(&flat).reshape([6, 2]);
        for margin in [0.0, 0.1, 0.5] {
            let got = batch_hard_triplet(&desc, &Tensor::from_slice(&labels), margin)
                .unwrap()
                .double_value(&[]);
            let want = triplet_reference(&x, &labels, margin);
            assert!(
                (got - want).abs() < 1e-5,
                "margin {margin}: {got} vs {want}"
            );
        }
        // Well separated classes with a small margin: no loss.
        let sep = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]).reshape([4, 2]);
        let l = batch_hard_triplet(&sep, &Tensor::from_slice(&[0i64, 0, 1, 1]), 0.1).unwrap();
        assert_eq!(l.double_value(&[]), 0.0);
    }

    #[test]
    fn cgd_classification_is_label_smoothed_and_temperature_scaled() {
        // One sample, three classes; the triplet term is zero (no positive in the batch).
        let logits = Tensor::from_slice(&[1.0f32, 0.2, -0.5]).reshape([1, 3]);
        let desc = Tensor::from_slice(&[1.0f32, 0.0]).reshape([1, 2]);
        let loss = CgdLoss {
            triplet_margin: 0.1,
            smoothing: 0.1,
            temperature: 0.5,
            first_pool: GlobalPool::Avg,
            classes: 3,
        };
        let out = loss
            .forward(&desc, &logits, &Tensor::from_slice(&[1i64]))
            .unwrap();
        let z: Vec<f64> = [1.0f64, 0.2, -0.5].iter().map(|v| v / 0.5).collect();
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        let nll: Vec<f64> = z.iter().map(|v| lse - v).collect();
        let want = 0.9 * nll[1] + 0.1 * nll.iter().sum::<f64>() / 3.0;
        assert!((out.loss.double_value(&[]) - want).abs() < 1e-5);
        assert_eq!(out.accuracy, 0.0);
    }

    fn unit(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, 2])
    }

    #[test]
    fn cosface_matches_its_formula_and_margins_raise_the_loss() {
        // Descriptor on class 0's centre exactly: cos = [1, 0].
        let desc = unit(&[[1.0, 0.0]]);
        let w = unit(&[[1.0, 0.0], [0.0, 1.0]]);
        let labels = Tensor::from_slice(&[0i64]);
        let l = |kind, margin| {
            MarginLoss {
                kind,
                scale: 2.0,
                margin,
            }
            .forward(&desc, &w, &labels)
            .unwrap()
        };
        let cos = l(Margin::Cosine, 0.4);
        // -log(e^{2 * 0.6} / (e^{2 * 0.6} + e^0)), small s so that nothing saturates.
        let want = (1.0 + (-1.2f64).exp()).ln();
        assert!((cos.loss.double_value(&[]) - want).abs() < 1e-6);
        assert_eq!(cos.accuracy, 1.0);
        let plain = l(Margin::None, 0.4).loss.double_value(&[]);
        let arc = l(Margin::Angular, 0.5).loss.double_value(&[]);
        assert!(plain < cos.loss.double_value(&[]) && plain < arc);
    }
}
