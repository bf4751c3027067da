#!/usr/bin/env python3
"""Where the time of a vector search through the client goes.

Reads the marks that a `trace` build of the vectors bench and the server writes to
RINGBASE_TRACE_DIR (protocol/src/trace.rs) and prints, per round and ef, the p50 of the
graph walk in process and in the server's session, and for every search through the
client: the session's handling minus its graph walk (the index's bookkeeping around
it), and the client's round trip minus the session's handling (transport, encoding,
decoding).

    cargo build --release -p ringbase-server -p ringbase-benches --features ringbase-protocol/trace
    RINGBASE_TRACE_DIR=/tmp/vtrace ./target/release/vectors --n 30000 --queries 500 --dims 128 --rounds 3
    python3 benches/python/vector_trace.py /tmp/vtrace 500

usage: vector_trace.py DIR QUERIES
"""
import bisect
import glob
import os
import sys

from trace_marks import load, pct

SERVER_VALIDATED, SERVER_HANDLED = 15, 17
GRAPH_SEARCH, GRAPH_SEARCHED = 20, 21
BENCH_CALL, BENCH_DONE = 40, 50
EFS = [16, 32, 64, 128, 256]


def spans(marks, start, end):
    """(start time, duration) of each start..end pair, in order."""
    out, at = [], None
    for t, p in marks:
        if p == start:
            at = t
        elif p == end and at is not None:
            out.append((at, t - at))
            at = None
    return out


def inside(outer, starts, t, d):
    """The span of `outer` (sorted by start; `starts` its start times) that holds
    t..t+d, if any."""
    i = bisect.bisect_right(starts, t) - 1
    if i >= 0 and outer[i][0] <= t and t + d <= outer[i][0] + outer[i][1]:
        return outer[i]
    return None


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d, queries = sys.argv[1], int(sys.argv[2])
    bench = load(glob.glob(os.path.join(d, "bench-*")))
    session = load(glob.glob(os.path.join(d, "session-*")))
    local = spans(bench, GRAPH_SEARCH, GRAPH_SEARCHED)
    remote = spans(session, GRAPH_SEARCH, GRAPH_SEARCHED)
    handled = spans(session, SERVER_VALIDATED, SERVER_HANDLED)
    calls = spans(bench, BENCH_CALL, BENCH_DONE)
    # The rounds' searches come in order: every ef in turn, `queries` each.
    per = queries * len(EFS)
    for r in range(len(local) // per):
        for i, ef in enumerate(EFS):
            part = slice(r * per + i * queries, r * per + (i + 1) * queries)
            lo = pct([x / 1e3 for _, x in local[part]], 0.5)
            re = pct([x / 1e3 for _, x in remote[part]], 0.5)
            print(f"round {r + 1} ef {ef:3}: graph walk p50 in process {lo:7.1f} µs, "
                  f"in the session {re:7.1f} µs ({re / lo:.3f}x)")
    around, outside = [], []
    handled_starts = [t for t, _ in handled]
    call_starts = [t for t, _ in calls]
    for t, x in remote:
        h = inside(handled, handled_starts, t, x)
        if h is None:
            continue
        around.append((h[1] - x) / 1e3)
        c = inside(calls, call_starts, h[0], h[1])
        if c is not None:
            outside.append((c[1] - h[1]) / 1e3)
    print(f"session handling minus its graph walk: p50 {pct(around, .5):.2f} "
          f"p90 {pct(around, .9):.2f} µs ({len(around)} searches)")
    print(f"client round trip minus the session's handling: p50 {pct(outside, .5):.2f} "
          f"p90 {pct(outside, .9):.2f} µs ({len(outside)} searches)")


if __name__ == "__main__":
    main()
