//! Learning rate per iteration: linear warm-up, then cosine or linear decay to zero.
use crate::train::config::ScheduleKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base: f64,
    pub warmup: usize,
    pub total: usize,
}

impl Schedule {
    /// Rate for optimiser step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        match self.kind {
            ScheduleKind::Cosine => self.base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            ScheduleKind::Linear => self.base * (1.0 - t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            base: 1.0,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
        let l = Schedule {
            kind: ScheduleKind::Linear,
            ..s
        };
        assert!((l.lr(60) - 0.5).abs() < 1e-12);
    }
}
