"""hnswlib on the vectors bench's data set, as a search server for the bench.

    python3 hnswlib_bench.py DIR DIM M EF_CONSTRUCTION K

Builds the index (one thread), prints one JSON line {version, build_s,
peak_rss_growth_mib}, then reads lines "EF START END" on stdin and answers each with
one JSON line {secs, hits}: the held-out queries START..END searched at that ef,
single-threaded, in one batch call (no Python overhead per query in the timing), and
how many of their exact top-K came back. Ends at end of input. Run by
`benches/src/bin/vectors.rs`, which takes turns between this index, the server and the
in-process graph in runs of 50 queries, so that all three meet the same moments of the
machine.

DIR holds base.f32 and queries.f32 (little-endian float32, row-major, DIM columns) and
gt.u32 (the exact top-K ids of each query, uint32).
"""

import importlib.metadata
import json
import resource
import sys
import time

import hnswlib
import numpy as np


def main():
    d, dim, m, efc, k = sys.argv[1:6]
    dim, m, efc, k = int(dim), int(m), int(efc), int(k)
    base = np.fromfile(f"{d}/base.f32", dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(f"{d}/queries.f32", dtype="<f4").reshape(-1, dim)
    gt = np.fromfile(f"{d}/gt.u32", dtype="<u4").reshape(-1, k)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=len(base), ef_construction=efc, M=m, random_seed=1)
    index.set_num_threads(1)
    t = time.perf_counter()
    index.add_items(base, np.arange(len(base)), num_threads=1)
    build_s = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    built = {
        "version": importlib.metadata.version("hnswlib"),
        "build_s": build_s,
        "peak_rss_growth_mib": (rss1 - rss0) / 1024.0,
    }
    print(json.dumps(built), flush=True)

    for line in sys.stdin:
        if not line.strip():
            continue
        ef, start, end = (int(x) for x in line.split())
        index.set_ef(max(ef, k))
        t = time.perf_counter()
        labels, _ = index.knn_query(queries[start:end], k=k, num_threads=1)
        secs = time.perf_counter() - t
        hits = sum(len(set(labels[i]) & set(gt[start + i])) for i in range(end - start))
        print(json.dumps({"secs": secs, "hits": hits}), flush=True)

if __name__ == "__main__":
    main()
