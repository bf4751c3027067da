"""hnswlib on the vectors bench's data set: build time, then recall@k and queries/s
for each ef, single-threaded. Run by `benches/src/bin/vectors.rs`; prints one JSON
object on stdout.

    python3 hnswlib_bench.py DIR DIM M EF_CONSTRUCTION EFS K

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
    d, dim, m, efc, efs, k = sys.argv[1:7]
    dim, m, efc, k = int(dim), int(m), int(efc), int(k)
    efs = [int(x) for x in efs.split(",")]
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

    results = []
    for ef in efs:
        index.set_ef(max(ef, k))
        # One batch call on one thread: no Python overhead per query in the timing.
        t = time.perf_counter()
        labels, _ = index.knn_query(queries, k=k, num_threads=1)
        secs = time.perf_counter() - t
        hits = sum(len(set(labels[i]) & set(gt[i])) for i in range(len(queries)))
        results.append(
            {"ef": ef, "recall": hits / (k * len(queries)), "qps": len(queries) / secs}
        )
    print(
        json.dumps(
            {
                "version": importlib.metadata.version("hnswlib"),
                "build_s": build_s,
                "peak_rss_growth_mib": (rss1 - rss0) / 1024.0,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
