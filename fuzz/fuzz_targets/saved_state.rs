//! The saved derived state (gallery/persist.rs): arbitrary bytes as
//! state.bin must load as an error or as nothing, never crash. The input
//! gets its SHA-256 appended, so the fuzzer reaches the parser behind the
//! checksum (a torn write is the easy case).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookalike::gallery::persist;
use lookalike::gallery::post::PostConfig;
use lookalike::index::HnswParams;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = data.to_vec();
    bytes.extend_from_slice(&Sha256::digest(data));
    std::fs::write(dir.path().join("state.bin"), bytes).unwrap();
    let _ = persist::load(
        dir.path(),
        8,
        &PostConfig::default(),
        &HnswParams::default(),
    );
});
