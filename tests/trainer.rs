//! The trainer end to end on real grocery photos (feature `train`): a short fine-tune
//! whose loss goes down, its export served by the real server, and a resumed run that
//! repeats the uninterrupted one's loss curve.
#![cfg(feature = "train")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{grocery, split, subset, Server};

const CLASSES: [u32; 4] = [0, 10, 20, 30];
const PER_CLASS: usize = 8;

/// A list file of 8 training photos of each of 4 classes (grocery train.txt form).
fn list_file(dir: &Path) -> PathBuf {
    let rows = subset(&split("train.txt"), &CLASSES, PER_CLASS);
    let text: String = rows
        .iter()
        .map(|(p, c)| format!("{}, {c}\n", grocery().join(p).display()))
        .collect();
    let path = dir.join("train.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn trainer(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "trainer {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Small and fast: 64 px, batches of 8 (3 steps per epoch on the 24 training photos).
fn train_args<'a>(list: &'a str, run: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        list,
        "--run-dir",
        run,
        "--input-size",
        "64",
        "--feature-dim",
        "96",
        "--batch-size",
        "8",
        "--epochs",
        epochs,
        "--lr",
        "1e-3",
        "--threads",
        "2",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "20",
        "--no-progress",
    ]
}

fn step_losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn smoke_training_learns_exports_and_the_server_serves_it() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let list = list_file(tmp.path());
    let run = tmp.path().join("run");
    let (l, r) = (list.to_str().unwrap(), run.to_str().unwrap());
    let out = trainer(&train_args(l, r, "6"));
    assert!(out.contains("finished after 18 steps"), "{out}");

    let losses = step_losses(&run);
    assert_eq!(losses.len(), 18);
    let (first, last) = (mean(&losses[..3]), mean(&losses[15..]));
    println!("loss: first epoch {first:.3}, last epoch {last:.3}");
    assert!(
        last < 0.8 * first,
        "loss did not go down: {first} -> {last}"
    );
    for f in [
        "config.json",
        "split.json",
        "init.json",
        "loss.png",
        "best/model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }

    // The export: both precisions, and the FP32 manifest served for real.
    let manifest = run.join("export/efficientnet_lite0_SMG64_fp32.toml");
    assert!(run
        .join("export/efficientnet_lite0_SMG64_fp16.onnx")
        .exists());
    let data = tmp.path().join("data");
    let server = Server::start_with(&data, "", &manifest);
    let client = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lookalike"))
            .args(args)
            .args([
                "--server",
                &format!("http://{}", server.addr),
                "--gallery",
                "g",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rows = subset(&split("train.txt"), &CLASSES, PER_CLASS);
    let paths: Vec<String> = rows
        .iter()
        .map(|(p, _)| grocery().join(p).display().to_string())
        .collect();
    let mut add = vec!["add"];
    add.extend(paths.iter().map(String::as_str));
    client(&add);
    let hits = client(&["search", "--exact", "-k", "1", &paths[0]]);
    assert!(
        hits.contains(&paths[0]),
        "an indexed photo finds itself first: {hits}"
    );
    server.kill();

    // `lookalike model export` takes the trained checkpoint unchanged.
    let onnx = tmp.path().join("again.onnx");
    let st = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args([
            "model",
            "export",
            "--arch",
            "efficientnet_lite0",
            "--gd-config",
            "SMG",
        ])
        .args(["--feature-dim", "96", "--input-size", "64", "--weights"])
        .arg(run.join("best/model.safetensors"))
        .arg("--out")
        .arg(&onnx)
        .status()
        .unwrap();
    assert!(st.success() && onnx.exists());
}

#[test]
fn resumed_run_repeats_the_uninterrupted_loss_curve() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let list = list_file(tmp.path());
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    let l = list.to_str().unwrap();
    let mut a = train_args(l, whole.to_str().unwrap(), "3");
    a.push("--no-export");
    trainer(&a);
    // Interrupted mid-epoch (step 5 of 9), then resumed to the end.
    let mut b = train_args(l, parts.to_str().unwrap(), "3");
    b.extend(["--max-steps", "5", "--no-export"]);
    let out = trainer(&b);
    assert!(out.contains("stopped after 5 steps"), "{out}");
    trainer(&[
        "resume",
        parts.to_str().unwrap(),
        "--no-export",
        "--no-progress",
    ]);
    let (x, y) = (step_losses(&whole), step_losses(&parts));
    assert_eq!(x.len(), 9);
    assert_eq!(y.len(), 9);
    // Same seed, same CPU threads: equal to float rounding.
    for (i, (p, q)) in x.iter().zip(&y).enumerate() {
        assert!(
            (p - q).abs() <= 1e-4 * p.abs().max(1.0),
            "step {}: {p} vs {q}",
            i + 1
        );
    }
}

#[test]
fn ctrl_c_checkpoints_the_step_reached_and_resume_continues_from_it() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let list = list_file(tmp.path());
    let run = tmp.path().join("run");
    let mut args = train_args(list.to_str().unwrap(), run.to_str().unwrap(), "200");
    args.push("--no-export");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once it is training (a step logged), between checkpoints.
    let started = std::time::Instant::now();
    while !run.join("metrics.jsonl").exists() || step_losses(&run).len() < 2 {
        assert!(started.elapsed().as_secs() < 600, "no training steps");
        assert!(child.try_wait().unwrap().is_none(), "trainer exited early");
        // Polling the run's own log, not waiting out a race.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "after Ctrl-C: {:?} {stdout}",
        out.status
    );
    let steps = step_losses(&run).len();
    assert!(
        stdout.contains(&format!("stopped after {steps} steps")),
        "{stdout}"
    );
    assert!(steps < 600, "stopped long before the end");
    let checkpoint = run.join(format!("checkpoints/step-{steps:08}"));
    assert!(checkpoint.is_dir(), "no checkpoint at the interrupted step");
    // Resumed from there: the step count carries on, nothing repeated.
    let want = (steps + 2).to_string();
    trainer(&[
        "resume",
        run.to_str().unwrap(),
        "--max-steps",
        &want,
        "--no-export",
        "--no-progress",
    ]);
    assert_eq!(step_losses(&run).len(), steps + 2);
}

#[test]
fn cgd_recipe_needs_balanced_batches_and_resumes_its_auxiliary_state_exactly() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let list = list_file(tmp.path());
    let l = list.to_str().unwrap();
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    let (w, p) = (whole.to_str().unwrap(), parts.to_str().unwrap());
    let cgd = |run| {
        let mut a = train_args(l, run, "3");
        a.extend(["--loss", "cgd", "--no-export"]);
        a
    };
    // Without class-balanced batches the triplet has no positives: refused, with the fix.
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(cgd(w))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--per-class 4"),
        "{err}"
    );
    assert!(
        !whole.exists(),
        "a refused run leaves no run directory behind"
    );

    // 4 images of each of 2 classes per batch: a whole run, and one stopped at step 5
    // and resumed; the auxiliary classifier (weights and batch-norm statistics) is in
    // the checkpoint, so the resumed losses equal the uninterrupted ones.
    let mut a = cgd(w);
    a.extend(["--per-class", "4"]);
    trainer(&a);
    let mut b = cgd(p);
    b.extend(["--per-class", "4", "--max-steps", "5"]);
    assert!(trainer(&b).contains("stopped after 5 steps"));
    let state = std::fs::read(parts.join("checkpoints/step-00000005/trainer.safetensors")).unwrap();
    let keys = String::from_utf8_lossy(&state);
    assert!(keys.contains("aux.fc.weight") && keys.contains("aux.bn.running_var"));
    trainer(&["resume", p, "--no-export", "--no-progress"]);
    let (x, y) = (step_losses(&whole), step_losses(&parts));
    assert_eq!((x.len(), y.len()), (9, 9));
    for (i, (p, q)) in x.iter().zip(&y).enumerate() {
        assert!(
            p.is_finite() && (p - q).abs() <= 1e-4 * p.abs().max(1.0),
            "step {}: {p} vs {q}",
            i + 1
        );
    }
}

