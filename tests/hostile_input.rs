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
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(item.metadata["note\0"], "tab\tand\nnewline");
    assert_eq!(grpc::stats(&mut client, "g").await.count, 2);
}

/// Sends bytes as they are and hands back what comes, so a test can
/// write protobuf no generated client would.
#[derive(Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(src);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `depth` start-group tags of an unknown field, never closed.
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut key = Vec::new();
    varint((99 << 3) | 3, &mut key);
    key.repeat(depth)
}

/// A length-delimited field `field` holding `body`.
fn len_field(field: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((field << 3) | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// Raw protobuf no client library would send, to the real server: nested
/// past prost's recursion limit (at the top and inside a message field),
/// a length past the end, and a message over `max_message_bytes`, by
/// unary and streaming calls. Each gets a status naming the problem, and
/// the server goes on serving.
#[tokio::test]
async fn raw_protobuf_nested_cut_short_or_oversized_gets_a_clear_status() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        data.path(),
        "max_message_bytes = 1000000\n[embed.limits]\nmax_bytes = 200000\n",
    );
    let mut client = server.client().await;
    let dims = grpc::create_gallery(&mut client, "g").await;
    let (_, end) = grpc::add_stream(
        &mut client,
        vec![grpc::descriptor_item("g", "a", grpc::unit_vector(1, dims))],
    )
    .await;
    end.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    let path = |m: &str| {
        http::uri::PathAndQuery::try_from(format!("/lookalike.v1.Retrieval/{m}")).unwrap()
    };

    let mut gallery_then_length_past_end = len_field(1, b"g");
    varint(2 << 3 | 2, &mut gallery_then_length_past_end);
    varint(1 << 31, &mut gallery_then_length_past_end);
    gallery_then_length_past_end.extend_from_slice(b"short");
    let cases: [(&str, Vec<u8>, tonic::Code, &str); 5] = [
        (
            "groups nested 100,000 deep",
            nested_groups(100_000),
            tonic::Code::InvalidArgument,
            "recursion limit reached",
        ),
        (
            "groups nested inside post_processing",
            [len_field(1, b"g"), len_field(7, &nested_groups(10_000))].concat(),
            tonic::Code::InvalidArgument,
            "recursion limit reached",
        ),
        (
            "an image length past the end",
            gallery_then_length_past_end,
            tonic::Code::InvalidArgument,
            "buffer underflow",
        ),
        (
            "a 2 MB image over the 1 MB message limit",
            [len_field(1, b"g"), len_field(2, &vec![0xFF; 2 << 20])].concat(),
            tonic::Code::ResourceExhausted,
            "message length too large",
        ),
        (
            "a 2 MB run of nested groups",
            nested_groups(1 << 20),
            tonic::Code::ResourceExhausted,
            "message length too large",
        ),
    ];
    for (what, bytes, code, says) in &cases {
        raw.ready().await.unwrap();
        let err = raw
            .unary(tonic::Request::new(bytes.clone()), path("Search"), Raw)
            .await
            .unwrap_err();
        assert_eq!(err.code(), *code, "Search, {what}: {err:?}");
        assert!(err.message().contains(says), "Search, {what}: {err:?}");
        println!("Search, {what}: {:?} {}", err.code(), err.message());
    }
    // The streams read their requests the same way: AddToGallery's and
    // SearchBatch's first message is the nested one.
    for (method, bytes) in [
        ("AddToGallery", nested_groups(100_000)),
        (
            "SearchBatch",
            [len_field(1, b"g"), nested_groups(100_000)].concat(),
        ),
    ] {
        raw.ready().await.unwrap();
        let stream = tokio_stream::iter(vec![bytes]);
        let err = match raw
            .streaming(tonic::Request::new(stream), path(method), Raw)
            .await
        {
            Ok(resp) => {
                let mut s = resp.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("{method}: the stream ended without an error"),
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{method}: {err:?}"
        );
        assert!(
            err.message().contains("recursion limit reached"),
            "{method}: {err:?}"
        );
    }

    // Still serving: the process is up and a search answers.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    let hits = grpc::search_descriptor(&mut client, "g", grpc::unit_vector(1, dims), 1).await;
    assert_eq!(hits[0].id, "a");
    server.stop().await;
}
