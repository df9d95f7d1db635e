//! Shared by the integration tests: the real default model (exported from
//! the real EfficientNet-Lite0 checkpoint that scripts/setup.sh fetched),
//! a real server process on a free loopback port, grocery photos, and
//! certificates for TLS tests.
#![allow(dead_code)]

pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub mod grpc;
pub mod nats;

use lookalike::api::pb::retrieval_client::RetrievalClient;
use tonic::transport::Channel;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn ort_dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map_or_else(
        || repo().join(lookalike::config::DEFAULT_ORT_DYLIB),
        PathBuf::from,
    )
}

pub fn grocery() -> PathBuf {
    std::env::var_os("LOOKALIKE_GROCERY")
        .map_or_else(|| repo().join("../shared/datasets/grocery"), PathBuf::from)
}

/// The default model, exported once per test binary into its own folder.
pub fn default_manifest() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("model-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let onnx = dir.join("lite0.onnx");
        let pth = repo().join(lookalike::model::export::LITE0_PTH);
        assert!(
            pth.exists(),
            "{} is missing: run scripts/setup.sh",
            pth.display()
        );
        let opts = lookalike::model::ExportOptions::new(
            lookalike::model::Arch::EfficientnetLite0,
            pth,
            &onnx,
        );
        let exported = lookalike::model::export(&opts).unwrap();
        let manifest = lookalike::embed::manifest::Manifest {
            name: "test".into(),
            backbones: vec![exported.manifest],
            projection: None,
        };
        let path = dir.join("default.toml");
        manifest.write(&path).unwrap();
        path
    })
}

/// (relative path, fine class) rows of a grocery split file.
pub fn split(name: &str) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(grocery().join(name)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split(',').map(str::trim);
            let path = f.next().unwrap().to_string();
            let class = f.next().unwrap().parse().unwrap();
            (path, class)
        })
        .collect()
}

/// The first `per_class` rows of each class in `classes`, in file order.
pub fn subset(rows: &[(String, u32)], classes: &[u32], per_class: usize) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for c in classes {
        out.extend(rows.iter().filter(|r| r.1 == *c).take(per_class).cloned());
    }
    out
}

/// `series`' value in the admin port's Prometheus scrape (0 when absent),
/// named as the scrape prints it: `name{label="value"}`.
pub async fn metric(admin: &str, series: &str) -> f64 {
    // reqwest's rustls needs a process-wide provider; the first call wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

pub fn read_image(rel: &str) -> Vec<u8> {
    std::fs::read(grocery().join(rel)).unwrap()
}

/// A `lookalike serve` child process; killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The admin HTTP port, when the config sets `admin_listen`.
    pub admin: Option<String>,
    /// The HTTP API port, when the config sets `http_listen`.
    pub http: Option<String>,
}

impl Server {
    /// Starts the server on `data_dir` with extra config TOML, and waits for
    /// its "listening on" line (the port is chosen by the OS).
    pub fn start(data_dir: &Path, extra_config: &str) -> Self {
        Self::start_full(data_dir, extra_config, default_manifest(), &[])
    }

    /// `start` with extra environment variables for the server process.
    pub fn start_with_env(data_dir: &Path, extra_config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_full(data_dir, extra_config, default_manifest(), env)
    }

    /// Like `start`, serving the model of another manifest.
    pub fn start_with(data_dir: &Path, extra_config: &str, manifest: &Path) -> Self {
        Self::start_full(data_dir, extra_config, manifest, &[])
    }

    /// `start` through a launcher: `prefix` runs the server binary with
    /// its arguments appended (e.g. `nsenter -t PID -U -m --`).
    pub fn start_via(data_dir: &Path, extra_config: &str, prefix: &[String]) -> Self {
        Self::start_cmd(data_dir, extra_config, default_manifest(), &[], prefix)
    }

    fn start_full(
        data_dir: &Path,
        extra_config: &str,
        manifest: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_cmd(data_dir, extra_config, manifest, env, &[])
    }

    /// `lookalike serve` on a free port with the config written next to
    /// `data_dir`, stdout piped (for the "listening on" lines).
    fn command(data_dir: &Path, extra_config: &str, manifest: &Path, prefix: &[String]) -> Command {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, extra_config).unwrap();
        let bin = env!("CARGO_BIN_EXE_lookalike");
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--model")
            .arg(manifest)
            .arg("--ort-dylib")
            .arg(ort_dylib())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        cmd
    }

    fn start_cmd(
        data_dir: &Path,
        extra_config: &str,
        manifest: &Path,
        env: &[(&str, &str)],
        prefix: &[String],
    ) -> Self {
        let mut child = Self::command(data_dir, extra_config, manifest, prefix)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut admin, mut http) = (None, None);
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("admin listening on ") {
                        admin = Some(a.to_string());
                    }
                    if let Some(a) = line.strip_prefix("http listening on ") {
                        http = Some(a.to_string());
                    }
                    if let Some(a) = line.strip_prefix("listening on ") {
                        break a.to_string();
                    }
                }
                _ => panic!("server exited before listening: {:?}", child.wait()),
            }
        };
        Self {
            child,
            addr,
            admin,
            http,
        }
    }

    /// Starts the server, or returns how it failed to start: its exit
    /// status and what it wrote to stderr.
    pub fn try_start(data_dir: &Path, extra_config: &str) -> Result<Self, String> {
        let mut child = Self::command(data_dir, extra_config, default_manifest(), &[])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Drained on a thread so a chatty server never blocks on the pipe.
        let stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("listening on ") {
                let addr = a.to_string();
                return Ok(Self {
                    child,
                    addr,
                    admin: None,
                    http: None,
                });
            }
        }
        let status = child.wait().unwrap();
        Err(format!("{status}: {}", errors.join().unwrap()))
    }

    pub async fn client(&self) -> RetrievalClient<Channel> {
        RetrievalClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
    }

    /// Graceful stop (SIGTERM, as Kubernetes sends): waits for the process
    /// and checks it exited cleanly. Waits off the test's runtime, which
    /// must keep running to close the test's client connections.
    pub async fn stop(self) {
        tokio::task::spawn_blocking(move || self.stop_blocking())
            .await
            .unwrap();
    }

    /// Sends SIGTERM, as Kubernetes does, without waiting.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    fn stop_blocking(mut self) {
        self.terminate();
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "server exited with {exit}");
    }

    /// After `terminate`: waits for a clean exit.
    pub async fn stop_after_terminate(mut self) {
        tokio::task::spawn_blocking(move || {
            let exit = self.child.wait().unwrap();
            assert!(exit.success(), "server exited with {exit}");
        })
        .await
        .unwrap();
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
