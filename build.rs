//! Generates the gRPC service (tonic) and the ONNX protobuf types (prost)
//! with the vendored protoc, so a build needs no system protoc.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    // tonic-prost-build does not emit rerun-if-changed for protos.
    for p in [
        "proto/lookalike/v1/retrieval.proto",
        "proto/onnx/onnx.proto",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }

    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("lookalike_descriptor.bin"))
        .compile_protos(&["proto/lookalike/v1/retrieval.proto"], &["proto"])?;

    prost_build::Config::new().compile_protos(&["proto/onnx/onnx.proto"], &["proto"])?;

    // Feature `train`: torch-sys (links = "tch") reports libtorch's folder;
    // binaries and tests that use it find it at run time without LD_LIBRARY_PATH.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // Feature `cuda`: keep libtorch_cuda (nothing references it by
        // symbol; loading it is what registers CUDA), for the trainer only.
        if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
            println!(
                "cargo:rustc-link-arg-bin=trainer=-Wl,--no-as-needed,-ltorch_cuda,--as-needed"
            );
        }
    }
    Ok(())
}
