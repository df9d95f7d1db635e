//! The model's variables, created under the export's state_dict keys from the
//! architecture's parameter specs, initialised from a pretrained checkpoint where it has
//! the key and freshly otherwise.
use tch::{Kind, Tensor};

use crate::tch_ops::{from_host, TchVars};
use crate::train::error::{Result, TrainError};
use lookalike::model::arch::Arch;
use lookalike::model::error::WeightReport;
use lookalike::model::forward::HEAD_PREFIX;
use lookalike::model::head::HeadConfig;
use lookalike::model::spec_ops::{parameter_specs, ParamSpec};
use lookalike::model::vars::{ParamKind, Weights};
use lookalike::model::weights::StateDict;

/// One trainable tensor and how the optimiser treats it.
pub struct Trainable {
    pub key: String,
    pub tensor: Tensor,
    /// Weight decay applies (not to norms and biases).
    pub decay: bool,
    /// Part of the head (its own learning-rate multiplier).
    pub head: bool,
}

pub struct ModelVars {
    pub vars: TchVars,
    pub trainable: Vec<Trainable>,
    /// What the pretrained checkpoint lacked (initialised fresh) or had in excess.
    pub report: WeightReport,
}

fn is_skipped(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// Fresh value for a key the checkpoint lacks: BN identity, Kaiming for weights.
fn fresh(spec: &ParamSpec, device: tch::Device) -> Result<Tensor> {
    let shape: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
    let leaf = spec.key.rsplit('.').next().unwrap_or_default();
    let opts = (Kind::Float, device);
    let t = match (leaf, shape.len()) {
        ("running_var", _) => Tensor::f_ones(&shape, opts)?,
        ("weight", 1) => Tensor::f_ones(&shape, opts)?,
        ("weight", _) => {
            // nn.Linear / nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            let fan_in: i64 = shape[1..].iter().product();
            let b = 1.0 / (fan_in.max(1) as f64).sqrt();
            Tensor::f_empty(&shape, opts)?.f_uniform_(-b, b)?
        }
        _ => Tensor::f_zeros(&shape, opts)?,
    };
    Ok(t)
}

/// Variables for `arch` + `head`; `pretrained` fills the keys it has (its classifier is
/// ignored). `frozen` key prefixes get no gradient. Every tensor lives on `device`.
pub fn init(
    arch: Arch,
    head: &HeadConfig,
    pretrained: Option<StateDict>,
    frozen: &[String],
    device: tch::Device,
) -> Result<ModelVars> {
    let specs = parameter_specs(arch, head, false)?;
    let mut weights = pretrained.map(|d| {
        let mut w = Weights::new(d);
        w.ignore_prefix(arch.classifier_prefix());
        w
    });
    let mut vars = TchVars::default();
    let mut trainable = Vec::new();
    for spec in &specs {
        if is_skipped(&spec.key) {
            if let Some(w) = weights.as_mut() {
                w.consume_optional(&spec.key);
            }
            continue;
        }
        let t = match weights.as_mut() {
            Some(w) => {
                let before = w.report().missing.len();
                let host = w.get(&spec.key, &spec.shape);
                if w.report().missing.len() > before {
                    fresh(spec, device)?
                } else {
                    from_host(&host)?.f_to_device(device)?
                }
            }
            None => fresh(spec, device)?,
        };
        let is_param = spec.kind == ParamKind::Param;
        let learn = is_param && !frozen.iter().any(|p| spec.key.starts_with(p.as_str()));
        let t = t.f_set_requires_grad(learn)?;
        if learn {
            trainable.push(Trainable {
                key: spec.key.clone(),
                tensor: t.shallow_clone(),
                decay: spec.shape.len() > 1,
                head: spec.key.starts_with(&format!("{HEAD_PREFIX}.")),
            });
        }
        vars.tensors.insert(spec.key.clone(), t);
    }
    let report = weights.map(|w| w.report()).unwrap_or_default();
    if !report.shape_mismatch.is_empty() {
        return Err(TrainError::Model(lookalike::model::ModelError::Weights(
            report,
        )));
    }
    Ok(ModelVars {
        vars,
        trainable,
        report,
    })
}

/// Overwrites variables with a checkpoint's values (resume); every key must match.
pub fn load_into(vars: &TchVars, state: &StateDict) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (key, t) in &vars.tensors {
        let host = state
            .get(key)
            .ok_or_else(|| TrainError::Data(format!("checkpoint lacks {key}")))?;
        let mut dst = t.shallow_clone();
        dst.f_copy_(&from_host(host)?)?;
    }
    Ok(())
}
