#!/usr/bin/env python3
"""Per-step breakdown of the transport bench's after-idle round trips.

Reads the marks that a `trace` build writes to RINGBASE_TRACE_DIR (see
protocol/src/trace.rs for the points and the commands) and prints, for each row
(floor / ping / get, after 1 ms or 16 ms of idle), the p50, p90 and p99 in µs of each
step of a round trip. Client and bench marks come from the bench process; session marks
from the server and floor-peer marks from the futex peer are matched to a call by time
(every mark between the call's start and end).

usage: idle_trace.py DIR
"""
import bisect
import glob
import os
import sys

from trace_marks import load, pct

# Point numbers (protocol/src/trace.rs).
CLIENT_SEND, CLIENT_ENCODED, CLIENT_WRITTEN, CLIENT_PUBLISHED, CLIENT_RESPONSE = 0, 1, 2, 3, 4
SERVER_WOKE, SERVER_REQUEST, SERVER_ANSWERED, SERVER_PUBLISHED = 10, 11, 12, 13
SERVER_VALIDATED, SERVER_HANDLED, SERVER_WRITTEN = 15, 17, 18
BENCH_CALL, BENCH_PING, BENCH_GET, BENCH_FLOOR, BENCH_DONE = 40, 41, 42, 43, 50
FLOOR_WOKE, FLOOR_REQUEST, FLOOR_ANSWERED = 60, 61, 62
KINDS = {BENCH_PING: "ping", BENCH_GET: "get 100 B", BENCH_FLOOR: "futex floor"}


# Steps: (name, from point, to point); "start"/"end" are the bench's call bounds.
FLOOR_STEPS = [
    ("client: call -> its wake-up syscall returned", "start", FLOOR_WOKE),
    ("-> the peer runs", FLOOR_WOKE, FLOOR_REQUEST),
    ("peer: its wake-up syscall", FLOOR_REQUEST, FLOOR_ANSWERED),
    ("-> the client runs, call returns", FLOOR_ANSWERED, "end"),
]
SHM_STEPS = [
    ("client: call -> send", "start", CLIENT_SEND),
    ("client: encode", CLIENT_SEND, CLIENT_ENCODED),
    ("client: write the frame", CLIENT_ENCODED, CLIENT_WRITTEN),
    ("client: publish + wake-up syscall", CLIENT_WRITTEN, CLIENT_PUBLISHED),
    ("-> session back from its sleep", CLIENT_PUBLISHED, SERVER_WOKE),
    ("session: -> request seen", SERVER_WOKE, SERVER_REQUEST),
    ("session: copy + validate", SERVER_REQUEST, SERVER_VALIDATED),
    ("session: dispatch", SERVER_VALIDATED, SERVER_HANDLED),
    ("session: encode + write response", SERVER_HANDLED, SERVER_WRITTEN),
    ("session: flushes", SERVER_WRITTEN, SERVER_ANSWERED),
    ("session: publish", SERVER_ANSWERED, SERVER_PUBLISHED),
    ("-> client sees the response", SERVER_PUBLISHED, CLIENT_RESPONSE),
    ("client: decode, call returns", CLIENT_RESPONSE, "end"),
]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    bench = load(glob.glob(os.path.join(d, "bench-*")))
    peers = load(glob.glob(os.path.join(d, "session-*")) + glob.glob(os.path.join(d, "floor-*")))
    peer_times = [t for t, _ in peers]
    calls, cur, last_end = [], None, None
    for t, p in bench:
        if p == BENCH_CALL:
            cur = {"start": t, "marks": {}, "idle": (t - last_end) if last_end else 0}
        elif p == BENCH_DONE and cur is not None:
            cur["end"] = t
            last_end = t
            calls.append(cur)
            cur = None
        elif cur is not None:
            cur["marks"].setdefault(p, t)
    rows = {}
    for c in calls:
        kind = next((KINDS[p] for p in KINDS if p in c["marks"]), None)
        if kind is None:
            continue
        lo = bisect.bisect_left(peer_times, c["start"])
        hi = bisect.bisect_right(peer_times, c["end"])
        for t, p in peers[lo:hi]:
            c["marks"].setdefault(p, t)
        c["marks"]["start"], c["marks"]["end"] = c["start"], c["end"]
        idle = "16 ms" if c["idle"] > 8_000_000 else "1 ms"
        rows.setdefault((idle, kind), []).append(c)
    for (idle, kind), cs in sorted(rows.items()):
        rtt = [(c["end"] - c["start"]) / 1e3 for c in cs]
        print(f"after {idle}, {kind}: {len(cs)} calls, round trip p50 {pct(rtt, .5):.2f} "
              f"p90 {pct(rtt, .9):.2f} p99 {pct(rtt, .99):.2f} µs")
        steps = FLOOR_STEPS if kind == "futex floor" else SHM_STEPS
        for name, a, b in steps:
            v = [(c["marks"][b] - c["marks"][a]) / 1e3 for c in cs
                 if a in c["marks"] and b in c["marks"]]
            if v:
                print(f"  {name:<46} n={len(v):5} p50 {pct(v, .5):8.2f} "
                      f"p90 {pct(v, .9):8.2f} p99 {pct(v, .99):8.2f}")


if __name__ == "__main__":
    main()
