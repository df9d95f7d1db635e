//! Deterministic stand-in values for tests and benchmarks: pseudo-random inputs, and
//! weights for a model's parameter list. Not a model anyone should serve.

use super::spec_ops::ParamSpec;
use super::tensor::HostTensor;
use super::weights::StateDict;

/// `n` values in [-1, 1) from a linear congruential generator seeded with `seed`.
pub fn pseudo_random(seed: u32, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// A value for every tensor `specs` lists: pseudo-random times `gain` (parameter i
/// seeded with `seed + i`), and unit running variances so batch norm stays finite.
pub fn weights(specs: &[ParamSpec], seed: u32, gain: f32) -> StateDict {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.shape.iter().product();
            let data = if s.key.ends_with("running_var") {
                vec![1.0; n]
            } else {
                pseudo_random(seed.wrapping_add(i as u32), n)
                    .iter()
                    .map(|v| v * gain)
                    .collect()
            };
            let t = HostTensor::new(s.shape.clone(), data)
                .expect("a shape's product is its value count");
            (s.key.clone(), t)
        })
        .collect()
}
