//! Image bytes -> decoded RGB -> the model's input rows, as the server
//! does for every image it receives (small limits keep runs fast).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookalike::embed::preprocess::{decode, write_input, DecodeLimits, InputSpec, ResizePolicy};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_bytes: 1 << 20,
        max_pixels: 4_000_000,
    };
    if let Ok(img) = decode(data, &limits) {
        for policy in [ResizePolicy::ShorterSideCenterCrop, ResizePolicy::Square] {
            let spec = InputSpec {
                input_size: 32,
                resize: 36,
                policy,
                mean: [0.5; 3],
                std: [0.25; 3],
            };
            let mut out = vec![0.0; spec.values()];
            let _ = write_input(&img, &spec, &mut out);
        }
    }
});
