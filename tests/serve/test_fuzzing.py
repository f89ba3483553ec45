"""Fuzzing the API (issue 11 part 6): generated requests, valid and invalid, never get a 5xx,
and every error is OpenAI-style JSON.

- ``test_schema_driven_fuzz_in_process``: schemathesis reads the app's own /openapi.json and
  sends >= 1,000 requests (positive and negative, every operation) to the in-process app over
  the fake engine (conftest.py), with auth on and small limits, so the limits are hit too.
- ``test_raw_body_fuzz``: hypothesis sends bodies the schema cannot describe (random bytes,
  arbitrary JSON, wrong types in every field, nesting bombs).
- The same :func:`ptr_ray.serve.fuzzing.fuzz` runs against the real tiny-model server in
  tests/serve/test_serve_integration.py.
"""

from __future__ import annotations

import json

import pytest

from ptr_ray.config import ServeConfig
from ptr_ray.serve.api import create_app
from ptr_ray.serve.fuzzing import FuzzReport, problems

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {
    "max_rounds": 4,
    "max_tokens_cap": 64,
    "max_total_tokens": 128,
    "max_prompt_chars": 400,
    "max_messages": 6,
    "max_body_bytes": 8192,
    "max_stop_sequences": 2,
    "max_stop_chars": 8,
}


def _app(fake_backend, **kw):
    cfg = ServeConfig.model_validate(
        {"engine": {"model": "fake-model"}, "default_max_tokens": 16, **LIMITS, **kw}
    )
    # a tiny context, so some generated prompts are too long for the "engine" as well
    return create_app(fake_backend(context_tokens=300), cfg, api_key=KEY)


ERR = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": "c"}}


@pytest.mark.parametrize(
    "status,ctype,text,bad",
    [
        (400, "application/json", json.dumps(ERR), False),
        (200, "application/json", '{"object": "refinement"}', False),
        (200, "text/event-stream", "data: {}\n\n", False),
        (500, "application/json", json.dumps(ERR), True),  # any 5xx
        (502, "text/plain", "bad gateway", True),
        (422, "application/json", '{"detail": [{"loc": ["body"]}]}', True),  # FastAPI's shape
        (400, "application/json", '{"error": {"message": "m"}}', True),  # keys missing
        (
            400,
            "application/json",
            '{"error": {"message": "", "type": "t", "param": null, "code": null}}',
            True,
        ),
        (400, "text/html", "<html>oops</html>", True),
        (200, "application/json", "[1, 2]", True),
    ],
)
def test_problems_tells_good_answers_from_bad(status, ctype, text, bad):
    assert bool(problems(status, ctype, text)) is bad


def test_report_checks_error_events_inside_streams():
    r = FuzzReport(seed=1)
    good = "event: error\ndata: " + json.dumps(ERR) + "\n\n"
    r.add("POST /v1/refine", "positive", 200, "text/event-stream", good, {})
    assert not r.failures
    r.add(
        "POST /v1/refine",
        "positive",
        200,
        "text/event-stream",
        'event: error\ndata: {"error": "x"}\n\n',
        {},
    )
    r.add("POST /v1/refine", "positive", 200, "text/event-stream", "data: {not json\n\n", {})
    assert len(r.failures) == 2 and r.requests == 3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schema_driven_fuzz_in_process(fake_backend):
    app = _app(fake_backend)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    from ptr_ray.serve.fuzzing import fuzz

    report = fuzz(schema, examples=200, headers=AUTH)
    print(report.summary())
    assert not report.failures, "\n".join([report.summary(), *report.failures])
    assert report.requests >= 1000, report.summary()
    posts = sum(n for (label, _, _), n in report.statuses.items() if label.startswith("POST"))
    statuses = {s for (_, _, s) in report.statuses}
    assert posts >= 700, report.summary()
    # both sides were exercised: answers, refusals of bad input, and refused keys
    assert {200, 400, 401} <= statuses, report.summary()
    assert not app.state.serve.slots.running


FIELDS = [
    "query", "messages", "rounds", "refinement_rounds", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "seed", "stop", "stream", "stop_when_stable", "model", "n",
    "stream_options", "user",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool", ""]),
            "content": json_values,
        }
    ),
    max_size=4,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {}, optional={f: (messages if f == "messages" else json_values) for f in FIELDS}
    ).map(lambda d: json.dumps(d).encode()),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_raw_body_fuzz(fake_backend):
    from fastapi.testclient import TestClient

    client = TestClient(_app(fake_backend))
    seen: dict[int, int] = {}

    @hypothesis.settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(raw=bodies, path=st.sampled_from(["/v1/refine", "/v1/chat/completions"]))
    def one(raw, path):
        r = client.post(path, content=raw, headers={**AUTH, "content-type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        bad = problems(r.status_code, r.headers.get("content-type", ""), r.text)
        assert not bad, (raw[:200], bad)

    one()
    assert sum(seen.values()) >= 150 and all(s < 500 for s in seen), seen
