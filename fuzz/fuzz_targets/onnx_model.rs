//! The ONNX model reader (the protobuf ModelProto and what inspect reads).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = lookalike::model::graph::decode(data) {
        let _ = model
            .graph
            .map(|g| (g.input.len(), g.output.len(), g.initializer.len()));
    }
});
