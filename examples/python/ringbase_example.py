#!/usr/bin/env python3
"""libringbase from Python through ctypes: connect (or start) the server, put, get,
batch, list, the non-blocking submit/poll pair, and status.

    cargo build -p ringbase-ffi -p ringbase-server
    RINGBASE_LIB=target/debug/libringbase.so RINGBASE_SERVER=target/debug/ringbase \\
        python3 examples/python/ringbase_example.py [NAME]

The library is found through $RINGBASE_LIB, else the system's library path
(ctypes.util.find_library), else target/release or target/debug of this repository.
"""

import ctypes
import ctypes.util
import os
import sys
import time
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p

RINGBASE_OK = 0
RINGBASE_E_NOT_FOUND = -30801
RINGBASE_E_AGAIN = -30810
RINGBASE_JSON = 1
RINGBASE_BYTES = 2
RINGBASE_OP_GET = 1


class StatusInfo(ctypes.Structure):
    _fields_ = [
        ("records", c_uint64),
        ("uptime_ms", c_uint64),
        ("db_size_bytes", c_uint64),
        ("sessions", c_uint32),
        ("pid", c_uint32),
        ("protocol", c_uint32),
        ("replica_id", c_uint8 * 16),
        ("data_dir", c_char_p),
        ("version", c_char_p),
        ("indexes", c_char_p),
        ("fulltext", c_int),
        ("vector_dim", c_uint32),
        ("vectors", c_uint64),
        ("vector_points", c_uint64),
        ("vector_dead", c_uint64),
        ("vector_pending", c_uint64),
        ("vector_rebuilds", c_uint64),
        ("vector_last_rebuild_ms", c_uint64),
        ("vector_ready", c_int),
        ("vector_embedder", c_char_p),
        ("sync_enabled", c_int),
        ("sync_peers", c_uint32),
        ("sync_behind", c_uint64),
        ("sync_mode", c_char_p),
        ("sync_peer_id", c_char_p),
    ]


class Options(ctypes.Structure):
    """ringbase_options: zero means the default for every field."""
    _fields_ = [
        ("name", c_char_p),
        ("runtime_dir", c_char_p),
        ("wait_mode", c_int),
        ("spawn", c_int),
        ("server_path", c_char_p),
        ("request_ring", c_uint64),
        ("response_ring", c_uint64),
        ("call_timeout_ms", c_uint64),
    ]


RINGBASE_WAIT_ADAPTIVE = 0
RINGBASE_WAIT_BUSY_POLL = 1
RINGBASE_E_TIMEOUT = -30819


class Completion(ctypes.Structure):
    _fields_ = [
        ("ticket", c_uint64),
        ("op", c_int),
        ("status", c_int),
        ("value", c_void_p),
        ("value_len", c_size_t),
        ("kind", c_int),
    ]


def _find_library():
    path = os.environ.get("RINGBASE_LIB") or ctypes.util.find_library("ringbase")
    if path:
        return path
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for profile in ("release", "debug"):
        candidate = os.path.join(repo, "target", profile, "libringbase.so")
        if os.path.exists(candidate):
            return candidate
    sys.exit("libringbase.so not found: build it (cargo build -p ringbase-ffi) or set RINGBASE_LIB")