#[test]
fn the_server_binary_does_not_link_libtorch() {
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_lookalike"))
        .output()
        .unwrap();
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd failed");
    assert!(
        !libs.contains("libtorch") && !libs.contains("libc10"),
        "{libs}"
    );
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_trainer"))
        .output()
        .unwrap();
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(
        libs.contains("libtorch_cpu.so =>"),
        "trainer without libtorch: {libs}"
    );
    assert!(!libs.contains("not found"), "{libs}");
    // libtorch_cuda only where feature `cuda` asks for it (it registers CUDA).
    assert_eq!(
        libs.contains("libtorch_cuda.so =>"),
        cfg!(feature = "cuda"),
        "{libs}"
    );
}

#[test]
fn a_device_that_is_not_there_is_refused_before_a_run_starts() {
    if tch::Cuda::is_available() {
        return; // this machine has the GPU; nothing to refuse
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let list = list_file(tmp.path());
    let run = tmp.path().join("run");
    let mut args = train_args(list.to_str().unwrap(), run.to_str().unwrap(), "1");
    args.extend(["--device", "cuda"]);
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "trained on a device that is not there"
    );
    assert!(
        err.contains("sees no CUDA device") && err.contains("--device cpu"),
        "{err}"
    );
    assert!(
        !run.exists(),
        "a refused run leaves no run directory behind"
    );
}
