//! Training augmentation, the DIGIX 2020 recipe by default: horizontal flip, random
//! perspective, colour jitter, random crop, rotation by multiples of 90 degrees, random
//! erasing. Pure functions of the image and a seeded RNG, so a sample's augmentation is
//! reproducible whatever thread makes it.
use image::{Rgb, RgbImage};
use nalgebra::{SMatrix, SVector};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AugmentConfig {
    /// Turn every augmentation off (a centre crop, as the server does).
    #[arg(long)]
    pub no_augment: bool,
    #[arg(long, default_value_t = 0.5)]
    pub flip_p: f64,
    #[arg(long, default_value_t = 0.5)]
    pub perspective_p: f64,
    /// Corner displacement as a fraction of half the side.
    #[arg(long, default_value_t = 0.3)]
    pub perspective_distortion: f64,
    #[arg(long, default_value_t = 0.5)]
    pub jitter_p: f64,
    /// Brightness and contrast factors drawn from [1 - b, 1 + b].
    #[arg(long, default_value_t = 0.5)]
    pub brightness: f64,
    #[arg(long, default_value_t = 0.5)]
    pub contrast: f64,
    /// Saturation factor range.
    #[arg(long, default_value_t = 0.5)]
    pub saturation_min: f64,
    #[arg(long, default_value_t = 2.0)]
    pub saturation_max: f64,
    /// Hue shift drawn from [-h, h] (fraction of the colour wheel).
    #[arg(long, default_value_t = 0.1)]
    pub hue: f64,
    #[arg(long, default_value_t = 0.3)]
    pub rot90_p: f64,
    #[arg(long, default_value_t = 0.5)]
    pub erase_p: f64,
    #[arg(long, default_value_t = 0.02)]
    pub erase_area_min: f64,
    #[arg(long, default_value_t = 0.2)]
    pub erase_area_max: f64,
    #[arg(long, default_value_t = 0.3)]
    pub erase_aspect_min: f64,
    #[arg(long, default_value_t = 3.3)]
    pub erase_aspect_max: f64,
}

/// Normalisation and crop side of the network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Augments `img` (already resized so that its shorter side is the serving resize) into
/// a normalised CHW crop of `t.size` in `out`.
pub fn augment<R: Rng>(
    img: &RgbImage,
    cfg: &AugmentConfig,
    t: &Target,
    rng: &mut R,
    out: &mut [f32],
) {
    if cfg.no_augment {
        let crop = centre_crop(img, t.size);
        normalise(&crop, t, out);
        return;
    }
    let mut im = img.clone();
    if rng.random_bool(cfg.flip_p.clamp(0.0, 1.0)) {
        image::imageops::flip_horizontal_in_place(&mut im);
    }
    if rng.random_bool(cfg.perspective_p.clamp(0.0, 1.0)) {
        im = perspective(&im, cfg.perspective_distortion, rng);
    }
    if rng.random_bool(cfg.jitter_p.clamp(0.0, 1.0)) {
        colour_jitter(&mut im, cfg, rng);
    }
    let mut crop = random_crop(&im, t.size, rng);
    if rng.random_bool(cfg.rot90_p.clamp(0.0, 1.0)) {
        crop = match rng.random_range(0..3) {
            0 => image::imageops::rotate90(&crop),
            1 => image::imageops::rotate180(&crop),
            _ => image::imageops::rotate270(&crop),
        };
    }
    normalise(&crop, t, out);
    if rng.random_bool(cfg.erase_p.clamp(0.0, 1.0)) {
        random_erase(out, t.size as usize, cfg, rng);
    }
}

fn centre_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (x, y) = (w.saturating_sub(size) / 2, h.saturating_sub(size) / 2);
    crop_at(img, x, y, size)
}

fn random_crop<R: Rng>(img: &RgbImage, size: u32, rng: &mut R) -> RgbImage {
    let (w, h) = img.dimensions();
    let x = rng.random_range(0..=w.saturating_sub(size));
    let y = rng.random_range(0..=h.saturating_sub(size));
    crop_at(img, x, y, size)
}

/// A `size` square from (x, y); pixels beyond the image are black.
fn crop_at(img: &RgbImage, x: u32, y: u32, size: u32) -> RgbImage {
    RgbImage::from_fn(size, size, |i, j| {
        img.get_pixel_checked(x + i, y + j)
            .copied()
            .unwrap_or(Rgb([0, 0, 0]))
    })
}

fn normalise(img: &RgbImage, t: &Target, out: &mut [f32]) {
    let plane = (t.size * t.size) as usize;
    for (i, px) in img.pixels().enumerate().take(plane) {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - t.mean[c]) / t.std[c];
        }
    }
}

