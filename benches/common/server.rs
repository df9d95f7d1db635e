//! The real `lookalike serve` for the benches that go through it: loopback, port 0,
//! killed on drop.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The admin port's address, when `config` sets `admin_listen`.
    #[allow(dead_code)] // read by the load bench only
    pub admin: Option<String>,
}

impl Server {
    /// Starts it on `manifest` with `config` (TOML) and data under `dir`; returns once
    /// it listens.
    pub fn start(dir: &Path, manifest: &Path, config: &str, rust_log: &str) -> Self {
        let path = dir.join("serve.toml");
        std::fs::write(&path, config).unwrap();
        let ort = Path::new(env!("CARGO_MANIFEST_DIR")).join(lookalike::config::DEFAULT_ORT_DYLIB);
        let mut child = Command::new(env!("CARGO_BIN_EXE_lookalike"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--model")
            .arg(manifest)
            .arg("--ort-dylib")
            .arg(ort)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting lookalike serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut admin = None;
        let addr = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("admin listening on ") {
                admin = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        Self { child, addr, admin }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default model (EfficientNet-Lite0 from scripts/setup.sh's
/// checkpoint) exported into `dir`; returns its manifest, named `name`.
#[allow(dead_code)] // the benches that export their own variant do not call it
pub fn export_default(dir: &Path, name: &str) -> PathBuf {
    let onnx = dir.join("lite0.onnx");
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join(lookalike::model::export::LITE0_PTH);
    let opts =
        lookalike::model::ExportOptions::new(lookalike::model::Arch::EfficientnetLite0, pth, &onnx);
    let entry = lookalike::model::export(&opts)
        .expect("exporting the default model (run scripts/setup.sh)")
        .manifest;
    let manifest = lookalike::embed::manifest::Manifest {
        name: name.into(),
        backbones: vec![entry],
        projection: None,
    };
    let path = dir.join("default.toml");
    manifest.write(&path).expect("writing the manifest");
    path
}
