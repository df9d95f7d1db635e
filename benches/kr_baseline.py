"""Straightforward numpy baseline of spec section 3 KR (after Zhong et
al.'s reference code), run on the data `cargo bench --bench kr` wrote.
Prints its time, the speed ratio to the Rust run and whether the top-10
rankings agree. Same choices as the Rust code: f64, ties by index, i
first in its own list, round(k1/2) half to even.

    pip install -r benches/requirements.txt
    python benches/kr_baseline.py target/krbench
"""
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def kr(q, g, k1, k2, lam, top=10):
    nq = q.shape[0]
    x = np.concatenate([q, g]).astype(np.float64)
    n = x.shape[0]
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    mx = d.max(axis=1, keepdims=True)
    mx[mx == 0] = 1.0  # a row with max 0 is all zeros anyway
    d /= mx
    # i first, then (D, index): a stable argsort with the diagonal below 0.
    np.fill_diagonal(d, -1.0)
    rank = np.argsort(d, axis=1, kind="stable")[:, : max(k1 + 1, k2)]
    np.fill_diagonal(d, 0.0)
    h = int(np.around(k1 / 2.0))

    def recip(i, k):
        fwd = rank[i, : k + 1]
        bwd = rank[fwd, : k + 1]
        return fwd[np.where(bwd == i)[0]]

    v = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        r = recip(i, k1)
        exp = r
        for c in r:
            rc = recip(c, h)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                exp = np.append(exp, rc)
        exp = np.unique(exp)
        w = np.exp(-d[i, exp])
        v[i, exp] = w / np.sum(w)
    if k2 > 1:
        vq = np.zeros_like(v)
        for i in range(n):
            vq[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = vq
    gv = v[nq:]
    inv = [np.where(gv[:, j] != 0)[0] for j in range(n)]
    final = np.empty((nq, g.shape[0]))
    for i in range(nq):
        m = np.zeros(g.shape[0])
        for j in np.where(v[i] != 0)[0]:
            rows = inv[j]
            m[rows] += np.minimum(v[i, j], gv[rows, j])
        final[i] = (1 - lam) * (1 - m / (2 - m)) + lam * d[i, nq:]
    return np.argsort(final, axis=1, kind="stable")[:, :top]


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/krbench")
    meta = json.loads((out / "meta.json").read_text())
    nq, ng, dim = meta["nq"], meta["ng"], meta["d"]
    q = np.fromfile(out / "q.f32", dtype="<f4").reshape(nq, dim)
    g = np.fromfile(out / "g.f32", dtype="<f4").reshape(ng, dim)
    t, c = time.perf_counter(), time.process_time()
    top = kr(q, g, meta["k1"], meta["k2"], meta["lambda"])
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    rust = np.fromfile(out / "rust_top10.u32", dtype="<u4").reshape(nq, 10)
    same = int((rust == top).all(axis=1).sum())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rs, rc = meta["rust_seconds"], meta["rust_cpu_seconds"]
    print(f"numpy {np.__version__}: {secs:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.0f} MiB")
    print(f"rust: {rs:.2f} s wall, {rc:.2f} s CPU, peak RSS {meta['rust_peak_rss_mib']:.0f} MiB")
    print(f"speed ratio numpy/rust: {secs / rs:.1f}x wall, {cpu / rc:.1f}x CPU")
    print(f"identical top-10: {same}/{nq} queries")


if __name__ == "__main__":
    main()
