//! End-to-end checks with the real EfficientNet-Lite0 checkpoint and ONNX Runtime.
//! Tests needing files that are absent on this machine fail loudly (they are the point).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::f16;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

use crate::model::arch::Arch;
use crate::model::error::ModelError;
use crate::model::export::{build_model, export, ExportOptions, Precision};
use crate::model::graph::{encode, Dim, Elem};
use crate::model::head::HeadConfig;
use crate::model::inspect::inspect;
use crate::model::onnx_ops::OnnxOps;
use crate::model::spec_ops::SpecOps;
use crate::model::tensor::HostTensor;
use crate::model::vars::{ParamKind, VarPath, Weights};
use crate::model::weights::pickle::{unpickle, Value};
use crate::model::weights::safetensors::{load_safetensors, save_safetensors};
use crate::model::weights::torch::load_torch;
use crate::model::weights::zip::write_stored;
use crate::model::weights::{load_weights, StateDict};

// Where scripts/setup.sh puts the fixtures; overridable through
// LOOKALIKE_TEST_LITE0_PTH / _ORT_LIB / _GROCERY.
const PTH_DEFAULT: &str = crate::model::export::LITE0_PTH;
const ORT_LIB_DEFAULT: &str = crate::config::DEFAULT_ORT_DYLIB;
const GROCERY_DEFAULT: &str = "../shared/datasets/grocery/train/Fruit";

fn fixture(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default),
        PathBuf::from,
    )
}
fn pth() -> PathBuf {
    fixture("LOOKALIKE_TEST_LITE0_PTH", PTH_DEFAULT)
}
fn grocery() -> PathBuf {
    fixture("LOOKALIKE_TEST_GROCERY", GROCERY_DEFAULT)
}

fn lite0_weights() -> &'static StateDict {
    static W: OnceLock<StateDict> = OnceLock::new();
    W.get_or_init(|| load_weights(&pth()).unwrap())
}

pub(super) fn env() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        crate::embed::runtime::environment(&fixture("LOOKALIKE_TEST_ORT_LIB", ORT_LIB_DEFAULT))
            .unwrap()
    })
}

pub(super) fn session(bytes: &[u8]) -> Session {
    Session::builder(env())
        .unwrap()
        .with_intra_threads(2)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap()
}

/// Runs the graph on an f32 [N,3,H,W] batch; returns each output as (shape, values).
fn run(
    sess: &mut Session,
    shape: [usize; 4],
    data: Vec<f32>,
    outputs: &[&str],
) -> Vec<(Vec<i64>, Vec<f32>)> {
    let input = Tensor::from_array((shape, data)).unwrap();
    let out = sess.run(ort::inputs!["image" => input]).unwrap();
    outputs
        .iter()
        .map(|name| {
            let (s, v) = out[*name].try_extract_tensor::<f32>().unwrap();
            (s.to_vec(), v.to_vec())
        })
        .collect()
}

fn lite0_options(out: &str) -> ExportOptions {
    ExportOptions::new(Arch::EfficientnetLite0, pth(), out)
}

fn model_bytes(opts: &ExportOptions) -> Vec<u8> {
    let (m, _, _) = build_model(opts, lite0_weights().clone()).unwrap();
    encode(&m)
}

