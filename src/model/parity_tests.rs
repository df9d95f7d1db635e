//! Architecture evidence: every timm-named backbone is compared against timm itself.
//!
//! Reference files come from `scripts/timm_reference.py` (seeded random init with randomised
//! BatchNorm statistics, float64 forward) in `$LOOKALIKE_PARITY_DIR`. Without them these tests
//! fail and say how to generate them. FishNet-99 has no timm model: it is checked against the
//! paper's parameter count and the original release's stage shapes.
use std::collections::BTreeMap;
use std::path::PathBuf;

use ort::value::Tensor;

use super::tests::{max_abs_diff, pseudo_random, session, tmp};
use crate::model::arch::fishnet::FishNet;
use crate::model::arch::Arch;
use crate::model::export::{build_model, export, ExportOptions, Precision};
use crate::model::graph::{encode, Dim, Elem};
use crate::model::head::HeadConfig;
use crate::model::onnx_ops::OnnxOps;
use crate::model::ops::Ops;
use crate::model::spec_ops::{parameter_specs, SpecOps};
use crate::model::tensor::HostTensor;
use crate::model::vars::{ParamKind, VarPath, Weights};
use crate::model::weights::safetensors::load_safetensors;
use crate::model::weights::StateDict;

const HOW_TO: &str = "generate them with scripts/parity-refs.sh (it prints the folder to set), \
or run the whole suite with scripts/test.sh";

/// Architectures with a timm reference (Rust name = file stem written by the script).
const TIMM_ARCHES: [Arch; 6] = [
    Arch::Resnet50,
    Arch::Resnet101,
    Arch::EfficientnetLite0,
    Arch::HrnetW18,
    Arch::HrnetW30,
    Arch::Dla102x,
];

struct Reference {
    state: StateDict,
    input: HostTensor,
    features: HostTensor,
    logits: HostTensor,
    meta: BTreeMap<String, String>,
}

fn parity_dir() -> PathBuf {
    let Some(dir) = std::env::var_os("LOOKALIKE_PARITY_DIR") else {
        panic!("LOOKALIKE_PARITY_DIR is not set; the timm reference files are required: {HOW_TO}");
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.is_dir(),
        "LOOKALIKE_PARITY_DIR={} is not a directory; {HOW_TO}",
        dir.display()
    );
    dir
}

