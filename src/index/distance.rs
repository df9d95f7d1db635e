//! Distances between L2-normalised descriptors.
//!
//! hnsw_rs's `DistDot` panics when rounding makes `1 - a·b` slightly
//! negative, which happens for (near-)identical unit vectors; this one
//! clamps at zero instead.

use hnsw_rs::prelude::Distance;

/// Dot product. Dispatches at run time to an AVX2+FMA build of the same
/// loop where the CPU has it (3x faster than the SSE2 baseline the crate
/// is compiled for), so one binary stays portable.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_any(a, b)
}

/// Dot product of `a` with int8 `codes` (the first pass of
/// `flat::FlatRows`), by the same loop.
pub fn dot_codes(a: &[f32], codes: &[i8]) -> f32 {
    dot_any(a, codes)
}

fn dot_any<T: Copy + Into<f32>>(a: &[f32], b: &[T]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is built for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_with(a, b, |x, y, acc| acc + x * y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<T: Copy + Into<f32>>(a: &[f32], b: &[T]) -> f32 {
    dot_with(a, b, f32::mul_add)
}

/// Several independent accumulators so the loop vectorises; `madd(x, y,
/// acc)` is a fused multiply-add where the CPU has one (without FMA
/// hardware `mul_add` is a slow library call).
#[inline(always)]
fn dot_with<T: Copy + Into<f32>>(a: &[f32], b: &[T], madd: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, &y)| x * y.into())
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = madd(x[i], y[i].into(), acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Cosine distance `max(0, 1 - a·b)` for unit vectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// Euclidean distance between unit vectors from their cosine distance:
/// `d² = 2 - 2 a·b = 2 (1 - a·b)`.
pub fn euclidean_from_cosine(cos_dist: f32) -> f32 {
    (2.0 * cos_dist.max(0.0)).sqrt()
}

/// Scales `v` to unit length; `None` for a zero or non-finite vector,
/// which has no direction to compare. Divides by the largest magnitude
/// first, so finite vectors whose squared norm overflows f32 (all 1e30)
/// or underflows it keep their direction.
pub fn normalised(v: &[f32]) -> Option<Vec<f32>> {
    let m = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if !m.is_finite() || m == 0.0 || v.iter().any(|x| x.is_nan()) {
        return None;
    }
    let scaled: Vec<f32> = v.iter().map(|x| x / m).collect();
    let n = dot(&scaled, &scaled).sqrt();
    Some(scaled.iter().map(|x| x / n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-5);
    }

    #[test]
    fn identical_unit_vectors_do_not_go_negative() {
        let v = normalised(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]).unwrap();
        let d = UnitCosine.eval(&v, &v);
        assert!((0.0..1e-6).contains(&d));
        assert_eq!(euclidean_from_cosine(1.0), 2f32.sqrt());
    }

    #[test]
    fn zero_vector_has_no_direction() {
        assert!(normalised(&[0.0, 0.0]).is_none());
        assert!(normalised(&[f32::NAN, 1.0]).is_none());
        assert!(normalised(&[f32::INFINITY, 1.0]).is_none());
    }

    #[test]
    fn huge_and_tiny_finite_vectors_keep_their_direction() {
        let h = 0.5f32.sqrt();
        for scale in [1e30f32, 1e-30, f32::MAX, f32::MIN_POSITIVE] {
            let v = normalised(&[scale, -scale]).unwrap();
            assert!(
                (v[0] - h).abs() < 1e-6 && (v[1] + h).abs() < 1e-6,
                "{scale}"
            );
        }
    }
}
