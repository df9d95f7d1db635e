"""Reference for `cargo bench --bench ann_faiss`: faiss-cpu's HNSW on the
very vectors the Rust side indexed (read from the file it wrote), same M,
ef_construction, ef values and ground truth. Inner product on unit
vectors ranks as the cosine hnsw_rs uses. `build` builds on all cores
and saves the index; `query` loads it and answers one query at a time on
one thread (batch 1, as a request searches), so that rounds can
alternate with the Rust side. Prints one JSON object.

    pip install -r benches/requirements-speed.txt
    python benches/ann_faiss.py build VECTORS.bin INDEX M EF_CONSTRUCTION
    python benches/ann_faiss.py query VECTORS.bin INDEX K EF,EF,...
    python benches/ann_faiss.py flat VECTORS.bin - K,K,... THREADS

`flat` is the exact-search reference of `cargo bench --bench scan`:
IndexFlatIP (the f32 scan) one query at a time on THREADS threads, with
recall against the file's exact neighbours (ties aside, 1.0).
"""
import json
import sys
import time

import faiss
import numpy as np


def load(path):
    """Header n, q, d, k (u32 LE); n x d f32 items; q x d f32 queries;
    q x k u32 exact neighbours (row numbers of the items)."""
    raw = open(path, "rb").read()
    n, q, d, k = np.frombuffer(raw, dtype="<u4", count=4)
    off = 16
    items = np.frombuffer(raw, dtype="<f4", count=n * d, offset=off).reshape(n, d)
    off += 4 * n * d
    queries = np.frombuffer(raw, dtype="<f4", count=q * d, offset=off).reshape(q, d)
    off += 4 * q * d
    truth = np.frombuffer(raw, dtype="<u4", count=q * k, offset=off).reshape(q, k)
    return items, queries, truth


def one_at_a_time(index, queries, truth, k):
    """Each query's search time, and recall@k against `truth` (q x k)."""
    times, found = [], 0
    for qi in range(len(queries)):
        x = queries[qi : qi + 1]
        t = time.perf_counter()
        _, ids = index.search(x, k)
        times.append(time.perf_counter() - t)
        found += len(set(ids[0].tolist()) & set(truth[qi].tolist()))
    return {"seconds": times, "recall": found / truth.size}


def main():
    mode, path, index_path = sys.argv[1], sys.argv[2], sys.argv[3]
    items, queries, truth = load(path)
    if mode == "flat":
        ks, threads = [int(k) for k in sys.argv[4].split(",")], int(sys.argv[5])
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(items.shape[1])
        index.add(np.ascontiguousarray(items))
        rows = [dict(k=k, **one_at_a_time(index, queries, truth[:, :k], k)) for k in ks]
        print(json.dumps({"rows": rows}))
        return
    if mode == "build":
        m, ef_construction = int(sys.argv[4]), int(sys.argv[5])
        index = faiss.IndexHNSWFlat(items.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        t = time.perf_counter()
        index.add(np.ascontiguousarray(items))
        build_s = time.perf_counter() - t
        faiss.write_index(index, index_path)
        print(json.dumps({"build_s": build_s, "threads": faiss.omp_get_max_threads()}))
        return
    k, efs = int(sys.argv[4]), [int(e) for e in sys.argv[5].split(",")]
    index = faiss.read_index(index_path)
    # A request is one query on one thread, as hnsw_rs answers it here;
    # OpenMP's threads only add wake-up stalls to a batch of one.
    faiss.omp_set_num_threads(1)
    rows = []
    for ef in efs:
        index.hnsw.efSearch = ef
        rows.append(dict(ef=ef, **one_at_a_time(index, queries, truth, k)))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