/// The homography taking each `from[i]` to `to[i]`.
fn homography(from: &[(f64, f64); 4], to: &[(f64, f64); 4]) -> Option<SMatrix<f64, 3, 3>> {
    let mut a = SMatrix::<f64, 8, 8>::zeros();
    let mut b = SVector::<f64, 8>::zeros();
    for (i, (&(x, y), &(u, v))) in from.iter().zip(to).enumerate() {
        let r = 2 * i;
        let rows = [
            [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y],
            [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y],
        ];
        for (dr, row) in rows.iter().enumerate() {
            for (k, val) in row.iter().enumerate() {
                a[(r + dr, k)] = *val;
            }
        }
        b[r] = u;
        b[r + 1] = v;
    }
    let h = a.lu().solve(&b)?;
    Some(SMatrix::<f64, 3, 3>::new(
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 1.0,
    ))
}

/// torchvision's RandomPerspective: each corner moves inwards by up to
/// `distortion` x half the side; the rest is black.
fn perspective<R: Rng>(img: &RgbImage, distortion: f64, rng: &mut R) -> RgbImage {
    let (w, h) = img.dimensions();
    let (wf, hf) = (w as f64 - 1.0, h as f64 - 1.0);
    let (dx, dy) = (distortion * wf / 2.0, distortion * hf / 2.0);
    let mut j = |d: f64| {
        if d > 0.0 {
            rng.random_range(0.0..=d)
        } else {
            0.0
        }
    };
    let corners = [(0.0, 0.0), (wf, 0.0), (wf, hf), (0.0, hf)];
    let moved = [
        (j(dx), j(dy)),
        (wf - j(dx), j(dy)),
        (wf - j(dx), hf - j(dy)),
        (j(dx), hf - j(dy)),
    ];
    // Output pixel -> source pixel: the map from the moved corners back to the originals.
    let Some(m) = homography(&moved, &corners) else {
        return img.clone();
    };
    RgbImage::from_fn(w, h, |x, y| {
        let p = m * SVector::<f64, 3>::new(x as f64, y as f64, 1.0);
        if p[2].abs() < 1e-12 {
            return Rgb([0, 0, 0]);
        }
        bilinear(img, p[0] / p[2], p[1] / p[2])
    })
}

fn bilinear(img: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (w, h) = img.dimensions();
    if x < 0.0 || y < 0.0 || x > (w - 1) as f64 || y > (h - 1) as f64 {
        return Rgb([0, 0, 0]);
    }
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let p = |xx, yy| img.get_pixel(xx, yy).0.map(f64::from);
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    Rgb(std::array::from_fn(|k| {
        let top = a[k] * (1.0 - fx) + b[k] * fx;
        let bot = c[k] * (1.0 - fx) + d[k] * fx;
        (top * (1.0 - fy) + bot * fy).round().clamp(0.0, 255.0) as u8
    }))
}

