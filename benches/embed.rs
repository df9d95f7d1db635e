//! Embedding throughput on real grocery photos with the default model
//! (EfficientNet-Lite0, S+M+G, 320), exported fresh from the checkpoint.
//!
//!     cargo bench --bench embed
//!
//! Reports medians over repeated runs of: decode + preprocess images/s
//! (one thread); Embed end to end at 1 request at a time and at 16
//! concurrent requests; and, for an FP16 export on the CPU provider,
//! batch-1 latency with and without the in-memory FP32 upcast.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use lookalike::embed::preprocess::{decode, write_input, DecodeLimits};
use lookalike::embed::{manifest::Manifest, Engine, EngineConfig};
use lookalike::model::{export, Arch, ExportOptions, Precision};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn images(n: usize) -> Vec<Vec<u8>> {
    let root = repo().join("../shared/datasets/grocery");
    let list = std::fs::read_to_string(root.join("val.txt")).expect("grocery val.txt");
    list.lines()
        .take(n)
        .map(|l| std::fs::read(root.join(l.split(',').next().unwrap().trim())).unwrap())
        .collect()
}

fn export_model(dir: &Path, precision: Precision) -> PathBuf {
    let onnx = dir.join(format!("lite0-{}.onnx", precision.as_str()));
    let mut opts = ExportOptions::new(
        Arch::EfficientnetLite0,
        repo().join(lookalike::model::export::LITE0_PTH),
        &onnx,
    );
    opts.precision = precision;
    // The default model's settings (scripts/setup.sh).
    opts.gd_config = "SMG".into();
    opts.input_size = 320;
    let exported = export(&opts).unwrap();
    let manifest = Manifest {
        name: "bench".into(),
        backbones: vec![exported.manifest],
        projection: None,
    };
    let path = dir.join(format!("{}.toml", precision.as_str()));
    manifest.write(&path).unwrap();
    path
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn throughput(engine: &Arc<Engine>, imgs: &[Vec<u8>], concurrency: usize) -> f64 {
    let t = Instant::now();
    for chunk in imgs.chunks(concurrency) {
        let jobs = chunk.iter().map(|b| engine.embed(b.clone()));
        for r in futures::future::join_all(jobs).await {
            r.unwrap();
        }
    }
    imgs.len() as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let dylib = repo().join(lookalike::config::DEFAULT_ORT_DYLIB);
    let dir = tempfile::tempdir().unwrap();
    let imgs = images(96);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{} grocery val photos, {cores} cores", imgs.len());

    let fp32 = export_model(dir.path(), Precision::Fp32);
    let manifest = lookalike::embed::manifest::LoadedManifest::load(&fp32).unwrap();
    let spec = lookalike::embed::manifest::input_spec(&manifest.manifest.backbones[0]);
    let runs: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            let mut row = vec![0.0; spec.values()];
            for b in &imgs {
                let img = decode(b, &DecodeLimits::default()).unwrap();
                write_input(&img, &spec, &mut row).unwrap();
            }
            imgs.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "decode + preprocess (1 thread): {:.0} images/s",
        median(runs)
    );

    let engine = Arc::new(Engine::load(&fp32, &dylib, &EngineConfig::default()).unwrap());
    throughput(&engine, &imgs[..8], 1).await; // warm-up
    for conc in [1, 16] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(throughput(&engine, &imgs, conc).await);
        }
        println!(
            "embed end to end, {conc:>2} concurrent, FP32: {:.1} images/s",
            median(runs)
        );
    }
    drop(engine);

    let fp16 = export_model(dir.path(), Precision::Fp16);
    for upcast in [false, true] {
        let cfg = EngineConfig {
            upcast_fp16_on_cpu: upcast,
            ..EngineConfig::default()
        };
        let engine = Arc::new(Engine::load(&fp16, &dylib, &cfg).unwrap());
        throughput(&engine, &imgs[..8], 1).await;
        let mut lat = Vec::new();
        for b in &imgs[..48] {
            let t = Instant::now();
            engine.embed(b.clone()).await.unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "FP16 model on CPU, upcast {}: batch-1 latency median {:.1} ms",
            if upcast { "on " } else { "off" },
            median(lat)
        );
    }
}
