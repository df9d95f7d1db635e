//! `Ops` implementation that emits an ONNX graph. BatchNorm directly after a convolution
//! whose output nobody else has consumed is folded into that convolution's weights.
use std::collections::HashMap;

use crate::model::bn_fold::{fold_into, BnParams};
use crate::model::error::{ModelError, Result};
use crate::model::graph::{attr_float, attr_int, attr_ints, attr_str, Elem, GraphBuilder};
use crate::model::ops::{Activation, Conv2d, GlobalPool, Ops, Padding, Pool2d};
use crate::model::tensor::HostTensor;
use crate::model::vars::{VarPath, Weights};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxTensor {
    pub name: String,
    pub channels: usize,
    pub elem: Elem,
}

/// A Conv/Gemm whose output nobody has consumed yet, so it can still absorb a BatchNorm.
struct Foldable {
    node: usize,
    weight: String,
    bias: Option<String>,
    out_channels: usize,
}

pub struct OnnxOps {
    pub graph: GraphBuilder,
    pub weights: Weights,
    fold_bn: bool,
    /// Element type new parameters get (FP16 export: F16 until `full_precision`).
    param_elem: Elem,
    foldable: HashMap<String, Foldable>,
}

impl OnnxOps {
    pub fn new(weights: Weights, param_elem: Elem, fold_bn: bool) -> Self {
        Self {
            graph: GraphBuilder::new(),
            weights,
            fold_bn,
            param_elem,
            foldable: HashMap::new(),
        }
    }

    /// A graph input tensor (already of `param_elem` type, see `cast`).
    pub fn tensor(&self, name: &str, channels: usize, elem: Elem) -> OnnxTensor {
        OnnxTensor {
            name: name.into(),
            channels,
            elem,
        }
    }

    pub fn cast(&mut self, x: &OnnxTensor, to: Elem) -> OnnxTensor {
        if x.elem == to {
            return x.clone();
        }
        self.consume(&x.name);
        let name = self
            .graph
            .node("Cast", &[&x.name], vec![attr_int("to", to.onnx() as i64)]);
        OnnxTensor {
            name,
            channels: x.channels,
            elem: to,
        }
    }

    /// Renames the final value to a graph output name via Identity.
    pub fn identity_into(&mut self, x: &OnnxTensor, output: &str) {
        self.consume(&x.name);
        self.graph.node_into("Identity", &[&x.name], output, vec![]);
    }

    fn consume(&mut self, name: &str) {
        self.foldable.remove(name);
    }

    fn param(&mut self, key: &str, shape: &[usize]) -> Result<String> {
        let t = self.weights.get(key, shape);
        self.graph.initializer(key, t, self.param_elem)
    }

    fn scalar(&mut self, hint: &str, v: f32, elem: Elem) -> Result<String> {
        self.graph.constant(hint, HostTensor::scalar(v), elem)
    }

    fn unary(&mut self, op: &str, x: &OnnxTensor) -> OnnxTensor {
        self.consume(&x.name);
        let name = self.graph.node(op, &[&x.name], vec![]);
        OnnxTensor { name, ..x.clone() }
    }

    fn binary(&mut self, op: &str, a: &OnnxTensor, b: &str) -> OnnxTensor {
        self.consume(&a.name);
        self.consume(b);
        let name = self.graph.node(op, &[&a.name, b], vec![]);
        OnnxTensor { name, ..a.clone() }
    }

    fn bn_params(&mut self, vp: &VarPath, c: usize) -> [HostTensor; 4] {
        self.weights
            .consume_optional(&vp.key("num_batches_tracked"));
        ["weight", "bias", "running_mean", "running_var"]
            .map(|k| self.weights.get(&vp.key(k), &[c]))
    }

