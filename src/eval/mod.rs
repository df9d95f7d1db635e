//! Evaluation: the spec's metrics (section 2), descriptor files, the
//! metrics chart and the emulation of the service's online KR.

pub mod chart;
pub mod metrics;
pub mod npy;
pub mod online;
