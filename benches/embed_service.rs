//! One photo's Embed through the real server, side by side with Python
//! onnxruntime on the very same ONNX file (the default model:
//! EfficientNet-Lite0, S+M+G, 320, FP32, exported fresh).
//!
//!     cargo bench --bench embed_service [-- ROUNDS]
//!     LOOKALIKE_BENCH_PYTHON=~/.cache/lookalike/benchvenv/bin/python  # the reference
//!     LOOKALIKE_BENCH_CONFIG='[embed]\nmax_wait_ms = 0'  # extra server config
//!
//! Starts `lookalike serve` (this build's binary) on a free port and a
//! tonic client in this process, then per round: 96 grocery val photos one
//! request at a time (latency per request, as the client sees it, and the
//! server's own decode / embed timings), and 16 in flight (throughput).
//! Rounds alternate with the Python reference (`embed_baseline.py`: end
//! to end and inference alone, batch 1) so both see the same machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lookalike::api::pb::retrieval_client::RetrievalClient;
use lookalike::api::pb::EmbedRequest;
use lookalike::embed::manifest::Manifest;
use lookalike::model::{export, Arch, ExportOptions, ManifestEntry, Precision};
use tonic::transport::Channel;

#[path = "common/server.rs"]
mod server;
use server::Server;

const PHOTOS: usize = 96;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn grocery() -> PathBuf {
    repo().join("../shared/datasets/grocery")
}

fn photos() -> Vec<PathBuf> {
    let list = std::fs::read_to_string(grocery().join("val.txt")).expect("grocery val.txt");
    list.lines()
        .filter_map(|l| l.split(',').next())
        .take(PHOTOS)
        .map(|p| grocery().join(p.trim()))
        .collect()
}

fn export_default(dir: &Path) -> (PathBuf, PathBuf, ManifestEntry) {
    let onnx = dir.join("lite0_smg320.onnx");
    let mut opts = ExportOptions::new(
        Arch::EfficientnetLite0,
        repo().join(lookalike::model::export::LITE0_PTH),
        &onnx,
    );
    opts.precision = Precision::Fp32;
    opts.gd_config = "SMG".into();
    opts.input_size = 320;
    let entry = export(&opts).expect("exporting the default model").manifest;
    let manifest = Manifest {
        name: "bench".into(),
        backbones: vec![entry.clone()],
        projection: None,
    };
    let path = dir.join("default.toml");
    manifest.write(&path).expect("writing the manifest");
    (onnx, path, entry)
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Client latency and the server's (decode, embed) per photo, in ms.
async fn one_at_a_time(client: &mut RetrievalClient<Channel>, imgs: &[Vec<u8>]) -> [Vec<f64>; 3] {
    let (mut lat, mut dec, mut inf) = (vec![], vec![], vec![]);
    for b in imgs {
        let t = Instant::now();
        let r = client
            .embed(EmbedRequest { image: b.clone() })
            .await
            .expect("Embed")
            .into_inner();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        let stage = |name: &str| {
            r.timings
                .iter()
                .find(|s| s.stage == name)
                .map_or(0.0, |s| s.micros as f64 / 1e3)
        };
        dec.push(stage("decode"));
        inf.push(stage("embed"));
    }
    [lat, dec, inf]
}

async fn in_flight(client: &RetrievalClient<Channel>, imgs: &[Vec<u8>], n: usize) -> f64 {
    let t = Instant::now();
    for chunk in imgs.chunks(n) {
        let calls = chunk.iter().map(|b| {
            let mut c = client.clone();
            let image = b.clone();
            async move { c.embed(EmbedRequest { image }).await.expect("Embed") }
        });
        futures::future::join_all(calls).await;
    }
    imgs.len() as f64 / t.elapsed().as_secs_f64()
}

/// Python onnxruntime on the same file: (end to end, inference alone) ms.
fn python(onnx: &Path, e: &ManifestEntry, paths: &[PathBuf]) -> Option<(Vec<f64>, Vec<f64>)> {
    let py = std::env::var("LOOKALIKE_BENCH_PYTHON").ok()?;
    let join = |v: [f32; 3]| v.map(|x| x.to_string()).join(",");
    let out = Command::new(py)
        .arg(repo().join("benches/embed_baseline.py"))
        .arg(onnx)
        .arg(e.resize.to_string())
        .arg(e.input_size.to_string())
        .arg(join(e.mean))
        .arg(join(e.std))
        .args(paths)
        .output()
        .expect("running the Python reference");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("its JSON");
    let ms = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|s| s * 1e3)
                    .collect()
            })
            .unwrap_or_default()
    };
    Some((ms("end_to_end"), ms("inference_alone")))
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let (onnx, manifest, entry) = export_default(dir.path());
    let paths = photos();
    let imgs: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let extra = std::env::var("LOOKALIKE_BENCH_CONFIG").unwrap_or_default();
    let server = Server::start(dir.path(), &manifest, &extra.replace("\\n", "\n"), "warn");
    let mut client = RetrievalClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connecting");
    one_at_a_time(&mut client, &imgs[..8]).await; // warm-up
    let (mut lat, mut dec, mut inf, mut thr) = (vec![], vec![], vec![], vec![]);
    let (mut py_e2e, mut py_inf) = (vec![], vec![]);
    for _ in 0..rounds {
        // Each round starts after the 16-in-flight batches and the Python
        // run: warm again, as the reference does (3 photos).
        one_at_a_time(&mut client, &imgs[..3]).await;
        let [l, d, i] = one_at_a_time(&mut client, &imgs).await;
        lat.extend(l);
        dec.extend(d);
        inf.extend(i);
        thr.push(in_flight(&client, &imgs, 16).await);
        if let Some((e, i)) = python(&onnx, &entry, &paths) {
            py_e2e.extend(e);
            py_inf.extend(i);
        }
    }
    let row = |what: &str, v: &[f64]| {
        if !v.is_empty() {
            println!(
                "{what:<52} median {:6.2} ms  p99 {:6.2} ms  ({:.1} images/s at the median)",
                pct(v, 0.5),
                pct(v, 0.99),
                1e3 / pct(v, 0.5)
            );
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{PHOTOS} grocery val photos x {rounds} rounds, {cores} cores, batch 1 unless stated");
    row("lookalike Embed over gRPC, one at a time (client)", &lat);
    row("  server: decode + preprocess", &dec);
    row("  server: embed (queue + inference)", &inf);
    row(
        "Python onnxruntime: Pillow + inference, end to end",
        &py_e2e,
    );
    row("Python onnxruntime: inference alone", &py_inf);
    thr.sort_by(f64::total_cmp);
    println!(
        "lookalike Embed over gRPC, 16 in flight: {:.1} images/s (median of {rounds})",
        thr[thr.len() / 2]
    );
    if py_inf.is_empty() {
        println!("(set LOOKALIKE_BENCH_PYTHON to a python with benches/requirements-speed.txt for the reference)");
    } else {
        println!(
            "one at a time / Python inference alone, medians: {:.3}",
            pct(&lat, 0.5) / pct(&py_inf, 0.5)
        );
    }
}