/// Shorter side -> 256 (bilinear), centre crop 224, (x - mean) / std, NCHW.
fn preprocess(path: &Path, mean: f32, std: f32) -> Vec<f32> {
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let s = 256.0 / w.min(h) as f32;
    let (nw, nh) = ((w as f32 * s).round() as u32, (h as f32 * s).round() as u32);
    let img = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let (x0, y0) = ((nw - 224) / 2, (nh - 224) / 2);
    let mut out = vec![0.0; 3 * 224 * 224];
    for y in 0..224 {
        for x in 0..224 {
            let p = img.get_pixel(x0 + x, y0 + y);
            for c in 0..3 {
                out[c * 224 * 224 + (y * 224 + x) as usize] = (p[c] as f32 / 255.0 - mean) / std;
            }
        }
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

pub(super) use crate::model::synthetic::pseudo_random;

pub(super) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub(super) fn tmp(name: &str) -> PathBuf {
    // One fixed directory, overwritten per run; every test uses its own file names.
    let dir = std::env::temp_dir().join("modelkit-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

// ---------------------------------------------------------------- weight import

#[test]
fn legacy_pth_values_match_python_reference() {
    let w = lite0_weights();
    assert_eq!(w.len(), 296);
    // Reference values read with Python's stdlib pickle + struct from the same file.
    // The stem weight is stored with strides (1, 32, 288, 96): this checks the gather.
    let at = |k: &str, idx: &[usize]| {
        let t = &w[k];
        let mut off = 0;
        for (i, d) in idx.iter().zip(&t.shape) {
            off = off * d + i;
        }
        t.data[off] as f64
    };
    assert_eq!(at("_conv_stem.weight", &[1, 2, 0, 1]), -0.08920226991176605);
    assert_eq!(
        at("_conv_stem.weight", &[31, 0, 2, 2]),
        -1.862645149230957e-09
    );
    assert_eq!(
        at("_blocks.1._expand_conv.weight", &[5, 3, 0, 0]),
        0.06576147675514221
    );
    assert_eq!(at("_fc.bias", &[954]), 0.04422520846128464);
    assert_eq!(at("_fc.weight", &[954, 17]), -0.08462714403867722);
    assert_eq!(at("_bn1.running_var", &[1279]), 11.04356861114502);
    assert_eq!(
        at("_blocks.15._project_conv.weight", &[319, 1151, 0, 0]),
        -0.04374096170067787
    );
    assert_eq!(w["_bn0.num_batches_tracked"].shape, Vec::<usize>::new());
}

/// Re-packs the legacy file's own pickle and storages as a torch zip archive.
#[test]
fn zip_checkpoint_loads_identically_to_legacy() {
    let buf = std::fs::read(pth()).unwrap();
    let mut pos = 0;
    let mut spans = Vec::new();
    for _ in 0..5 {
        let (v, n) = unpickle(&buf[pos..]).unwrap();
        spans.push((pos, pos + n, v));
        pos += n;
    }
    let data_pkl = &buf[spans[3].0..spans[3].1];
    let keys: Vec<String> = spans[4]
        .2
        .as_seq()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    // Element size per storage, from the storage types in the persistent ids.
    fn sizes(v: &Value, out: &mut BTreeMap<String, usize>) {
        match v {
            Value::PersId(pid) => {
                let t = pid.as_seq().unwrap();
                let es = if t[1].is_global("torch", "LongStorage") {
                    8
                } else {
                    4
                };
                out.insert(t[2].as_str().unwrap().to_string(), es);
            }
            Value::Call { func, args } => {
                sizes(func, out);
                args.iter().for_each(|a| sizes(a, out));
            }
            Value::Tuple(xs) | Value::List(xs) => xs.iter().for_each(|a| sizes(a, out)),
            Value::Dict(kv) => kv.iter().for_each(|(k, v)| {
                sizes(k, out);
                sizes(v, out)
            }),
            _ => {}
        }
    }
    let mut elem_size = BTreeMap::new();
    sizes(&spans[3].2, &mut elem_size);
    let legacy = lite0_weights();
    let mut entries: Vec<(String, Vec<u8>)> = vec![("archive/data.pkl".into(), data_pkl.to_vec())];
    for key in &keys {
        let n = i64::from_le_bytes(buf[pos..pos + 8].try_into().unwrap()) as usize;
        let es = elem_size[key];
        entries.push((
            format!("archive/data/{key}"),
            buf[pos + 8..pos + 8 + n * es].to_vec(),
        ));
        pos += 8 + n * es;
    }
    assert_eq!(pos, buf.len(), "storage walk must consume the whole file");
    let files: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let zipped = write_stored(&files);
    let from_zip = load_torch(&zipped).unwrap();
    assert_eq!(&from_zip, legacy);
}

#[test]
fn safetensors_round_trip_of_real_checkpoint() {
    let w = lite0_weights();
    let path = tmp("lite0.safetensors");
    std::fs::write(&path, save_safetensors(w)).unwrap();
    assert_eq!(&load_weights(&path).unwrap(), w);
    assert_eq!(
        &load_safetensors(&std::fs::read(&path).unwrap()).unwrap(),
        w
    );
}

#[test]
fn lite0_definition_asks_for_exactly_the_checkpoint_keys() {
    let mut ops = SpecOps::default();
    let root = VarPath::root();
    let f = Arch::EfficientnetLite0
        .features(&mut ops, &3, &root)
        .unwrap();
    assert_eq!(f, 1280);
    Arch::EfficientnetLite0
        .classifier(&mut ops, &f, &root)
        .unwrap();
    let expected: BTreeMap<&str, &Vec<usize>> = ops
        .specs
        .iter()
        .map(|s| (s.key.as_str(), &s.shape))
        .collect();
    let found: BTreeMap<&str, &Vec<usize>> = lite0_weights()
        .iter()
        .map(|(k, t)| (k.as_str(), &t.shape))
        .collect();
    assert_eq!(expected, found);
    assert_eq!(ops.parameter_count(), 4_652_008);
}

#[test]
fn export_reports_every_missing_unexpected_and_misshaped_key() {
    let mut w = lite0_weights().clone();
    w.remove("_blocks.3._bn1.running_var");
    w.remove("_conv_head.weight");
    w.insert("_blocks.3._bn1.weight".into(), HostTensor::zeros(&[7]));
    w.insert("bogus.weight".into(), HostTensor::zeros(&[1]));
    let err = build_model(&lite0_options("x.onnx"), w).unwrap_err();
    let ModelError::Weights(r) = err else {
        panic!("wrong error {err}")
    };
    assert_eq!(
        r.missing,
        vec!["_blocks.3._bn1.running_var", "_conv_head.weight"]
    );
    assert_eq!(r.unexpected, vec!["bogus.weight"]);
    assert_eq!(r.shape_mismatch.len(), 1);
    assert_eq!(r.shape_mismatch[0].key, "_blocks.3._bn1.weight");
    assert_eq!(r.shape_mismatch[0].expected, vec![144]);
    // A projection head needs trained weights that an ImageNet checkpoint lacks.
    let mut o = lite0_options("x.onnx");
    o.feature_dim = 512;
    o.gd_config = "SG".into();
    let ModelError::Weights(r) = build_model(&o, lite0_weights().clone()).unwrap_err() else {
        panic!()
    };
    assert_eq!(r.missing.len(), 10); // 2 branches x (fc.weight + 4 BN tensors)
    assert!(r
        .missing
        .contains(&"head.branches.1.bn.running_var".to_string()));
}

// ---------------------------------------------------------------- ONNX Runtime parity

#[test]
fn lite0_predicts_banana_and_granny_smith() {
    let mut o = lite0_options("lite0.onnx");
    o.keep_classifier = true;
    let mut sess = session(&model_bytes(&o));
    let pre = Arch::EfficientnetLite0.preprocess();
    let mut classify = |dir: &str, n: usize| -> Vec<usize> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(grocery().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        files.sort();
        files
            .iter()
            .take(n)
            .map(|f| {
                let x = preprocess(f, pre.mean[0], pre.std[0]);
                let r = run(&mut sess, [1, 3, 224, 224], x, &["logits", "descriptor"]);
                assert_eq!(r[0].0, vec![1, 1000]);
                assert_eq!(r[1].0, vec![1, 1280]);
                argmax(&r[0].1)
            })
            .collect()
    };
    let bananas = classify("Banana", 8);
    let hits = bananas.iter().filter(|&&c| c == 954).count();
    println!("banana top-1: {bananas:?}");
    assert!(hits * 4 >= bananas.len() * 3, "banana top-1 {bananas:?}");
    let apples = classify("Apple/Granny-Smith", 8);
    println!("granny smith top-1: {apples:?}");
    let hits = apples.iter().filter(|&&c| c == 948).count();
    assert!(hits * 2 >= apples.len(), "granny smith top-1 {apples:?}");
}

#[test]
fn folded_batchnorm_equals_unfolded_in_ort() {
    let mut o = lite0_options("a.onnx");
    o.keep_classifier = true;
    o.gd_config = "SMG".into();
    let folded = model_bytes(&o);
    o.fold_bn = false;
    let unfolded = model_bytes(&o);
    assert!(folded.len() < unfolded.len());
    let x = pseudo_random(7, 2 * 3 * 224 * 224);
    let a = run(
        &mut session(&folded),
        [2, 3, 224, 224],
        x.clone(),
        &["descriptor", "logits"],
    );
    let b = run(
        &mut session(&unfolded),
        [2, 3, 224, 224],
        x,
        &["descriptor", "logits"],
    );
    assert_eq!(a[0].0, vec![2, 3840]);
    assert!(
        max_abs_diff(&a[0].1, &b[0].1) < 1e-5,
        "descriptor diff {}",
        max_abs_diff(&a[0].1, &b[0].1)
    );
    assert!(
        max_abs_diff(&a[1].1, &b[1].1) < 1e-3,
        "logit diff {}",
        max_abs_diff(&a[1].1, &b[1].1)
    );
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn fp16_exports_track_fp32() {
    let banana = grocery().join("Banana/Banana_001.jpg");
    let pre = Arch::EfficientnetLite0.preprocess();
    let x = preprocess(&banana, pre.mean[0], pre.std[0]);
    let mut o = lite0_options("a.onnx");
    o.gd_config = "SMG".into();
    let fp32 = run(
        &mut session(&model_bytes(&o)),
        [1, 3, 224, 224],
        x.clone(),
        &["descriptor"],
    );
    o.precision = Precision::Fp16;
    let bytes16 = model_bytes(&o);
    let fp16 = run(
        &mut session(&bytes16),
        [1, 3, 224, 224],
        x.clone(),
        &["descriptor"],
    );
    let c = cosine(&fp32[0].1, &fp16[0].1);
    assert!(c > 0.999, "fp16 vs fp32 cosine {c}");

    // FP16 I/O: half input, half output.
    o.fp16_io = true;
    let mut s = session(&model_bytes(&o));
    let xh: Vec<f16> = x.iter().map(|v| f16::from_f32(*v)).collect();
    let input = Tensor::from_array(([1usize, 3, 224, 224], xh)).unwrap();
    let out = s.run(ort::inputs!["image" => input]).unwrap();
    let (shape, d) = out["descriptor"].try_extract_tensor::<f16>().unwrap();
    assert_eq!(shape.to_vec(), vec![1, 3840]);
    let d: Vec<f32> = d.iter().map(|v| v.to_f32()).collect();
    let c = cosine(&fp32[0].1, &d);
    assert!(c > 0.999, "fp16-io vs fp32 cosine {c}");
}

#[test]
fn dynamic_hw_export_matches_static_and_accepts_other_sizes() {
    let mut o = lite0_options("a.onnx");
    let x = pseudo_random(3, 3 * 224 * 224);
    let fixed = run(
        &mut session(&model_bytes(&o)),
        [1, 3, 224, 224],
        x.clone(),
        &["descriptor"],
    );
    o.dynamic_hw = true;
    let mut dynamic = session(&model_bytes(&o));
    let same = run(&mut dynamic, [1, 3, 224, 224], x, &["descriptor"]);
    assert!(max_abs_diff(&fixed[0].1, &same[0].1) < 1e-6);
    let other = run(
        &mut dynamic,
        [2, 3, 181, 250],
        pseudo_random(4, 2 * 3 * 181 * 250),
        &["descriptor"],
    );
    assert_eq!(other[0].0, vec![2, 1280]);
    let norm: f32 = other[0].1[..1280].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
}

/// Reference CGD head in plain Rust on a [C,H,W] map.
fn reference_head(
    f: &[f32],
    c: usize,
    hw: usize,
    cfg: &str,
    p: f32,
    proj: Option<&StateDict>,
    dim: usize,
) -> Vec<f32> {
    let l2 = |v: Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.into_iter().map(|x| x / n).collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for (i, ch) in cfg.chars().enumerate() {
        let pooled: Vec<f32> = (0..c)
            .map(|k| {
                let s = &f[k * hw..(k + 1) * hw];
                match ch {
                    'S' => s.iter().sum::<f32>() / hw as f32,
                    'M' => s.iter().copied().fold(f32::MIN, f32::max),
                    _ => {
                        let m = s
                            .iter()
                            .map(|x| x.signum() * x.abs().max(1e-6).powf(p))
                            .sum::<f32>()
                            / hw as f32;
                        m.signum() * m.abs().powf(1.0 / p)
                    }
                }
            })
            .collect();
        let v = match proj {
            None => pooled,
            Some(w) => {
                let b = format!("head.branches.{i}");
                let fc = &w[&format!("{b}.fc.weight")];
                let bd = dim / cfg.len();
                (0..bd)
                    .map(|o| {
                        let y: f32 = (0..c).map(|k| fc.data[o * c + k] * pooled[k]).sum();
                        let g = |n: &str| w[&format!("{b}.bn.{n}")].data[o];
                        (y - g("running_mean")) / (g("running_var") + 1e-5).sqrt() * g("weight")
                            + g("bias")
                    })
                    .collect()
            }
        };
        out.extend(l2(v));
    }
    l2(out)
}

#[test]
fn cgd_head_matches_reference_with_and_without_projection() {
    let (n, c, h, w) = (2usize, 8usize, 5usize, 3usize);
    let feat = pseudo_random(11, n * c * h * w);
    let cases = [("SMG", 0usize), ("G", 0), ("SMG", 12), ("MG", 4)];
    for ((cfg, dim), fold) in cases.into_iter().flat_map(|c| [(c, true), (c, false)]) {
        let mut state = StateDict::new();
        let branches = if dim > 0 { cfg.len() } else { 0 };
        for i in 0..branches {
            let bd = dim / cfg.len();
            let b = format!("head.branches.{i}");
            state.insert(
                format!("{b}.fc.weight"),
                HostTensor::new(vec![bd, c], pseudo_random(20 + i as u32, bd * c)).unwrap(),
            );
            for (k, seed) in [("weight", 30), ("bias", 40), ("running_mean", 50)] {
                state.insert(
                    format!("{b}.bn.{k}"),
                    HostTensor::new(vec![bd], pseudo_random(seed + i as u32, bd)).unwrap(),
                );
            }
            let var = pseudo_random(60 + i as u32, bd)
                .iter()
                .map(|v| v + 1.5)
                .collect();
            state.insert(
                format!("{b}.bn.running_var"),
                HostTensor::new(vec![bd], var).unwrap(),
            );
        }
        let head = HeadConfig::parse(cfg, dim, 3.0).unwrap();
        let mut ops = OnnxOps::new(Weights::new(state.clone()), Elem::F32, fold);
        ops.graph.input(
            "image",
            Elem::F32,
            &[
                Dim::Symbolic("N".into()),
                Dim::Fixed(c as i64),
                Dim::Fixed(h as i64),
                Dim::Fixed(w as i64),
            ],
        );
        let x = ops.tensor("image", c, Elem::F32);
        let y = head
            .build(&mut ops, &x, &VarPath::root().pp("head"))
            .unwrap();
        ops.identity_into(&y, "descriptor");
        let d = head.descriptor_dim(c);
        ops.graph.output(
            "descriptor",
            Elem::F32,
            &[Dim::Symbolic("N".into()), Dim::Fixed(d as i64)],
        );
        ops.weights.finish().unwrap();
        let bytes = encode(&ops.graph.finish("head"));
        let got = run(
            &mut session(&bytes),
            [n, c, h, w],
            feat.clone(),
            &["descriptor"],
        );
        assert_eq!(got[0].0, vec![n as i64, d as i64]);
        for b in 0..n {
            let f = &feat[b * c * h * w..(b + 1) * c * h * w];
            let want = reference_head(f, c, h * w, cfg, 3.0, (dim > 0).then_some(&state), dim);
            let diff = max_abs_diff(&got[0].1[b * d..(b + 1) * d], &want);
            assert!(diff < 1e-5, "{cfg}/{dim}/fold={fold}: diff {diff}");
        }
    }
}

// ---------------------------------------------------------------- export API / inspect

#[test]
fn export_writes_file_manifest_and_metadata() {
    let path = tmp("efficientnet_lite0_smg.onnx");
    let mut o = lite0_options(path.to_str().unwrap());
    o.gd_config = "SMG".into();
    let e = export(&o).unwrap();
    assert_eq!(e.manifest.name, "efficientnet_lite0_smg");
    assert_eq!(e.manifest.onnx, "efficientnet_lite0_smg.onnx");
    assert_eq!(e.manifest.descriptor_dim, 3840);
    assert_eq!(e.manifest.resize, 256);
    assert_eq!(e.manifest.mean, [127.0 / 255.0; 3]);
    let toml = toml::to_string(&e.manifest).unwrap();
    assert!(
        toml.contains("arch = \"efficientnet_lite0\"") && toml.contains("precision = \"fp32\""),
        "{toml}"
    );
    let back: crate::model::export::ManifestEntry = toml::from_str(&toml).unwrap();
    assert_eq!(back, e.manifest);

    let info = inspect(&path).unwrap();
    let keys: BTreeSet<&str> = info.metadata.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "lookalike.arch",
        "lookalike.input_size",
        "lookalike.resize",
        "lookalike.resize_policy",
        "lookalike.mean",
        "lookalike.std",
        "lookalike.descriptor_dim",
        "lookalike.gd_config",
        "lookalike.gem_p",
        "lookalike.precision",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, want);
    assert_eq!(
        info.metadata["lookalike.resize_policy"],
        "shorter_side_center_crop"
    );
    assert!(
        toml.contains("resize_policy = \"shorter_side_center_crop\""),
        "{toml}"
    );
    assert_eq!(
        info.metadata["lookalike.std"],
        "0.5019608,0.5019608,0.5019608"
    );
    assert_eq!(info.metadata["lookalike.gem_p"], "3");
    assert_eq!(info.inputs[0].name, "image");
    assert_eq!(info.inputs[0].dims, ["N", "3", "224", "224"]);
    assert_eq!(info.outputs.len(), 1);
    assert_eq!(info.outputs[0].dims, ["N", "3840"]);
    assert_eq!(info.opset, 17);
    assert_eq!(info.parameter_count, e.parameter_count);
    assert_eq!(info.file_bytes, e.file_bytes);
    let text = info.to_string();
    assert!(
        text.contains("input image: FLOAT [N, 3, 224, 224]")
            && text.contains("lookalike.gd_config = SMG"),
        "{text}"
    );

    // FP16: half-size file, same interface.
    let path16 = tmp("efficientnet_lite0_fp16.onnx");
    let mut o16 = lite0_options(path16.to_str().unwrap());
    o16.precision = Precision::Fp16;
    let e16 = export(&o16).unwrap();
    println!(
        "fp32 {} bytes, fp16 {} bytes, {} parameters after folding",
        e.file_bytes, e16.file_bytes, e.parameter_count
    );
    assert!((e16.file_bytes as f64) < 0.55 * e.file_bytes as f64);
    let info16 = inspect(&path16).unwrap();
    assert_eq!(info16.metadata["lookalike.precision"], "fp16");
    assert_eq!(info16.inputs[0].elem_type, "FLOAT");
}

#[test]
fn resnet_parameter_counts_match_pytorch() {
    // Reference: torchvision/timm parameter counts and state_dict lengths
    // (161 / 314 parameter tensors, 320 / 626 entries with BN buffers).
    for (arch, want, tensors, entries) in [
        (Arch::Resnet50, 25_557_032usize, 161, 320),
        (Arch::Resnet101, 44_549_160, 314, 626),
    ] {
        let mut ops = SpecOps::default();
        let root = VarPath::root();
        let f = arch.features(&mut ops, &3, &root).unwrap();
        assert_eq!(f, 2048);
        arch.classifier(&mut ops, &f, &root).unwrap();
        assert_eq!(ops.parameter_count(), want, "{}", arch.name());
        let params = ops
            .specs
            .iter()
            .filter(|s| s.kind == ParamKind::Param)
            .count();
        assert_eq!(
            (params, ops.specs.len()),
            (tensors, entries),
            "{}",
            arch.name()
        );
        let unique: BTreeSet<&str> = ops.specs.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(unique.len(), entries);
        assert!(ops
            .specs
            .iter()
            .any(|s| s.key == "layer4.0.downsample.1.running_var"));
        assert!(
            ops.specs.iter().any(|s| s.key == "layer3.22.conv3.weight")
                == (arch == Arch::Resnet101)
        );
    }
}

#[test]
fn resnet50_export_runs_in_ort_with_synthetic_weights() {
    // Random conv weights, unit-variance BN: checks graph validity and output shapes.
    let mut spec = SpecOps::default();
    let root = VarPath::root();
    Arch::Resnet50.features(&mut spec, &3, &root).unwrap();
    let state = crate::model::synthetic::weights(&spec.specs, 0, 0.05);
    let mut o = ExportOptions::new(Arch::Resnet50, "unused", "r50.onnx");
    o.gd_config = "SMG".into();
    o.input_size = 128;
    let (m, manifest, _) = build_model(&o, state).unwrap();
    assert_eq!(manifest.descriptor_dim, 6144);
    let r = run(
        &mut session(&encode(&m)),
        [1, 3, 128, 128],
        pseudo_random(5, 3 * 128 * 128),
        &["descriptor"],
    );
    assert_eq!(r[0].0, vec![1, 6144]);
    assert!(r[0].1.iter().all(|v| v.is_finite()));
    let norm: f32 = r[0].1.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}
