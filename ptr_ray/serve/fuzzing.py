"""Schema-driven fuzzing of a ptr-ray server: what the API promises, checked on generated
requests, valid and invalid.

The requests come from the server's own ``/openapi.json`` (schemathesis turns each operation
into hypothesis strategies, in positive mode, data the schema accepts, and negative mode, data
it refuses), so the published schema is exercised too. Every answer must keep the API's
promises:

- no 5xx, ever;
- every 4xx body is an OpenAI-style error (``{"error": {"message", "type", "param", "code"}}``);
- a 200 is a JSON object, or a well-formed event stream whose error events (if any) are
  OpenAI-style too.

Used by the tests (in-process over ``from_asgi``, and against a running tiny-model server) and
by operators before exposing a deployment:
``python -m ptr_ray.serve.fuzzing http://127.0.0.1:8000 --examples 100`` (key from
``$PTR_API_KEY``). Needs the dev extra (schemathesis, hypothesis); imported lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FuzzReport", "fuzz", "problems"]

_ERROR_KEYS = {"message", "type", "param", "code"}


def _error_problem(data: Any) -> str | None:
    """Why ``data`` is not an OpenAI-style error body (None: it is one)."""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or set(err) != _ERROR_KEYS or set(data) != {"error"}:
        return f"not an OpenAI-style error body: {json.dumps(data)[:200]}"
    if not isinstance(err["message"], str) or not err["message"].strip():
        return "error body without a message"
    if not isinstance(err["type"], str):
        return "error body without a type"
    if err["param"] is not None and not isinstance(err["param"], str):
        return "error param is not a string"
    if err["code"] is not None and not isinstance(err["code"], str):
        return "error code is not a string"
    return None


def _stream_problems(text: str) -> list[str]:
    from ptr_ray.serve.client import iter_sse

    out = []
    try:
        events = list(iter_sse(iter(text.splitlines())))
    except json.JSONDecodeError as e:
        return [f"stream event is not JSON: {e}"]
    if not events:
        return ["empty event stream"]
    for event, data in events:
        if event == "error" or (isinstance(data, dict) and "error" in data):
            problem = _error_problem(data)
            if problem:
                out.append(f"stream error event: {problem}")
    return out


def problems(status: int, content_type: str, text: str) -> list[str]:
    """Every way one answer breaks the API's promises (empty: it keeps them)."""
    if status >= 500:
        return [f"{status}: {text[:200]}"]
    if content_type.startswith("text/event-stream"):
        return [] if status == 200 else [f"{status} with an event stream"]
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [f"{status}: body is not JSON: {text[:200]!r}"]
    if status >= 400:
        problem = _error_problem(data)
        return [f"{status}: {problem}"] if problem else []
    if not isinstance(data, dict):
        return [f"{status}: body is not a JSON object"]
    return []


@dataclass
class FuzzReport:
    """What a fuzz run sent and what came back."""

    seed: int
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def add(self, label: str, mode: str, status: int, content_type: str, text: str, body: Any):
        self.statuses[(label, mode, status)] += 1
        found = problems(status, content_type, text)
        if content_type.startswith("text/event-stream") and status == 200:
            found += _stream_problems(text)
        for p in found:
            if len(self.failures) < 50:
                self.failures.append(
                    f"{label} [{mode}] {p} <- {json.dumps(body, default=str)[:300]}"
                )

    def summary(self) -> str:
        by_status = Counter[int]()
        for (_, _, status), n in self.statuses.items():
            by_status[status] += n
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items()))
        return (
            f"{self.requests} requests (seed {self.seed}): {shown}; {len(self.failures)} failures"
        )


def _clamp(body: Any, clamp: dict[str, int]) -> None:
    """Lower generated ints in ``body`` to ``clamp[key]`` (bounded work on a real engine)."""
    if isinstance(body, dict):
        for key, cap in clamp.items():
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                body[key] = cap


def fuzz(
    schema: Any,
    examples: int,
    headers: dict[str, str] | None = None,
    clamp: dict[str, int] | None = None,
    seed: int | None = None,
    **call_kwargs: Any,
) -> FuzzReport:
    """Send up to ``examples`` generated requests per operation and mode (positive, negative)
    of a loaded schemathesis ``schema``; check each answer with :func:`problems`.

    Operations without inputs (GET /healthz) yield one distinct request, so the total is
    about ``examples x 2 x (operations with a body)``. ``clamp`` caps integer fields of
    generated bodies (``{"max_tokens": 8}``) so a real engine's work stays bounded.
    """
    from schemathesis import GenerationMode

    report = FuzzReport(seed if seed is not None else random.randrange(2**32))
    for op in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(op.ok(), mode, examples, report, headers, clamp, call_kwargs)
    return report


def _run(
    operation: Any,
    mode: Any,
    examples: int,
    report: FuzzReport,
    headers: dict[str, str] | None,
    clamp: dict[str, int] | None,
    call_kwargs: dict[str, Any],
) -> None:
    """One operation in one generation mode (hypothesis drives the examples)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable

    @hseed(report.seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode))
    def send(case: Any) -> None:
        if clamp:
            _clamp(case.body, clamp)
        resp = case.call(headers=headers, **call_kwargs)
        content_type = (resp.headers.get("content-type") or [""])[0]  # lists of values
        report.add(
            operation.label, mode.value, resp.status_code, content_type, resp.text, case.body
        )

    try:
        send()
    except Unsatisfiable:  # no input to get wrong (GET /healthz in negative mode)
        pass


def main(argv: list[str] | None = None) -> int:
    """``python -m ptr_ray.serve.fuzzing URL``: fuzz a running server, exit 1 on a failure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--examples", type=int, default=100, help="per operation and mode")
    ap.add_argument("--max-tokens", type=int, default=16, help="cap on generated max_tokens")
    ap.add_argument("--rounds", type=int, default=2, help="cap on generated rounds")
    args = ap.parse_args(argv)
    import schemathesis

    key = os.environ.get("PTR_API_KEY", "").split(",")[0].strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    schema = schemathesis.openapi.from_url(args.url.rstrip("/") + "/openapi.json", headers=headers)
    caps = {"max_tokens": args.max_tokens, "max_completion_tokens": args.max_tokens}
    caps |= {"rounds": args.rounds, "refinement_rounds": args.rounds}
    report = fuzz(schema, args.examples, headers, clamp=caps, timeout=300)
    print(report.summary())
    for f in report.failures:
        print("  " + f)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