    /// Gemm with a PyTorch-layout `[out, in]` weight; left foldable for a following BatchNorm1d.
    fn gemm(
        &mut self,
        x: &OnnxTensor,
        w: String,
        vp: &VarPath,
        out: usize,
        bias: bool,
    ) -> Result<OnnxTensor> {
        let mut inputs = vec![x.name.clone(), w];
        if bias {
            inputs.push(self.param(&vp.key("bias"), &[out])?);
        }
        self.consume(&x.name);
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let name = self.graph.node("Gemm", &refs, vec![attr_int("transB", 1)]);
        // A following BatchNorm1d folds into the Gemm exactly as into a convolution.
        let node = self.graph.producer(&name).unwrap_or_default();
        self.foldable.insert(
            name.clone(),
            Foldable {
                node,
                weight: inputs[1].clone(),
                bias: inputs.get(2).cloned(),
                out_channels: out,
            },
        );
        Ok(OnnxTensor {
            name,
            channels: out,
            elem: x.elem,
        })
    }

    fn pad_attrs(padding: Padding) -> Vec<crate::model::onnx_pb::AttributeProto> {
        match padding {
            Padding::TfSame => vec![attr_str("auto_pad", "SAME_UPPER")],
            Padding::Explicit(p) => vec![attr_ints("pads", &[p as i64; 4])],
        }
    }
}

impl Ops for OnnxOps {
    type Tensor = OnnxTensor;

    fn channels(&self, x: &OnnxTensor) -> usize {
        x.channels
    }

    fn shared(&mut self, x: &OnnxTensor) -> OnnxTensor {
        self.consume(&x.name);
        x.clone()
    }

    fn conv2d(&mut self, x: &OnnxTensor, vp: &VarPath, cfg: &Conv2d) -> Result<OnnxTensor> {
        if cfg.groups == 0
            || !x.channels.is_multiple_of(cfg.groups)
            || !cfg.out_channels.is_multiple_of(cfg.groups)
        {
            return Err(ModelError::Graph(format!(
                "{}: {} -> {} channels not divisible by groups {}",
                vp.prefix(),
                x.channels,
                cfg.out_channels,
                cfg.groups
            )));
        }
        let k = cfg.kernel;
        let w = self.param(
            &vp.key("weight"),
            &[cfg.out_channels, x.channels / cfg.groups, k, k],
        )?;
        let b = if cfg.bias {
            Some(self.param(&vp.key("bias"), &[cfg.out_channels])?)
        } else {
            None
        };
        let mut attrs = vec![
            attr_ints("kernel_shape", &[k as i64, k as i64]),
            attr_ints("strides", &[cfg.stride as i64, cfg.stride as i64]),
            attr_int("group", cfg.groups as i64),
            attr_ints("dilations", &[cfg.dilation as i64; 2]),
        ];
        attrs.extend(Self::pad_attrs(cfg.padding));
        self.consume(&x.name);
        let mut inputs = vec![x.name.as_str(), w.as_str()];
        if let Some(b) = &b {
            inputs.push(b);
        }
        let name = self.graph.node("Conv", &inputs, attrs);
        let node = self.graph.producer(&name).unwrap_or_default();
        self.foldable.insert(
            name.clone(),
            Foldable {
                node,
                weight: w,
                bias: b,
                out_channels: cfg.out_channels,
            },
        );
        Ok(OnnxTensor {
            name,
            channels: cfg.out_channels,
            elem: x.elem,
        })
    }

    fn batch_norm(&mut self, x: &OnnxTensor, vp: &VarPath, eps: f32) -> Result<OnnxTensor> {
        let c = x.channels;
        let [gamma, beta, mean, var] = self.bn_params(vp, c);
        if let Some(f) = self.foldable.remove(&x.name).filter(|_| self.fold_bn) {
            let bias_name = match f.bias {
                Some(b) => b,
                None => {
                    let name = format!("{}.bias", f.weight.trim_end_matches(".weight"));
                    let b = self.graph.initializer(
                        &name,
                        HostTensor::zeros(&[f.out_channels]),
                        x.elem,
                    )?;
                    if let Some(inputs) = self.graph.node_inputs_mut(f.node) {
                        inputs.push(b.clone());
                    }
                    b
                }
            };
            let mut bias = self
                .graph
                .initializer_mut(&bias_name)
                .map(|t| t.data.clone())
                .ok_or_else(|| ModelError::Graph(format!("bias {bias_name} vanished")))?;
            let weight = self
                .graph
                .initializer_mut(&f.weight)
                .ok_or_else(|| ModelError::Graph(format!("weight {} vanished", f.weight)))?;
            let bn = BnParams {
                gamma: &gamma.data,
                beta: &beta.data,
                mean: &mean.data,
                var: &var.data,
                eps,
            };
            fold_into(weight, &mut bias, &bn);
            if let Some(t) = self.graph.initializer_mut(&bias_name) {
                t.data = bias;
            }
            // The conv output now *is* the normalised value.
            return Ok(x.clone());
        }
        let names = ["weight", "bias", "running_mean", "running_var"];
        let mut inputs = vec![x.name.clone()];
        for (n, t) in names.iter().zip([gamma, beta, mean, var]) {
            inputs.push(self.graph.initializer(&vp.key(n), t, x.elem)?);
        }
        self.consume(&x.name);
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let name = self.graph.node(
            "BatchNormalization",
            &refs,
            vec![attr_float("epsilon", eps)],
        );
        Ok(OnnxTensor { name, ..x.clone() })
    }