fn luma(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Brightness, contrast, saturation, hue (torchvision's order), on [0, 1] values.
fn colour_jitter<R: Rng>(img: &mut RgbImage, cfg: &AugmentConfig, rng: &mut R) {
    let mut factor = |lo: f64, hi: f64| {
        if hi > lo {
            rng.random_range(lo..=hi) as f32
        } else {
            lo as f32
        }
    };
    let b = factor((1.0 - cfg.brightness).max(0.0), 1.0 + cfg.brightness);
    let c = factor((1.0 - cfg.contrast).max(0.0), 1.0 + cfg.contrast);
    let s = factor(cfg.saturation_min.max(0.0), cfg.saturation_max);
    let hshift = factor(-cfg.hue, cfg.hue);
    let n = (img.width() * img.height()).max(1) as f32;
    // Contrast blends towards the mean grey of the brightness-adjusted image.
    let mean = img
        .pixels()
        .map(|p| luma(p.0.map(|v| (v as f32 / 255.0 * b).min(1.0))))
        .sum::<f32>()
        / n;
    for px in img.pixels_mut() {
        let mut v = px.0.map(|v| (v as f32 / 255.0 * b).clamp(0.0, 1.0));
        v = v.map(|x| ((x - mean) * c + mean).clamp(0.0, 1.0));
        let g = luma(v);
        v = v.map(|x| ((x - g) * s + g).clamp(0.0, 1.0));
        if hshift != 0.0 {
            v = shift_hue(v, hshift);
        }
        px.0 = v.map(|x| (x * 255.0).round().clamp(0.0, 255.0) as u8);
    }
}

fn shift_hue([r, g, b]: [f32; 3], shift: f32) -> [f32; 3] {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    if d <= 0.0 {
        return [r, g, b];
    }
    let h = if max == r {
        ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        (b - r) / d + 2.0
    } else {
        (r - g) / d + 4.0
    } / 6.0;
    let h = (h + shift).rem_euclid(1.0) * 6.0;
    let (s, v) = (d / max, max);
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as u32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// torchvision's RandomErasing (value 0 on the normalised input), up to 10 tries.
fn random_erase<R: Rng>(out: &mut [f32], size: usize, cfg: &AugmentConfig, rng: &mut R) {
    let area = (size * size) as f64;
    let (amin, amax) = (
        cfg.erase_area_min,
        cfg.erase_area_max.max(cfg.erase_area_min),
    );
    let (rmin, rmax) = (
        cfg.erase_aspect_min.ln(),
        cfg.erase_aspect_max.ln().max(cfg.erase_aspect_min.ln()),
    );
    for _ in 0..10 {
        let target = area * rng.random_range(amin..=amax);
        let aspect = rng.random_range(rmin..=rmax).exp();
        let eh = (target * aspect).sqrt().round() as usize;
        let ew = (target / aspect).sqrt().round() as usize;
        if eh == 0 || ew == 0 || eh >= size || ew >= size {
            continue;
        }
        let y0 = rng.random_range(0..=size - eh);
        let x0 = rng.random_range(0..=size - ew);
        for c in 0..3 {
            for y in y0..y0 + eh {
                let row = c * size * size + y * size;
                out[row + x0..row + x0 + ew].fill(0.0);
            }
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cfg() -> AugmentConfig {
        AugmentConfig {
            no_augment: false,
            flip_p: 0.5,
            perspective_p: 0.5,
            perspective_distortion: 0.3,
            jitter_p: 0.5,
            brightness: 0.5,
            contrast: 0.5,
            saturation_min: 0.5,
            saturation_max: 2.0,
            hue: 0.1,
            rot90_p: 0.3,
            erase_p: 0.5,
            erase_area_min: 0.02,
            erase_area_max: 0.2,
            erase_aspect_min: 0.3,
            erase_aspect_max: 3.3,
        }
    }

    fn target() -> Target {
        Target {
            size: 32,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    fn gradient() -> RgbImage {
        RgbImage::from_fn(48, 40, |x, y| Rgb([(x * 5) as u8, (y * 6) as u8, 100]))
    }

    fn run(seed: u64, c: &AugmentConfig) -> Vec<f32> {
        let mut out = vec![0.0; 3 * 32 * 32];
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        augment(&gradient(), c, &target(), &mut rng, &mut out);
        out
    }

    #[test]
    fn same_seed_same_sample_other_seed_other_sample() {
        let c = cfg();
        assert_eq!(run(3, &c), run(3, &c));
        assert_ne!(run(3, &c), run(4, &c));
    }

    #[test]
    fn no_augment_is_the_centre_crop() {
        let c = AugmentConfig {
            no_augment: true,
            ..cfg()
        };
        let out = run(0, &c);
        // Centre crop of 48x40 to 32 starts at (8, 4): red = 5 x, green = 6 y.
        let px = |c: usize, x: usize, y: usize| out[c * 1024 + y * 32 + x];
        assert!((px(0, 0, 0) - ((40.0 / 255.0 - 0.5) / 0.5)).abs() < 1e-6);
        assert!((px(1, 0, 0) - ((24.0 / 255.0 - 0.5) / 0.5)).abs() < 1e-6);
    }

    #[test]
    fn identity_perspective_is_identity_and_hue_round_trips() {
        let img = gradient();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(perspective(&img, 0.0, &mut rng), img);
        let v = [0.8, 0.3, 0.1];
        let back = shift_hue(shift_hue(v, 0.25), -0.25);
        assert!(v.iter().zip(back).all(|(a, b)| (a - b).abs() < 1e-5));
        // A third of the wheel turns red into green.
        let g = shift_hue([1.0, 0.0, 0.0], 1.0 / 3.0);
        assert!((g[1] - 1.0).abs() < 1e-5 && g[0].abs() < 1e-5);
    }

    #[test]
    fn erasing_zeroes_a_rectangle_within_the_area_bounds() {
        let mut out = vec![1.0; 3 * 32 * 32];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        random_erase(&mut out, 32, &cfg(), &mut rng);
        let zeros = out[..1024].iter().filter(|v| **v == 0.0).count() as f64 / 1024.0;
        assert!((0.01..=0.25).contains(&zeros), "erased fraction {zeros}");
    }
}
