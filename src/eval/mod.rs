//! Evaluation: the spec's metrics (section 2), descriptor files and the
//! metrics chart.

pub mod chart;
pub mod metrics;
pub mod npy;
