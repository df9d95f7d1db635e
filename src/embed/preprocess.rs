//! Image bytes -> normalised NCHW input rows (spec section 1, steps 1-2).
//!
//! The pixel limit is checked against the dimensions the header announces,
//! before any pixel is decoded, so a decompression bomb costs nothing.

use std::io::Cursor;
use std::time::Instant;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

pub use crate::model::ResizePolicy;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ImageError {
    #[error("image is empty (0 bytes)")]
    Empty,
    #[error("image is {size} bytes, over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("unrecognised image format: send JPEG, PNG, WebP, BMP or GIF")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {max} pixels; downscale it first")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("image has zero width or height ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("lossless WebP announces {width}x{height}; the WebP decoder cannot read images 16384 pixels wide or high (it takes such a side for zero): downscale to at most 16383 pixels a side")]
    WebpTooWide { width: u32, height: u32 },
    #[error("image could not be decoded: {0}")]
    Decode(String),
}

/// Limits applied before decoding.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeLimits {
    pub max_bytes: usize,
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 << 20,
            max_pixels: 40_000_000,
        }
    }
}

/// One backbone's input geometry and normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub input_size: u32,
    pub resize: u32,
    pub policy: ResizePolicy,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputSpec {
    /// Number of f32 values one image occupies in the input tensor.
    pub fn values(&self) -> usize {
        3 * (self.input_size as usize).pow(2)
    }
}

/// Decodes (first frame for GIF), applies EXIF orientation, converts to RGB.
/// Each image decoded is counted in the `decode` stage metric.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let t = Instant::now();
    let img = decode_uncounted(bytes, limits)?;
    crate::telemetry::metrics().observe_stage("decode", t.elapsed());
    Ok(img)
}

fn decode_uncounted(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge {
            size: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let decode_err = |e: image::ImageError| ImageError::Decode(e.to_string());
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    match reader.format() {
        None => return Err(ImageError::UnknownFormat),
        // The JPEG decoder pads a cut-off file with grey instead of failing.
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(ImageError::Decode(
                "JPEG data is truncated (no end-of-image marker)".into(),
            ))
        }
        Some(_) => {}
    }
    let mut reader = reader;
    reader.limits(Limits::no_limits()); // our own pixel check below, with a clearer message
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if width == 0 || height == 0 {
        if let Some((width, height)) = vp8l_announced_size(bytes) {
            return Err(ImageError::WebpTooWide { width, height });
        }
        return Err(ImageError::ZeroSize { width, height });
    }
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            pixels,
            max: limits.max_pixels,
        });
    }
    let mut alloc_limit = Limits::default();
    alloc_limit.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    decoder.set_limits(alloc_limit).map_err(decode_err)?;
    let orientation = decoder.orientation().map_err(decode_err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// The size a simple lossless WebP (RIFF, VP8L chunk first) announces,
/// when a side is 16384: image-webp 0.2 masks `1 + (w - 1)` to 14 bits, so
/// it reports such a side as 0.
fn vp8l_announced_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 25
        || &bytes[0..4] != b"RIFF"
        || &bytes[8..16] != b"WEBPVP8L"
        || bytes[20] != 0x2f
    {
        return None;
    }
    let h = u32::from_le_bytes([bytes[21], bytes[22], bytes[23], bytes[24]]);
    let (width, height) = ((h & 0x3FFF) + 1, ((h >> 14) & 0x3FFF) + 1);
    (width == 16384 || height == 16384).then_some((width, height))
}

/// Whether a JPEG's main image runs to its end-of-image marker. Walks the
/// marker segments (skipping APPn, whose EXIF thumbnail has its own
/// markers) to the first scan, then looks for EOI in the entropy-coded
/// data, where a literal 0xFF is always stuffed as FF 00.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if marker == 0xDA {
            return b[i + 2 + len.min(b.len() - i - 2)..]
                .windows(2)
                .any(|w| w == [0xFF, 0xD9]);
        }
        i += 2 + len;
    }
    false
}

