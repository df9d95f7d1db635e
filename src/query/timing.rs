//! Stage timings as both transports report them.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Timing {
    pub stage: String,
    pub micros: u64,
}

impl Timing {
    pub fn new(stage: impl Into<String>, d: Duration) -> Self {
        Self {
            stage: stage.into(),
            micros: d.as_micros() as u64,
        }
    }
}

/// Each `(stage, time)` as a [`Timing`], in order.
pub fn timings<S: Into<String>>(t: impl IntoIterator<Item = (S, Duration)>) -> Vec<Timing> {
    t.into_iter().map(|(s, d)| Timing::new(s, d)).collect()
}