def _load():
    lib = ctypes.CDLL(_find_library())
    H = c_void_p  # opaque handles
    sigs = {
        "ringbase_strerror": (c_char_p, [c_int]),
        "ringbase_version": (c_char_p, []),
        "ringbase_last_error": (c_char_p, [H]),
        "ringbase_free": (None, [c_void_p]),
        "ringbase_connect_with": (c_int, [POINTER(Options), POINTER(H)]),
        "ringbase_close": (None, [H]),
        "ringbase_put": (c_int, [H, c_char_p, c_size_t, c_char_p, c_size_t, c_int]),
        "ringbase_get": (c_int, [H, c_char_p, c_size_t, POINTER(c_void_p), POINTER(c_size_t), POINTER(c_int)]),
        "ringbase_delete": (c_int, [H, c_char_p, c_size_t]),
        "ringbase_count": (c_int, [H, c_char_p, c_size_t, POINTER(c_uint64)]),
        "ringbase_status": (c_int, [H, POINTER(StatusInfo)]),
        "ringbase_batch_begin": (c_int, [H, POINTER(H)]),
        "ringbase_batch_put": (c_int, [H, c_char_p, c_size_t, c_char_p, c_size_t, c_int]),
        "ringbase_batch_delete": (c_int, [H, c_char_p, c_size_t]),
        "ringbase_batch_commit": (c_int, [H]),
        "ringbase_batch_abort": (None, [H]),
        "ringbase_list_begin": (c_int, [H, c_char_p, c_size_t, c_char_p, c_size_t, c_uint64, POINTER(H)]),
        "ringbase_list_next": (c_int, [H, POINTER(c_void_p), POINTER(c_size_t), POINTER(c_void_p),
                                       POINTER(c_size_t), POINTER(c_int)]),
        "ringbase_list_free": (None, [H]),
        "ringbase_submit_get": (c_int, [H, c_char_p, c_size_t, POINTER(c_uint64)]),
        "ringbase_submit_put": (c_int, [H, c_char_p, c_size_t, c_char_p, c_size_t, c_int, POINTER(c_uint64)]),
        "ringbase_poll": (c_int, [H, POINTER(Completion)]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = _load()


class RingbaseError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{lib.ringbase_strerror(code).decode()}: {detail}")
        self.code = code


def _check(rc):
    if rc != RINGBASE_OK:
        # The calling thread's last error is set by every failing call.
        raise RingbaseError(rc, lib.ringbase_last_error(None).decode(errors="replace"))


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


class Client:
    """One session; use it from one thread at a time (or one Client per thread)."""

    def __init__(self, name=None, server_path=None, spawn=True, busy_poll=False,
                 call_timeout_ms=0, runtime_dir=None):
        """Connects (starting the server first if none runs, unless spawn=False). A call
        that a live server does not answer within call_timeout_ms (0 = no limit) raises
        RingbaseError with code RINGBASE_E_TIMEOUT and ends the session."""
        opts = Options(
            name=name and _b(name),
            runtime_dir=runtime_dir and _b(runtime_dir),
            wait_mode=RINGBASE_WAIT_BUSY_POLL if busy_poll else RINGBASE_WAIT_ADAPTIVE,
            spawn=1 if spawn else 0,
            server_path=server_path and _b(server_path),
            call_timeout_ms=call_timeout_ms,
        )
        self._c = c_void_p()
        _check(lib.ringbase_connect_with(byref(opts), byref(self._c)))

    def close(self):
        if self._c:
            lib.ringbase_close(self._c)
            self._c = c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def put(self, key, value, kind=RINGBASE_JSON):
        k, v = _b(key), _b(value)
        _check(lib.ringbase_put(self._c, k, len(k), v, len(v), kind))

    def get(self, key):
        """(bytes, kind), or None if the key has no record."""
        k = _b(key)
        p, n, kind = c_void_p(), c_size_t(), c_int()
        rc = lib.ringbase_get(self._c, k, len(k), byref(p), byref(n), byref(kind))
        if rc == RINGBASE_E_NOT_FOUND:
            return None
        _check(rc)
        try:
            return ctypes.string_at(p, n.value), kind.value
        finally:
            lib.ringbase_free(p)

    def delete(self, key):
        k = _b(key)
        rc = lib.ringbase_delete(self._c, k, len(k))
        if rc == RINGBASE_E_NOT_FOUND:
            return False
        _check(rc)
        return True

    def count(self, prefix=""):
        p, n = _b(prefix), c_uint64()
        _check(lib.ringbase_count(self._c, p, len(p), byref(n)))
        return n.value

    def batch(self, puts=(), deletes=()):
        """Applies puts [(key, json)] and deletes [key] atomically."""
        b = c_void_p()
        _check(lib.ringbase_batch_begin(self._c, byref(b)))
        try:
            for key, value in puts:
                k, v = _b(key), _b(value)
                _check(lib.ringbase_batch_put(b, k, len(k), v, len(v), RINGBASE_JSON))
            for key in deletes:
                k = _b(key)
                _check(lib.ringbase_batch_delete(b, k, len(k)))
        except BaseException:
            lib.ringbase_batch_abort(b)
            raise
        _check(lib.ringbase_batch_commit(b))  # frees b, success or not

    def list(self, prefix="", limit=0):
        """Yields (key, value) in key order."""
        p, it = _b(prefix), c_void_p()
        _check(lib.ringbase_list_begin(self._c, p, len(p), None, 0, limit, byref(it)))
        try:
            k, kl, v, vl = c_void_p(), c_size_t(), c_void_p(), c_size_t()
            while True:
                rc = lib.ringbase_list_next(it, byref(k), byref(kl), byref(v), byref(vl), None)
                if rc == RINGBASE_E_NOT_FOUND:
                    return
                _check(rc)
                yield ctypes.string_at(k, kl.value).decode(), ctypes.string_at(v, vl.value)
        finally:
            lib.ringbase_list_free(it)

    def submit_put(self, key, value, kind=RINGBASE_JSON):
        k, v, t = _b(key), _b(value), c_uint64()
        _check(lib.ringbase_submit_put(self._c, k, len(k), v, len(v), kind, byref(t)))
        return t.value

    def submit_get(self, key):
        k, t = _b(key), c_uint64()
        _check(lib.ringbase_submit_get(self._c, k, len(k), byref(t)))
        return t.value

    def poll(self):
        """(ticket, op, status, value bytes or None), or None if nothing is ready."""
        d = Completion()
        rc = lib.ringbase_poll(self._c, byref(d))
        if rc == RINGBASE_E_AGAIN:
            return None
        _check(rc)
        value = ctypes.string_at(d.value, d.value_len) if d.value else None
        return d.ticket, d.op, d.status, value

    def status(self):
        s = StatusInfo()
        _check(lib.ringbase_status(self._c, byref(s)))
        return {
            "records": s.records,
            "sessions": s.sessions,
            "uptime_ms": s.uptime_ms,
            "db_size_bytes": s.db_size_bytes,
            "pid": s.pid,
            "protocol": s.protocol,
            "replica_id": bytes(s.replica_id).hex(),
            "data_dir": s.data_dir.decode(),  # copied now: valid only until the next call
            "version": s.version.decode(),
            "vector_dim": s.vector_dim,
            "vectors": s.vectors,
        }


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else None
    print("libringbase", lib.ringbase_version().decode())
    with Client(name, call_timeout_ms=5000) as db:
        db.put("py:greeting", '"hello from python"')
        db.put("py:blob", b"\x00\xff", RINGBASE_BYTES)
        print("py:greeting =", db.get("py:greeting"))
        print("py:blob =", db.get("py:blob"))
        print("py:missing =", db.get("py:missing"))

        db.batch(puts=[("py:a", "1"), ("py:b", "2")], deletes=["py:blob"])
        try:
            db.put("py:bad", "{not json")
        except RingbaseError as e:
            print("expected error:", e)
        for key, value in db.list("py:"):
            print(f"  {key} = {value!r}")
        assert db.count("py:") == 3

        tickets = [db.submit_put(f"py:n{i}", str(i)) for i in range(5)] + [db.submit_get("py:n4")]
        done, deadline = 0, time.monotonic() + 10
        while done < len(tickets) and time.monotonic() < deadline:
            c = db.poll()
            if c is None:
                time.sleep(0.0001)
                continue
            ticket, op, status, value = c
            assert status == RINGBASE_OK, lib.ringbase_strerror(status)
            if op == RINGBASE_OP_GET:
                print("py:n4 =", value)
            done += 1
        assert done == len(tickets), f"{done} of {len(tickets)} completions"
        print("status:", db.status())
    print("done")


if __name__ == "__main__":
    main()
