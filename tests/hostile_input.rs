//! Hostile input: decompression bombs in every accepted format, extreme
//! aspect ratios (through the real decoder and preprocessing), and ids
//! and metadata with control characters and absurd sizes (through the
//! real server). Bombs are generated here, not committed.

mod common;

use std::io::Cursor;

use common::grpc;
use common::Server;
use image::{GrayImage, ImageFormat, RgbImage};
use lookalike::api::pb::{self, item_outcome::Status as Outcome};
use lookalike::embed::preprocess::{decode, write_input, DecodeLimits, ImageError, InputSpec};
use lookalike::model::ResizePolicy;

fn encode_gray(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    let img = GrayImage::new(w, h); // all zeros: compresses to almost nothing
    match format {
        ImageFormat::Png => img.write_to(&mut buf, format),
        // The other encoders want colour.
        _ => image::DynamicImage::ImageLuma8(img)
            .to_rgb8()
            .write_to(&mut buf, format),
    }
    .unwrap();
    buf.into_inner()
}

/// Each format's bomb: a small file that decodes to 1.44 million pixels,
/// against a 1 million pixel limit: refused from the header, naming the
/// size and the limit.
#[test]
fn decompression_bombs_are_refused_before_decoding() {
    let limits = DecodeLimits {
        max_bytes: 20 << 20,
        max_pixels: 1_000_000,
    };
    for format in [
        ImageFormat::Png,
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Jpeg,
    ] {
        let bytes = encode_gray(1200, 1200, format);
        let err = decode(&bytes, &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooManyPixels {
                    width: 1200,
                    height: 1200,
                    max: 1_000_000,
                    ..
                }
            ),
            "{format:?} ({} bytes): {err:?}",
            bytes.len()
        );
        assert!(err.to_string().contains("downscale"), "{err}");
        println!(
            "{format:?}: {} bytes announcing 1200x1200, refused: {err}",
            bytes.len()
        );
    }
    // Bombs whose headers claim the format's largest sizes.
    let gif = gif_header(65_535, 65_535);
    let err = decode(&gif, &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels { .. } | ImageError::Decode(_)
        ),
        "gif: {err:?}"
    );
    let bmp = bmp_header(100_000, 100_000);
    let err = decode(&bmp, &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels { .. } | ImageError::Decode(_)
        ),
        "bmp: {err:?}"
    );
}

/// A GIF whose screen and first frame announce `w` x `h`.
fn gif_header(w: u16, h: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.extend_from_slice(&[0, 0, 0]); // no global colour table
    g.push(0x2C); // image descriptor
    g.extend_from_slice(&[0, 0, 0, 0]);
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.push(0);
    g.extend_from_slice(&[2, 2, 0x4C, 0x01, 0, 0x3B]);
    g
}

/// A 24-bit BMP header announcing `w` x `h`, no pixels.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b
}

/// 1 x 100000 and 100000 x 1: decoded (within the pixel limit) and
/// preprocessed into the fixed input size, whatever the policy.
#[test]
fn extreme_aspect_ratios_preprocess_to_the_input_size() {
    for (w, h) in [(1, 100_000), (100_000, 1), (3, 65_000)] {
        let mut img = RgbImage::new(w, h);
        img.pixels_mut()
            .enumerate()
            .for_each(|(i, p)| p.0 = [(i % 251) as u8, 7, 200]);
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, ImageFormat::Png).unwrap();
        let decoded = decode(buf.get_ref(), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (w, h));
        for policy in [ResizePolicy::ShorterSideCenterCrop, ResizePolicy::Square] {
            let spec = InputSpec {
                input_size: 32,
                resize: 36,
                policy,
                mean: [0.5; 3],
                std: [0.25; 3],
            };
            let mut out = vec![f32::NAN; spec.values()];
            write_input(&decoded, &spec, &mut out).unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{w}x{h} {policy:?}");
        }
    }
}

#[tokio::test]
async fn ids_and_metadata_with_control_characters_or_absurd_sizes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), "");
    let mut client = server.client().await;
    let dims = grpc::create_gallery(&mut client, "g").await;
    let v = grpc::unit_vector(1, dims);
    let mut items = vec![
        grpc::descriptor_item("g", "ok", v.clone()),
        grpc::descriptor_item("g", "new\nline", v.clone()),
        grpc::descriptor_item("g", "nul\0", v.clone()),
        grpc::descriptor_item("g", "esc\x1b[31m", v.clone()),
        grpc::descriptor_item("g", &"x".repeat(513), v.clone()),
        grpc::descriptor_item("g", &"x".repeat(1 << 20), v.clone()),
        grpc::descriptor_item("g", "", v.clone()),
    ];
    let mut huge_meta = grpc::descriptor_item("g", "huge-meta", v.clone());
    huge_meta.metadata.insert("k".into(), "v".repeat(4 << 20));
    items.push(huge_meta);
    let mut many_keys = grpc::descriptor_item("g", "many-keys", v.clone());
    many_keys.metadata = (0..100_000)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    items.push(many_keys);
    let mut control_meta = grpc::descriptor_item("g", "control-meta", v.clone());
    control_meta
        .metadata
        .insert("note\0".into(), "tab\tand\nnewline".into());
    items.push(control_meta);
    let (outcomes, end) = grpc::add_stream(&mut client, items).await;
    let summary = end.unwrap();
    for o in &outcomes[1..9] {
        assert_eq!(o.status, Outcome::Rejected as i32, "{o:?}");
        assert!(!o.reason.is_empty(), "{o:?}");
        assert!(
            o.reason.len() < 300,
            "the reason echoes the input: {}",
            o.reason.len()
        );
    }
    assert!(
        outcomes[1].reason.contains("U+000A"),
        "{}",
        outcomes[1].reason
    );
    assert!(
        outcomes[2].reason.contains("U+0000"),
        "{}",
        outcomes[2].reason
    );
    // Metadata is data: a control character in it is stored as given.
    assert_eq!(
        outcomes[9].status,
        Outcome::Added as i32,
        "{:?}",
        outcomes[9]
    );
    assert_eq!((summary.added, summary.rejected), (2, 8));
    let item = client
        .get_item(pb::GetItemRequest {
            gallery: "g".into(),
            id: "control-meta".into(),
            include_descriptor: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(item.metadata["note\0"], "tab\tand\nnewline");
    assert_eq!(grpc::stats(&mut client, "g").await.count, 2);
}
