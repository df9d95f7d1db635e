//! Where a run trains (`--device`), and mixed precision on CUDA.
//!
//! The device is a property of the invocation, not of the run: a run
//! started on a GPU may be resumed on the CPU and the other way round
//! (checkpoints hold host tensors).
//!
//! Mixed precision is libtorch's autocast (FP16 matmuls and convolutions,
//! FP32 where precision matters) with dynamic loss scaling: the loss is
//! multiplied by `scale` before the backward pass so that small FP16
//! gradients do not flush to zero; the gradients are divided by it again
//! before clipping, and a step whose gradients overflowed is skipped and
//! halves the scale (PyTorch's GradScaler, with its defaults). On the CPU
//! autocast does nothing, so it is off there.
use tch::Device;

use crate::train::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The first CUDA device when libtorch sees one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The device `choice` names; an error a person can act on when CUDA is
/// asked for and libtorch has none.
pub fn resolve(choice: DeviceChoice) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    match (choice, cuda) {
        (DeviceChoice::Cpu, _) | (DeviceChoice::Auto, false) => Ok(Device::Cpu),
        (DeviceChoice::Cuda | DeviceChoice::Auto, true) => Ok(Device::Cuda(0)),
        (DeviceChoice::Cuda, false) => Err(TrainError::InvalidOption(format!(
            "--device cuda: libtorch sees no CUDA device. {} Or train with --device cpu",
            if cfg!(feature = "cuda") {
                "This build links libtorch_cuda: run it on a machine with an NVIDIA GPU and driver."
            } else {
                "This build does not link libtorch_cuda: build the trainer with `--features cuda` \
                 (scripts/train-setup.sh installs the CUDA PyTorch) and run it on a machine with \
                 an NVIDIA GPU and driver."
            }
        ))),
    }
}

/// PyTorch's GradScaler defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;

/// Dynamic loss scaling for FP16 autocast.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScale {
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub good_steps: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: INIT_SCALE,
            good_steps: 0,
        }
    }
}

impl LossScale {
    /// After a step whose unscaled gradient norm was `norm`: whether to
    /// apply the step (finite gradients); updates the scale.
    pub fn update(&mut self, norm: f64) -> bool {
        if !norm.is_finite() {
            self.scale = (self.scale * 0.5).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

/// Mixed precision for one invocation: on only where autocast works.
pub fn mixed_precision(device: Device, wanted: bool) -> Option<LossScale> {
    (wanted && device.is_cuda()).then(LossScale::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_auto_falls_back_to_it() {
        assert_eq!(resolve(DeviceChoice::Cpu).unwrap(), Device::Cpu);
        let auto = resolve(DeviceChoice::Auto).unwrap();
        assert_eq!(auto.is_cuda(), tch::Cuda::is_available());
    }

    #[test]
    fn cuda_without_a_device_is_a_clear_error() {
        if tch::Cuda::is_available() {
            return;
        }
        let e = resolve(DeviceChoice::Cuda).unwrap_err().to_string();
        assert!(
            e.contains("--device cuda") && e.contains("--device cpu"),
            "{e}"
        );
    }

    #[test]
    fn overflow_halves_the_scale_and_skips_the_step_and_growth_doubles_it() {
        let mut s = LossScale::default();
        assert!(!s.update(f64::INFINITY));
        assert!(!s.update(f64::NAN));
        assert_eq!(s.scale, INIT_SCALE / 4.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(1.0));
        }
        assert_eq!(s.scale, INIT_SCALE / 4.0);
        assert!(s.update(1.0));
        assert_eq!((s.scale, s.good_steps), (INIT_SCALE / 2.0, 0));
        assert!(
            mixed_precision(Device::Cpu, true).is_none(),
            "autocast is CUDA-only"
        );
        assert!(mixed_precision(Device::Cuda(0), false).is_none());
    }
}
