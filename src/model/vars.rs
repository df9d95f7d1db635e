//! Path-scoped parameter names (like candle's VarBuilder) and the checkpoint tracker
//! that reports every missing, unexpected and mis-shaped key at once.
use std::collections::BTreeSet;
use std::fmt::Display;

use crate::model::error::{ModelError, Result, ShapeMismatch, WeightReport};
use crate::model::tensor::HostTensor;
use crate::model::weights::StateDict;

/// A dotted name prefix: `VarPath::root().pp("_blocks").pp(3).key("weight")`
/// gives `_blocks.3.weight`, i.e. exactly the PyTorch state_dict key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarPath {
    prefix: String,
}

impl VarPath {
    pub fn root() -> Self {
        Self::default()
    }
    pub fn pp(&self, part: impl Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        Self { prefix }
    }
    pub fn key(&self, leaf: &str) -> String {
        self.pp(leaf).prefix
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Trainable parameter or running statistic (buffer) — matters for parameter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Param,
    Buffer,
}

/// Serves tensors out of a state dict while recording what was asked for.
pub struct Weights {
    dict: StateDict,
    used: BTreeSet<String>,
    report: WeightReport,
}

impl Weights {
    pub fn new(dict: StateDict) -> Self {
        Self {
            dict,
            used: BTreeSet::new(),
            report: WeightReport::default(),
        }
    }

    /// Fetches `key` with the expected shape. A missing or mis-shaped key is recorded and a
    /// zero tensor returned so that the whole architecture is walked and all problems listed.
    pub fn get(&mut self, key: &str, shape: &[usize]) -> HostTensor {
        self.used.insert(key.to_string());
        match self.dict.get(key) {
            Some(t) if t.shape == shape => t.clone(),
            Some(t) => {
                self.report.shape_mismatch.push(ShapeMismatch {
                    key: key.to_string(),
                    expected: shape.to_vec(),
                    found: t.shape.clone(),
                });
                HostTensor::zeros(shape)
            }
            None => {
                self.report.missing.push(key.to_string());
                HostTensor::zeros(shape)
            }
        }
    }

    /// Marks a key as consumed if present (e.g. BatchNorm's `num_batches_tracked`).
    pub fn consume_optional(&mut self, key: &str) {
        if self.dict.contains_key(key) {
            self.used.insert(key.to_string());
        }
    }

    /// Marks every key under `prefix.` as deliberately unused (e.g. a dropped classifier).
    pub fn ignore_prefix(&mut self, prefix: &str) {
        let p = format!("{prefix}.");
        let keys: Vec<String> = self
            .dict
            .keys()
            .filter(|k| k.starts_with(&p))
            .cloned()
            .collect();
        self.used.extend(keys);
    }

    /// Everything wrong so far, plus checkpoint keys nobody used.
    pub fn report(&self) -> WeightReport {
        let mut r = self.report.clone();
        r.unexpected = self
            .dict
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        r
    }

    pub fn finish(&self) -> Result<()> {
        let r = self.report();
        if r.is_clean() {
            Ok(())
        } else {
            Err(ModelError::Weights(r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_scoping_builds_state_dict_keys() {
        let p = VarPath::root().pp("_blocks").pp(3).pp("_expand_conv");
        assert_eq!(p.key("weight"), "_blocks.3._expand_conv.weight");
        assert_eq!(VarPath::root().key("bias"), "bias");
    }

    #[test]
    fn reports_missing_unexpected_and_mismatched_together() {
        let mut d = StateDict::new();
        d.insert("a.weight".into(), HostTensor::zeros(&[2, 2]));
        d.insert("b.weight".into(), HostTensor::zeros(&[3]));
        d.insert("fc.weight".into(), HostTensor::zeros(&[1]));
        d.insert("extra".into(), HostTensor::zeros(&[1]));
        let mut w = Weights::new(d);
        assert_eq!(w.get("a.weight", &[2, 2]).shape, vec![2, 2]);
        assert_eq!(w.get("b.weight", &[4]).shape, vec![4]);
        w.get("c.weight", &[1]);
        w.ignore_prefix("fc");
        let ModelError::Weights(r) = w.finish().unwrap_err() else {
            panic!("expected a weight report")
        };
        assert_eq!(r.missing, vec!["c.weight"]);
        assert_eq!(r.unexpected, vec!["extra"]);
        assert_eq!(
            r.shape_mismatch,
            vec![ShapeMismatch {
                key: "b.weight".into(),
                expected: vec![4],
                found: vec![3]
            }]
        );
        let msg = ModelError::Weights(r).to_string();
        assert!(
            msg.contains("c.weight") && msg.contains("extra") && msg.contains("b.weight"),
            "{msg}"
        );
    }
}
