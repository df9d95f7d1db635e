//! PyTorch checkpoints: the zip format and the legacy pickle stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookalike::model::weights::{pickle, torch};

fuzz_target!(|data: &[u8]| {
    let _ = torch::load_torch(data);
    let _ = pickle::unpickle(data);
});
