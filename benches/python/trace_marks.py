"""Reading the marks a `trace` build writes (protocol/src/trace.rs), for idle_trace.py
and vector_trace.py."""


def load(paths):
    """Every (ns, point) mark in the files `paths`, in time order (a line cut short by
    a killed process is skipped)."""
    marks = []
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    marks.append((int(parts[1]), int(parts[0])))
    marks.sort()
    return marks


def pct(values, p):
    """The `p` quantile (0..1) of `values`, NaN if there are none."""
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")
