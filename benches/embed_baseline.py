"""Reference for `cargo bench --bench embed_service`: the same ONNX file in
Python onnxruntime at batch 1, session defaults (as a user would run it).
Two timings per photo: end to end (Pillow decode, shorter side resized
bilinearly, centre crop, normalise, inference) and inference alone on
the prepared tensor. Prints one JSON object (seconds per photo).

    pip install -r benches/requirements-speed.txt
    python benches/embed_baseline.py MODEL.onnx RESIZE SIZE MEAN STD PHOTO...
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def prepare(path, resize, size, mean, std):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def main():
    model, resize, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mean = np.array([float(v) for v in sys.argv[4].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in sys.argv[5].split(",")], dtype=np.float32)
    photos = sys.argv[6:]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for p in photos[:3]:  # warm-up
        sess.run(None, {name: prepare(p, resize, size, mean, std)})
    e2e, infer = [], []
    for p in photos:
        t = time.perf_counter()
        x = prepare(p, resize, size, mean, std)
        t1 = time.perf_counter()
        sess.run(None, {name: x})
        t2 = time.perf_counter()
        e2e.append(t2 - t)
        infer.append(t2 - t1)
    # Inference alone, a second pass without preprocessing in between.
    xs = [prepare(p, resize, size, mean, std) for p in photos]
    alone = []
    for x in xs:
        t = time.perf_counter()
        sess.run(None, {name: x})
        alone.append(time.perf_counter() - t)
    print(json.dumps({"ort_version": ort.__version__, "end_to_end": e2e,
                      "inference_in_loop": infer, "inference_alone": alone}))


if __name__ == "__main__":
    main()