/// `__metadata__` of a safetensors header (string -> string).
fn metadata(buf: &[u8]) -> BTreeMap<String, String> {
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&buf[8..8 + n]).unwrap();
    header["__metadata__"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn reference(arch: Arch) -> Reference {
    let dir = parity_dir();
    let read = |name: String| {
        let p = dir.join(&name);
        std::fs::read(&p)
            .unwrap_or_else(|e| panic!("missing parity reference {} ({e}); {HOW_TO}", p.display()))
    };
    let sbuf = read(format!("{arch}.safetensors"));
    let mut io = load_safetensors(&read(format!("{arch}.io.safetensors"))).unwrap();
    let mut take = |k: &str| {
        io.remove(k)
            .unwrap_or_else(|| panic!("{arch}.io.safetensors lacks {k:?}; regenerate: {HOW_TO}"))
    };
    Reference {
        input: take("input"),
        features: take("features"),
        logits: take("logits"),
        state: load_safetensors(&sbuf).unwrap(),
        meta: metadata(&sbuf),
    }
}

fn spec_of(arch: Arch) -> SpecOps {
    let mut ops = SpecOps::default();
    let root = VarPath::root();
    let f = arch.features(&mut ops, &3, &root).unwrap();
    assert_eq!(f, arch.feature_channels(), "{arch}");
    arch.classifier(&mut ops, &f, &root).unwrap();
    ops
}

#[test]
fn timm_key_sets_shapes_and_parameter_counts_match() {
    for arch in TIMM_ARCHES {
        let r = reference(arch);
        let ops = spec_of(arch);
        let ours: BTreeMap<&str, &Vec<usize>> = ops
            .specs
            .iter()
            .map(|s| (s.key.as_str(), &s.shape))
            .collect();
        assert_eq!(ours.len(), ops.specs.len(), "{arch}: duplicate keys");
        let timm: BTreeMap<&str, &Vec<usize>> = r
            .state
            .iter()
            .map(|(k, t)| (k.as_str(), &t.shape))
            .collect();
        assert_eq!(ours, timm, "{arch}: key set / shapes differ from timm");
        let want: usize = r.meta["parameter_count"].parse().unwrap();
        println!(
            "{arch}: {} state_dict entries, {} parameters (timm {want}, {} {})",
            ours.len(),
            ops.parameter_count(),
            r.meta["timm_model"],
            r.meta["timm_version"]
        );
        assert_eq!(ops.parameter_count(), want, "{arch}: parameter count");
    }
}

/// Runs the exported graph on the reference input; returns (features, logits).
fn run_export(arch: Arch, r: &Reference, precision: Precision) -> (Vec<f32>, Vec<f32>) {
    let mut o = ExportOptions::new(arch, "unused", format!("{arch}.onnx"));
    o.input_size = r.input.shape[2];
    o.precision = precision;
    o.keep_classifier = true;
    o.keep_features = true;
    let (m, _, _) = build_model(&o, r.state.clone()).unwrap();
    let mut s = session(&encode(&m));
    let shape: [usize; 4] = r.input.shape.clone().try_into().unwrap();
    let input = Tensor::from_array((shape, r.input.data.clone())).unwrap();
    let out = s.run(ort::inputs!["image" => input]).unwrap();
    let get = |name: &str, want: &[usize]| {
        let (s, v) = out[name].try_extract_tensor::<f32>().unwrap();
        let s: Vec<usize> = s.iter().map(|&d| d as usize).collect();
        assert_eq!(s, want, "{arch} {name} shape");
        v.to_vec()
    };
    (
        get("features", &r.features.shape),
        get("logits", &r.logits.shape),
    )
}

fn scale(t: &HostTensor) -> f32 {
    t.data.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Relative FP16 floor the script measured for `output` (see `scripts/timm_reference.py`).
fn fp16_floor(r: &Reference, output: &str) -> f32 {
    let key = format!("fp16_floor_{output}");
    r.meta
        .get(&key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("reference lacks {key}; regenerate: {HOW_TO}"))
}

/// FP32: max |diff| <= 1e-4 x scale (scale = max |reference|). FP16: <= 1e-2 x scale, or
/// <= 2x the error FP16 rounding of weights and input alone causes in exact arithmetic
/// when that is larger (random-init deep nets amplify rounding; ResNet-50's floor is ~5e-2).
fn check_parity(arch: Arch) {
    let r = reference(arch);
    for precision in [Precision::Fp32, Precision::Fp16] {
        let (f, l) = run_export(arch, &r, precision);
        for (name, got, want) in [("features", &f, &r.features), ("logits", &l, &r.logits)] {
            let tol = match precision {
                Precision::Fp32 => 1e-4,
                Precision::Fp16 => f32::max(1e-2, 2.0 * fp16_floor(&r, name)),
            };
            let d = max_abs_diff(got, &want.data);
            let s = scale(want);
            let rms = (got
                .iter()
                .zip(&want.data)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / want.data.iter().map(|b| b * b).sum::<f32>())
            .sqrt();
            println!(
                "{arch} {}: {name} max|diff| {d:.3e} = {:.3e} x scale {s:.4} (bound {tol:.1e}; \
                 rel. rms {rms:.2e})",
                precision.as_str(),
                d / s
            );
            assert!(
                d <= tol * s,
                "{arch} {} {name}: max diff {d} > {tol} x {s}",
                precision.as_str()
            );
        }
    }
}

#[test]
fn parity_resnet50() {
    check_parity(Arch::Resnet50);
}

#[test]
fn parity_resnet101() {
    check_parity(Arch::Resnet101);
}

#[test]
fn parity_efficientnet_lite0() {
    check_parity(Arch::EfficientnetLite0);
}

#[test]
fn parity_hrnet_w18() {
    check_parity(Arch::HrnetW18);
}

#[test]
fn parity_hrnet_w30() {
    check_parity(Arch::HrnetW30);
}

#[test]
fn parity_dla102x() {
    check_parity(Arch::Dla102x);
}

// ---------------------------------------------------------------- synthetic weights

/// Small random weights, unit running variance, for every tensor the model reads.
fn synthetic_state(arch: Arch, head: &HeadConfig, classifier: bool) -> StateDict {
    crate::model::synthetic::weights(&parameter_specs(arch, head, classifier).unwrap(), 0, 0.05)
}

#[test]
fn fishnet99_parameter_count_matches_paper() {
    // Paper (Table 1 / release README): FishNet-99 has 16.62M parameters.
    let ops = spec_of(Arch::Fishnet99);
    let n = ops.parameter_count();
    println!(
        "fishnet99: {n} parameters, {} state_dict entries",
        ops.specs.len()
    );
    assert!(
        (n as f64 - 16.62e6).abs() <= 0.01 * 16.62e6,
        "fishnet99 has {n} parameters, paper 16.62M"
    );
    let keys: Vec<&str> = ops.specs.iter().map(|s| s.key.as_str()).collect();
    for k in [
        "conv1.0.weight",
        "fish.fish.0.0.0.shortcut.2.weight",
        "fish.fish.3.1.bias",
        "fish.fish.3.3.0.5.weight",
        "fish.fish.9.1.3.conv3.weight",
        "fish.fish.9.3.3.running_var",
        "fish.fish.9.4.1.weight",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    // UP blocks have no shortcut; their identity is the channel-group sum.
    assert!(!keys
        .iter()
        .any(|k| k.starts_with("fish.fish.5.0.0.shortcut")));
}

#[test]
fn fishnet99_stage_shapes_in_ort() {
    // Stage outputs of the original release at 224 (net_factory.py comments):
    // stem 56; tail 28,14,7; body 7,14,28,56; head 28,14,7 (+ concatenated transfers).
    let want: [(usize, usize); 11] = [
        (64, 56),
        (128, 28),
        (256, 14),
        (512, 7),
        (512, 7),
        (768, 14),
        (512, 28),
        (320, 56),
        (832, 28),
        (1600, 14),
        (2112, 7),
    ];
    let head = HeadConfig::parse("G", 0, 3.0).unwrap();
    let state = synthetic_state(Arch::Fishnet99, &head, false);
    let mut ops = OnnxOps::new(Weights::new(state), Elem::F32, true);
    let n = Dim::Symbolic("N".into());
    let px = Dim::Fixed(224);
    ops.graph.input(
        "image",
        Elem::F32,
        &[n.clone(), Dim::Fixed(3), px.clone(), px],
    );
    let x = ops.tensor("image", 3, Elem::F32);
    let all = FishNet::fishnet99()
        .forward_all(&mut ops, &x, &VarPath::root())
        .unwrap();
    let mut names = Vec::new();
    for (i, t) in all.stages.iter().chain([&all.features]).enumerate() {
        let name = format!("stage{i}");
        let t = ops.shared(t);
        ops.identity_into(&t, &name);
        let s = |d: &str| Dim::Symbolic(format!("{name}_{d}"));
        ops.graph.output(
            &name,
            Elem::F32,
            &[
                n.clone(),
                Dim::Fixed(ops.channels(&t) as i64),
                s("h"),
                s("w"),
            ],
        );
        names.push(name);
    }
    ops.weights.finish().unwrap();
    let bytes = encode(&ops.graph.finish("fishnet99"));
    let mut s = session(&bytes);
    let input =
        Tensor::from_array(([1usize, 3, 224, 224], pseudo_random(9, 3 * 224 * 224))).unwrap();
    let out = s.run(ort::inputs!["image" => input]).unwrap();
    for (i, name) in names.iter().enumerate() {
        let (shape, v) = out[name.as_str()].try_extract_tensor::<f32>().unwrap();
        let (c, hw) = want.get(i).copied().unwrap_or((1056, 7));
        let part = match i {
            0 => "stem",
            1..=3 => "tail",
            4..=7 => "body",
            _ => "head",
        };
        println!("fishnet99 {name} ({part}): {:?}", shape.to_vec());
        assert_eq!(
            shape.to_vec(),
            vec![1, c as i64, hw as i64, hw as i64],
            "{name}"
        );
        assert!(v.iter().all(|x| x.is_finite()), "{name} not finite");
    }
}

#[test]
fn new_arch_names_parse() {
    for (s, a) in [
        ("hrnet_w18", Arch::HrnetW18),
        ("hrnet_w30", Arch::HrnetW30),
        ("dla102x", Arch::Dla102x),
        ("fishnet99", Arch::Fishnet99),
    ] {
        assert_eq!(s.parse::<Arch>().unwrap(), a);
    }
}

#[test]
fn digix_backbones_export_fp16_896_within_budget_and_embed_in_the_engine() {
    // The five DIGIX retrieval backbones with SMG/6144 CGD heads, FP16 at 896 px.
    // Seed's sizes (MB): HRNet-W18 62, HRNet-W30 93, FishNet99 43, DLA102x 74, ResNet101 106.
    let head = HeadConfig::parse("SMG", 6144, 3.0).unwrap();
    let mut total = 0u64;
    let mut entries = Vec::new();
    for arch in [
        Arch::HrnetW18,
        Arch::HrnetW30,
        Arch::Fishnet99,
        Arch::Dla102x,
        Arch::Resnet101,
    ] {
        let state = synthetic_state(arch, &head, false);
        let path = tmp(&format!("digix_{arch}_fp16_896.onnx"));
        let weights_path = tmp(&format!("digix_{arch}.safetensors"));
        std::fs::write(
            &weights_path,
            crate::model::weights::safetensors::save_safetensors(&state),
        )
        .unwrap();
        let mut o = ExportOptions::new(arch, &weights_path, &path);
        o.gd_config = "SMG".into();
        o.feature_dim = 6144;
        o.input_size = 896;
        o.precision = Precision::Fp16;
        let e = export(&o).unwrap();
        assert_eq!(e.manifest.descriptor_dim, 6144);
        let backbone = spec_of(arch).parameter_count();
        println!(
            "{arch}: {:.1} MB FP16 ({} initializer elements; backbone+classifier {} params)",
            e.file_bytes as f64 / 1e6,
            e.parameter_count,
            backbone
        );
        total += e.file_bytes;
        let _ = std::fs::remove_file(&weights_path);
        entries.push(e.manifest);
    }
    println!("total {:.1} MB", total as f64 / 1e6);
    assert!(total <= 500_000_000, "total {total} bytes > 500 MB");

    // The ensemble loads in the serving engine (CPU: FP16 upcast at load)
    // and embeds a real photo into one unit 5 x 6144-d descriptor.
    let manifest_path = tmp("digix_ensemble.toml");
    let manifest = crate::embed::manifest::Manifest {
        name: "digix".into(),
        backbones: entries,
        projection: None,
    };
    manifest.write(&manifest_path).unwrap();
    let dylib = std::env::var_os("LOOKALIKE_TEST_ORT_LIB").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(crate::config::DEFAULT_ORT_DYLIB)
        },
        std::path::PathBuf::from,
    );
    let engine = crate::embed::Engine::load(&manifest_path, &dylib, &Default::default()).unwrap();
    assert_eq!(engine.dims(), 5 * 6144);
    let photo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/datasets/grocery/val/Fruit/Banana/Banana_001.jpg");
    let bytes = std::fs::read(&photo).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (d, _) = rt.block_on(engine.embed(bytes)).unwrap();
    assert_eq!(d.len(), 5 * 6144);
    assert!(d.iter().all(|x| x.is_finite()));
    let norm = d.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    drop(engine);
    for e in &manifest.backbones {
        let _ = std::fs::remove_file(tmp(&e.onnx));
    }
}

#[test]
fn parameter_specs_cover_new_arches_with_head() {
    let head = HeadConfig::parse("SMG", 6144, 3.0).unwrap();
    for arch in [Arch::HrnetW18, Arch::Dla102x, Arch::Fishnet99] {
        let specs = parameter_specs(arch, &head, false).unwrap();
        let head_params: usize = specs
            .iter()
            .filter(|s| s.key.starts_with("head.") && s.kind == ParamKind::Param)
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        // 3 branches x (fc 2048 x C + BN weight/bias 2 x 2048).
        assert_eq!(
            head_params,
            3 * (2048 * arch.feature_channels() + 4096),
            "{arch}"
        );
    }
}

#[test]
fn channel_group_sum_matches_view_sum_in_ort() {
    // FishNet's squeeze_idt: x.view(n, c/k, k, h, w).sum(2), here c = 6, k = 3.
    let mut ops = OnnxOps::new(Weights::new(StateDict::new()), Elem::F32, true);
    let dims = [1i64, 6, 4, 5].map(Dim::Fixed);
    ops.graph.input("image", Elem::F32, &dims);
    let x = ops.tensor("image", 6, Elem::F32);
    let y = ops.sum_channel_groups(&x, 3).unwrap();
    assert_eq!(ops.channels(&y), 2);
    assert!(ops.sum_channel_groups(&x, 4).is_err());
    ops.identity_into(&y, "out");
    ops.graph
        .output("out", Elem::F32, &[1i64, 2, 4, 5].map(Dim::Fixed));
    let bytes = encode(&ops.graph.finish("group_sum"));
    let x = pseudo_random(11, 6 * 20);
    let mut s = session(&bytes);
    let input = Tensor::from_array(([1usize, 6, 4, 5], x.clone())).unwrap();
    let out = s.run(ort::inputs!["image" => input]).unwrap();
    let (_, got) = out["out"].try_extract_tensor::<f32>().unwrap();
    let mut want = vec![0.0f32; 2 * 20];
    for (i, v) in x.iter().enumerate() {
        let (c, p) = (i / 20, i % 20);
        want[(c / 3) * 20 + p] += v;
    }
    assert!(max_abs_diff(got, &want) < 1e-6);
}
