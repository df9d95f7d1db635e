//! Margin losses on the L2-normalised descriptor: cosine logits against learned class
//! centres, with CosFace's or ArcFace's margin on the true class. The class weights live
//! with the trainer, never in the exported model.
use tch::{Kind, Reduction, Tensor};

use crate::train::config::LossKind;
use crate::train::error::Result;

/// Key of the class-centre matrix [classes, dim] in the trainer's state.
pub const CLASS_WEIGHT_KEY: &str = "loss.weight";

pub struct MarginLoss {
    pub kind: LossKind,
    pub scale: f64,
    pub margin: f64,
}

pub struct LossOut {
    pub loss: Tensor,
    /// Fraction of the batch whose nearest class centre is the true one.
    pub accuracy: f64,
}

impl MarginLoss {
    /// Class centres, uniformly random directions (normalised in the loss).
    pub fn init_weight(classes: usize, dim: usize) -> Result<Tensor> {
        let w = Tensor::f_randn(
            [classes as i64, dim as i64],
            (Kind::Float, tch::Device::Cpu),
        )?;
        Ok(w.f_set_requires_grad(true)?)
    }

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
            LossKind::Cosface => cos.f_sub_scalar(self.margin)?,
            LossKind::Arcface => {
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
            LossKind::Softmax => cos.shallow_clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let cos = l(LossKind::Cosface, 0.4);
        // -log(e^{2 * 0.6} / (e^{2 * 0.6} + e^0)), small s so that nothing saturates.
        let want = (1.0 + (-1.2f64).exp()).ln();
        assert!((cos.loss.double_value(&[]) - want).abs() < 1e-6);
        assert_eq!(cos.accuracy, 1.0);
        let plain = l(LossKind::Softmax, 0.4).loss.double_value(&[]);
        let arc = l(LossKind::Arcface, 0.5).loss.double_value(&[]);
        assert!(plain < cos.loss.double_value(&[]) && plain < arc);
    }
}
