//! Evaluation: the spec's metrics (section 2) and descriptor files.

pub mod metrics;
pub mod npy;
