"""The only thing that crosses from an untrusted program to the judge: plain data over a pipe.

Why the split. A program that runs in the same process as its tests can forge any verdict
that process could give: print the harness's result line, call ``os._exit(0)`` before the
tests, patch ``AssertionError``, return an object whose ``__eq__`` is always true. So the
HumanEval test (``check``) never runs beside the completion. The *judge* process executes the
problem's prompt and test (dataset code, trusted) and hands ``check`` a proxy as the
candidate function; every call is sent to the *cell* (the sandboxed process holding
``prompt + completion``), which answers with the return value encoded as tagged JSON.
The judge decodes it into built-in values only (int, float, str, list, tuple, dict, set,
bytes, ...), so comparisons in the test are the interpreter's own, and a reply that is not
well-formed fails the call. The cell never holds the judge's result pipe.

Frames: 4-byte big-endian length, then UTF-8 JSON; at most :data:`MAX_FRAME` bytes.
Arguments reach the candidate as copies (a mutating candidate cannot alter the test's data).
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

MAX_FRAME = 16 << 20
MAX_DEPTH = 200
ERROR_CHARS = 300


class ProxyError(Exception):
    """The cell broke the protocol: died, hung past the deadline, or sent malformed data."""


class CandidateError(Exception):
    """The candidate function raised; the message names the exception type."""


# ---------------------------------------------------------------------------- codec


def encode(v: Any, depth: int = 0) -> Any:
    """A value as JSON: scalars as themselves, containers as one-key tagged objects."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    d = depth + 1
    if v is None or type(v) in (bool, int, float, str):
        return v
    if isinstance(v, int):  # bool cannot be subclassed: it was caught above
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, list):
        return {"l": [encode(x, d) for x in v]}
    if isinstance(v, tuple):
        return {"t": [encode(x, d) for x in v]}
    if isinstance(v, dict):
        return {"d": [[encode(k, d), encode(x, d)] for k, x in v.items()]}
    if isinstance(v, frozenset):
        return {"f": [encode(x, d) for x in v]}
    if isinstance(v, set):
        return {"s": [encode(x, d) for x in v]}
    if isinstance(v, (bytes, bytearray)):
        return {"b": bytes(v).hex()}
    if isinstance(v, complex):
        return {"c": [v.real, v.imag]}
    if isinstance(v, range):
        return {"r": [v.start, v.stop, v.step]}
    if hasattr(v, "tolist") and callable(v.tolist):  # numpy scalars and arrays
        return encode(v.tolist(), d)
    if hasattr(v, "__next__"):  # generators, map, filter, zip: their items, in order
        return {"i": [encode(x, d) for x in v]}
    raise TypeError(f"unsupported return type {type(v).__name__}")


_TAGS = {"l", "t", "d", "f", "s", "b", "c", "r", "i"}


def decode(v: Any, depth: int = 0) -> Any:
    """The inverse of :func:`encode`, strict: anything else raises (ValueError/TypeError)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is not dict or len(v) != 1 or next(iter(v)) not in _TAGS:
        raise ValueError("malformed value")
    ((tag, body),) = v.items()
    d = depth + 1
    if tag == "b":
        return bytes.fromhex(_typed(body, str))
    items = _typed(body, list)
    if tag == "l":
        return [decode(x, d) for x in items]
    if tag == "t":
        return tuple(decode(x, d) for x in items)
    if tag == "s":
        return {decode(x, d) for x in items}
    if tag == "f":
        return frozenset(decode(x, d) for x in items)
    if tag == "i":
        return iter([decode(x, d) for x in items])
    if tag == "d":
        out = {}
        for pair in items:
            k, x = _typed(pair, list)
            out[decode(k, d)] = decode(x, d)
        return out
    if tag == "c":
        re_, im = items
        return complex(_typed(re_, float, int), _typed(im, float, int))
    start, stop, step = (_typed(x, int) for x in items)  # "r"
    return range(start, stop, step)


def _typed(v: Any, *types: type) -> Any:
    if type(v) not in types:
        raise TypeError("malformed value")
    return v


# --------------------------------------------------------------------------- frames


def send(fd: int, obj: Any) -> None:
    data = json.dumps(obj, allow_nan=True).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"value too large ({len(data)} bytes > {MAX_FRAME})")
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ProxyError("no reply before the deadline")
        chunk = os.read(fd, min(n - len(buf), 1 << 16))
        if not chunk:
            raise ProxyError("the program exited")
        buf += chunk
    return bytes(buf)


def recv(fd: int, deadline: float | None = None) -> Any:
    (n,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    if n > MAX_FRAME:
        raise ProxyError(f"reply of {n} bytes exceeds {MAX_FRAME}")
    try:
        return json.loads(_read_exact(fd, n, deadline))
    except (ValueError, RecursionError, MemoryError) as e:  # bad JSON, UTF-8 or nesting
        raise ProxyError(f"malformed reply: {type(e).__name__}") from None


# ---------------------------------------------------------------------------- sides


class RemoteCandidate:
    """The judge's stand-in for the candidate function: each call is one round trip."""

    def __init__(self, req_fd: int, rep_fd: int, deadline: float, name: str) -> None:
        self._req, self._rep, self._deadline = req_fd, rep_fd, deadline
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            send(self._req, {"a": encode(list(args)), "k": encode(kwargs)})
        except OSError:  # EPIPE: the cell is gone
            raise ProxyError("the program exited") from None
        reply = recv(self._rep, self._deadline)
        if type(reply) is not dict:
            raise ProxyError("malformed reply")
        if "x" in reply:
            raise CandidateError(str(reply["x"])[:ERROR_CHARS])
        try:
            return decode(reply.get("v"))
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
            raise ProxyError(f"malformed reply: {type(e).__name__}") from None


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:ERROR_CHARS]


def serve(fn: Any, load_error: BaseException | None, req_fd: int, rep_fd: int) -> None:
    """The cell's loop: answer each call with the encoded result or the exception's name.

    Runs after the cell is closed; the program may patch anything here, which only changes
    what it answers, never what the judge concludes.
    """
    while True:
        try:
            req = recv(req_fd)
        except ProxyError:
            return  # the judge is done
        try:
            if load_error is not None:
                raise load_error
            if not callable(fn):
                raise NameError("the entry point is not defined")
            args = decode(req["a"])
            kwargs = decode(req["k"])
            reply: dict[str, Any] = {"v": encode(fn(*args, **kwargs))}
        except BaseException as e:  # SystemExit, KeyboardInterrupt too: the call failed
            reply = {"x": _describe(e)}
        try:
            send(rep_fd, reply)
        except (ValueError, TypeError, OverflowError, RecursionError) as e:  # not JSON-able
            send(rep_fd, {"x": _describe(e)})