    fn activation(&mut self, x: &OnnxTensor, act: Activation) -> Result<OnnxTensor> {
        Ok(match act {
            Activation::Identity => x.clone(),
            Activation::Relu => self.unary("Relu", x),
            Activation::Sigmoid => self.unary("Sigmoid", x),
            Activation::Relu6 => {
                let lo = self.scalar("zero", 0.0, x.elem)?;
                let hi = self.scalar("six", 6.0, x.elem)?;
                self.consume(&x.name);
                let name = self.graph.node("Clip", &[&x.name, &lo, &hi], vec![]);
                OnnxTensor { name, ..x.clone() }
            }
            Activation::Silu => {
                let s = self.unary("Sigmoid", x);
                self.binary("Mul", x, &s.name)
            }
        })
    }

    fn add(&mut self, a: &OnnxTensor, b: &OnnxTensor) -> Result<OnnxTensor> {
        Ok(self.binary("Add", a, &b.name))
    }

    fn mul(&mut self, a: &OnnxTensor, b: &OnnxTensor) -> Result<OnnxTensor> {
        Ok(self.binary("Mul", a, &b.name))
    }

    fn concat(&mut self, xs: &[OnnxTensor]) -> Result<OnnxTensor> {
        let Some(first) = xs.first() else {
            return Err(ModelError::Graph("concat of nothing".into()));
        };
        for x in xs {
            self.consume(&x.name);
        }
        let names: Vec<&str> = xs.iter().map(|x| x.name.as_str()).collect();
        let name = self.graph.node("Concat", &names, vec![attr_int("axis", 1)]);
        Ok(OnnxTensor {
            name,
            channels: xs.iter().map(|x| x.channels).sum(),
            elem: first.elem,
        })
    }