/// Resizes, crops and normalises `img` into `out` (CHW, `spec.len()` values).
pub fn write_input(img: &RgbImage, spec: &InputSpec, out: &mut [f32]) -> Result<(), ImageError> {
    let size = spec.input_size;
    let (w, h) = img.dimensions();
    let resize_err = |e: &dyn std::fmt::Display| ImageError::Decode(format!("resize failed: {e}"));
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| resize_err(&e))?;
    let mut dst = Image::new(size, size, PixelType::U8x3);
    let mut opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    if spec.policy == ResizePolicy::ShorterSideCenterCrop {
        // The crop window in source pixels: the region that becomes the
        // centred `size` square after scaling the shorter side to `resize`.
        let scale = spec.resize as f64 / w.min(h) as f64;
        let (cw, ch) = (
            (size as f64 / scale).min(w as f64),
            (size as f64 / scale).min(h as f64),
        );
        opts = opts.crop((w as f64 - cw) / 2.0, (h as f64 - ch) / 2.0, cw, ch);
    }
    Resizer::new()
        .resize(&src, &mut dst, &opts)
        .map_err(|e| resize_err(&e))?;
    let plane = (size * size) as usize;
    debug_assert_eq!(out.len(), 3 * plane);
    for (i, px) in dst.buffer().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb};

    fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    fn spec(policy: ResizePolicy) -> InputSpec {
        InputSpec {
            input_size: 4,
            resize: 4,
            policy,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    #[test]
    fn rejects_bad_bytes_with_specific_errors() {
        let l = DecodeLimits::default();
        assert_eq!(decode(&[], &l), Err(ImageError::Empty));
        assert_eq!(
            decode(b"definitely not an image", &l),
            Err(ImageError::UnknownFormat)
        );
        let png = encode(&RgbImage::new(8, 8), ImageFormat::Png);
        assert!(matches!(
            decode(&png[..png.len() / 2], &l),
            Err(ImageError::Decode(_))
        ));
        let small = DecodeLimits { max_bytes: 10, ..l };
        assert!(matches!(
            decode(&png, &small),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_jpeg_is_refused_and_a_whole_one_decodes() {
        let img = RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 4, y as u8 * 5, 128]));
        let jpg = encode(&img, ImageFormat::Jpeg);
        let l = DecodeLimits::default();
        assert_eq!(decode(&jpg, &l).unwrap().dimensions(), (64, 48));
        for cut in [jpg.len() - 2, jpg.len() / 2, 40] {
            assert!(
                matches!(decode(&jpg[..cut], &l), Err(ImageError::Decode(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let png = encode(&RgbImage::new(100, 50), ImageFormat::Png);
        let l = DecodeLimits {
            max_pixels: 4999,
            ..Default::default()
        };
        assert_eq!(
            decode(&png, &l),
            Err(ImageError::TooManyPixels {
                width: 100,
                height: 50,
                pixels: 5000,
                max: 4999
            })
        );
    }

    #[test]
    fn normalises_a_flat_image_exactly() {
        let img = RgbImage::from_pixel(10, 6, Rgb([255, 0, 51]));
        for policy in [ResizePolicy::Square, ResizePolicy::ShorterSideCenterCrop] {
            let mut out = vec![0.0; 48];
            write_input(&img, &spec(policy), &mut out).unwrap();
            // (1 - .5)/.5 = 1, (0 - .5)/.5 = -1, (.2 - .5)/.5 = -.6, per plane
            assert!(out[..16].iter().all(|v| (v - 1.0).abs() < 1e-6));
            assert!(out[16..32].iter().all(|v| (v + 1.0).abs() < 1e-6));
            assert!(out[32..].iter().all(|v| (v + 0.6).abs() < 1e-6));
        }
    }

    #[test]
    fn centre_crop_keeps_the_centre() {
        // Left third red, middle third green, right third blue; shorter
        // side to 8 then a centred 4-square sees the middle 150 source
        // pixels of the green band (300 wide), filter support included.
        let img = RgbImage::from_fn(900, 300, |x, _| match x / 300 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let s = InputSpec {
            mean: [0.0; 3],
            std: [1.0; 3],
            resize: 8,
            ..spec(ResizePolicy::ShorterSideCenterCrop)
        };
        let mut out = vec![0.0; 48];
        write_input(&img, &s, &mut out).unwrap();
        assert!(
            out[16..32].iter().all(|v| *v > 0.99),
            "green plane: {:?}",
            &out[16..32]
        );
        assert!(out[..16].iter().chain(&out[32..]).all(|v| *v < 0.01));
    }
}
