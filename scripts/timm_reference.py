#!/usr/bin/env python3
"""Reference outputs for the Rust architecture parity tests (src/model/parity_tests.rs).

For each architecture, builds the timm model with a seeded random init, randomises every
BatchNorm (affine + running statistics, so BatchNorm folding is really exercised), and
writes into OUT_DIR (default: $LOOKALIKE_PARITY_DIR):

  <arch>.safetensors     the state_dict (float32), keys as the Rust importer expects;
                         metadata: timm model name, versions, parameter_count
  <arch>.io.safetensors  "input" [1,3,S,S], "features" (forward_features: the final feature
                         map before pooling) and "logits" (full forward); same metadata

The reference forward runs in float64 so the only error left is the Rust/ORT side's.
Metadata also records the FP16 floor: max|f(x; fp16(theta)) - f(x; theta)| / max|f(x; theta)|
with every parameter, buffer and the input rounded to float16 but computed in float64, i.e.
the error FP16 storage alone causes. Randomly initialised deep nets are sensitive (ResNet-50:
~5e-2), so the FP16 test bound is max(1e-2, 2 x floor) x scale.

EfficientNet-Lite0: timm's `tf_efficientnet_lite0` is the same network as the project's
lukemelas-layout Lite0 (TF-SAME padding, BN eps 1e-3, ReLU6, no SE, 32-ch stem, 1280-ch
head); its state_dict is saved under lukemelas names (`lite0_key`) so it imports unchanged.

Usage:
  python3 -m venv /work/scratch/torchvenv
  /work/scratch/torchvenv/bin/pip install -r scripts/requirements-parity.txt
  LOOKALIKE_PARITY_DIR=/tmp/lookalike-parity \
      /work/scratch/torchvenv/bin/python scripts/timm_reference.py [arch ...]
"""
import argparse
import copy
import os
import re
import sys

import safetensors.torch
import timm
import torch

# Rust `Arch` name -> timm model name.
ARCHES = {
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "hrnet_w18": "hrnet_w18",
    "hrnet_w30": "hrnet_w30",
    "dla102x": "dla102x",
}


def lite0_key_map(model):
    """timm tf_efficientnet_lite0 key -> lukemelas EfficientNet-PyTorch key."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head",
           "bn2": "_bn1", "classifier": "_fc"}
    # Depthwise-separable (first) block and inverted-residual blocks.
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv",
          "bn2": "_bn1", "conv_pwl": "_project_conv", "bn3": "_bn2"}
    flat, n = {}, 0
    for s, stage in enumerate(model.blocks):
        for b, _ in enumerate(stage):
            flat[(s, b)] = n
            n += 1
    out = {}
    for k in model.state_dict():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)$", k)
        if m:
            s, b, layer, leaf = int(m[1]), int(m[2]), m[3], m[4]
            names = ds if (s, b) == (0, 0) else ir
            out[k] = f"_blocks.{flat[(s, b)]}.{names[layer]}.{leaf}"
        else:
            layer, leaf = k.split(".", 1)
            out[k] = f"{top[layer]}.{leaf}"
    return out


@torch.no_grad()
def randomise_batchnorm(model, size):
    """Random BN affine params, then running stats calibrated on random data and perturbed,
    so every BN is a non-trivial affine map yet activations stay O(1) through deep nets."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(2):
        model(torch.randn(4, 3, size, size, dtype=torch.float64))
    for bn in bns:
        bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean) * bn.running_var.sqrt())
        bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.5, 2.0))
        bn.num_batches_tracked.fill_(1000)
        bn.momentum = 0.1
    model.eval()


def generate(arch, out_dir, size):
    name = ARCHES[arch]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).double()
    randomise_batchnorm(model, size)
    params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        assert torch.allclose(logits, model(x))
    m16 = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(m16.parameters()) + list(m16.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().double())
        f16 = m16.forward_features(x.half().double())
        l16 = m16.forward_head(f16)
    floor_f = ((f16 - feats).abs().max() / feats.abs().max()).item()
    floor_l = ((l16 - logits).abs().max() / logits.abs().max()).item()
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    if arch == "efficientnet_lite0":
        names = lite0_key_map(model)
        state = {names[k]: v for k, v in state.items()}
    meta = {
        "arch": arch,
        "timm_model": name,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "parameter_count": str(params),
        "input_size": str(size),
        "fp16_floor_features": f"{floor_f:.6e}",
        "fp16_floor_logits": f"{floor_l:.6e}",
    }
    safetensors.torch.save_file(state, os.path.join(out_dir, f"{arch}.safetensors"), meta)
    io = {"input": x.float(), "features": feats.float().contiguous(), "logits": logits.float()}
    safetensors.torch.save_file(io, os.path.join(out_dir, f"{arch}.io.safetensors"), meta)
    print(f"{arch:20s} timm {name:24s} params {params:>11,d} features {tuple(feats.shape)} "
          f"|features|max {feats.abs().max().item():.4g} |logits|max {logits.abs().max().item():.4g} "
          f"fp16 floor {floor_f:.3e} / {floor_l:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("arches", nargs="*", default=list(ARCHES), help=f"subset of {list(ARCHES)}")
    ap.add_argument("--out", default=os.environ.get("LOOKALIKE_PARITY_DIR"),
                    help="output directory (default: $LOOKALIKE_PARITY_DIR)")
    ap.add_argument("--size", type=int, default=224, help="square input side (multiple of 32)")
    args = ap.parse_args()
    if not args.out:
        sys.exit("set LOOKALIKE_PARITY_DIR or pass --out")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    for arch in args.arches:
        if arch not in ARCHES:
            sys.exit(f"unknown arch {arch!r}; known: {list(ARCHES)}")
        generate(arch, args.out, args.size)


if __name__ == "__main__":
    main()