    fn pool2d(
        &mut self,
        x: &OnnxTensor,
        kind: Pool2d,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<OnnxTensor> {
        let mut attrs = vec![
            attr_ints("kernel_shape", &[kernel as i64; 2]),
            attr_ints("strides", &[stride as i64; 2]),
        ];
        attrs.extend(Self::pad_attrs(padding));
        let op = match kind {
            Pool2d::Max => "MaxPool",
            Pool2d::Avg => {
                attrs.push(attr_int("count_include_pad", 1));
                "AveragePool"
            }
        };
        self.consume(&x.name);
        let name = self.graph.node(op, &[&x.name], attrs);
        Ok(OnnxTensor { name, ..x.clone() })
    }

    fn global_pool(&mut self, x: &OnnxTensor, kind: GlobalPool) -> Result<OnnxTensor> {
        let flat = |s: &mut Self, op: &str, v: &OnnxTensor| -> OnnxTensor {
            s.consume(&v.name);
            let pooled = s.graph.node(op, &[&v.name], vec![]);
            let name = s
                .graph
                .node("Flatten", &[&pooled], vec![attr_int("axis", 1)]);
            OnnxTensor { name, ..v.clone() }
        };
        Ok(match kind {
            GlobalPool::Avg => flat(self, "GlobalAveragePool", x),
            GlobalPool::Max => flat(self, "GlobalMaxPool", x),
            GlobalPool::Gem { p, eps } => {
                // m = mean(sign(x) * max(|x|, eps)^p); out = sign(m) * |m|^(1/p)
                let e = self.scalar("gem_eps", eps, x.elem)?;
                let pe = self.scalar("gem_p", p, x.elem)?;
                let ip = self.scalar("gem_inv_p", 1.0 / p, x.elem)?;
                let a = self.unary("Abs", x);
                let a = self.binary("Max", &a, &e);
                let a = self.binary("Pow", &a, &pe);
                let s = self.unary("Sign", x);
                let t = self.binary("Mul", &a, &s.name);
                let m = flat(self, "GlobalAveragePool", &t);
                let am = self.unary("Abs", &m);
                let r = self.binary("Pow", &am, &ip);
                let sm = self.unary("Sign", &m);
                self.binary("Mul", &r, &sm.name)
            }
        })
    }

    fn upsample_nearest(&mut self, x: &OnnxTensor, scale: usize) -> Result<OnnxTensor> {
        let s = scale as f32;
        // Resize scales are always float32, whatever the data type.
        let scales = self.graph.constant(
            "scales",
            HostTensor::new(vec![4], vec![1.0, 1.0, s, s])?,
            Elem::F32,
        )?;
        self.consume(&x.name);
        let name = self.graph.node(
            "Resize",
            &[&x.name, "", &scales],
            vec![attr_str("mode", "nearest")],
        );
        Ok(OnnxTensor { name, ..x.clone() })
    }

    fn linear(
        &mut self,
        x: &OnnxTensor,
        vp: &VarPath,
        out: usize,
        bias: bool,
    ) -> Result<OnnxTensor> {
        let w = self.param(&vp.key("weight"), &[out, x.channels])?;
        self.gemm(x, w, vp, out, bias)
    }

    fn linear_conv1x1(
        &mut self,
        x: &OnnxTensor,
        vp: &VarPath,
        out: usize,
        bias: bool,
    ) -> Result<OnnxTensor> {
        let key = vp.key("weight");
        let mut t = self.weights.get(&key, &[out, x.channels, 1, 1]);
        // Same row-major data; only the trailing 1x1 dims go.
        t.shape = vec![out, x.channels];
        let w = self.graph.initializer(&key, t, self.param_elem)?;
        self.gemm(x, w, vp, out, bias)
    }

    fn global_avg_pool_map(&mut self, x: &OnnxTensor) -> Result<OnnxTensor> {
        Ok(self.unary("GlobalAveragePool", x))
    }

    fn sum_channel_groups(&mut self, x: &OnnxTensor, k: usize) -> Result<OnnxTensor> {
        if k == 0 || !x.channels.is_multiple_of(k) {
            return Err(ModelError::Graph(format!(
                "cannot sum {} channels in groups of {k}",
                x.channels
            )));
        }
        if k == 1 {
            return Ok(x.clone());
        }
        // Grouped 1x1 convolution with all-ones weights: output c sums inputs c*k..c*k+k.
        let out = x.channels / k;
        let ones = HostTensor::new(vec![out, k, 1, 1], vec![1.0; out * k])?;
        let w = self.graph.constant("group_sum_ones", ones, x.elem)?;
        self.consume(&x.name);
        let name = self.graph.node(
            "Conv",
            &[&x.name, &w],
            vec![
                attr_ints("kernel_shape", &[1, 1]),
                attr_int("group", out as i64),
            ],
        );
        Ok(OnnxTensor {
            name,
            channels: out,
            elem: x.elem,
        })
    }

    fn l2_normalize(&mut self, x: &OnnxTensor, eps: f32) -> Result<OnnxTensor> {
        self.consume(&x.name);
        let n = self.graph.node(
            "ReduceL2",
            &[&x.name],
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
        );
        let e = self.scalar("l2_eps", eps, x.elem)?;
        let n = self.graph.node("Max", &[&n, &e], vec![]);
        let name = self.graph.node("Div", &[&x.name, &n], vec![]);
        Ok(OnnxTensor { name, ..x.clone() })
    }

    fn full_precision(&mut self, x: &OnnxTensor) -> Result<OnnxTensor> {
        self.param_elem = Elem::F32;
        Ok(self.cast(x, Elem::F32))
    }
}
