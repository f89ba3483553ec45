"""The Ray dashboard as a person sees it, in a real browser (issue 14, part 4).

``ptr-ray serve`` runs for real (its own local Ray, dashboard on, tiny model) and must print
the dashboard's URL; a tiny ``ptr-ray build`` is submitted to that Ray as a Ray job (through
the dashboard's job API, as ``ray job submit`` does), so one dashboard shows both. Headless
Chromium (Debian's ``chromium``; ``make browser-deps`` installs it) then opens the views and
waits until each shows ptr-ray's names:

- Serve: the ``ptr-ray`` application's ``PTRIngress`` and ``PTREngine`` deployments;
- Actors: the Serve replicas (``ServeReplica:ptr-ray:PTREngine``/``PTRIngress``);
- the build job's actors: ``WeakThoughts[<model>]`` and ``StrongAnswers[<model>]`` pools;
- Jobs: the build job (its submission id) and the serve driver; the build job's page: Ray
  Data's overview with the dataset's name (``ptr-build-<output folder>``).

The browser is driven over the DevTools protocol (a websocket, no driver binary): navigate,
poll ``document.body.innerText`` until the names appear (the dashboard is a React app that
fetches its tables after load), then take a screenshot. ``PTR_DASHBOARD_SCREENSHOTS=DIR`` keeps
them there (``make test-browser`` refreshes docs/images/ for the README).

Why only this test turns the dashboard on: the suite's shared Ray fixture (tests/conftest.py)
keeps it off, because the dashboard's web server and modules cost every test session a few
seconds and a few hundred MB on a 2-core machine; here it is the thing under test. Without
Chromium the test skips and says why (never passes without looking).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ptr_ray.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

SUBMISSION_ID = "ptr-ray-build-dashboard-check"
SHOTS_ENV = "PTR_DASHBOARD_SCREENSHOTS"
QUERIES = [
    "How do I bake bread with a young starter?",
    "How do I choose a first telescope for planets?",
    "How do I repair a slow leaking bicycle tyre?",
    "How do I explain compound interest to a teenager?",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


# ----------------------------------------------------------------------------- the browser


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page, one websocket).

    Flags as Debian's Chromium needs them on a closed machine (as root, no GPU, no network
    beyond loopback): without the background-networking ones it keeps trying Google's hosts.
    """

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        "--window-size=1440,900",
    )

    def __init__(self, exe: str, profile: Path, log: Path) -> None:
        from websockets.sync.client import connect

        self.log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [exe, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start; see {log}")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        self._id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, timeout_s: float = 60, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self._id:  # anything else is an event: not asked for
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        res = self.call(
            "Runtime.evaluate",
            expression="document.body ? document.body.innerText : ''",
            returnByValue=True,
        )
        return str(res.get("result", {}).get("value") or "")

    def show(self, url: str, expect: list[str], timeout_s: float = 90) -> str:
        """Open ``url`` and wait until the page's text holds every string of ``expect``."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(e in text for e in expect):
                time.sleep(1.0)  # let the tables finish drawing before a screenshot
                return self.text()
            time.sleep(0.5)
        missing = [e for e in expect if e not in text]
        raise AssertionError(f"{url} never showed {missing}; the page said:\n{text[:3000]}")

    def authenticate(self, dashboard: str, token: str | None) -> None:
        """Log in as a person does once per browser: Ray 2.60 protects a new local instance
        with a token (the dashboard asks for it; ``ray get-auth-token`` prints it). A valid
        token posted to /api/authenticate sets the session cookie."""
        self.call("Page.navigate", url=f"{dashboard}/#/overview")
        if token is None:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.call(
                "Runtime.evaluate", expression="document.readyState", returnByValue=True
            )
            if state.get("result", {}).get("value") == "complete":
                break
            time.sleep(0.3)
        res = self.call(
            "Runtime.evaluate",
            expression=(
                "fetch('/api/authenticate', {method: 'POST', headers: "
                f"{{Authorization: 'Bearer ' + {json.dumps(token)}}}}}).then(r => r.status)"
            ),
            awaitPromise=True,
            returnByValue=True,
        )
        status = res.get("result", {}).get("value")
        assert status == 200, f"the dashboard refused Ray's token: HTTP {status}"
        # The page was loaded before the cookie existed and keeps its "token required" dialog
        # over every later view (hash navigation does not reload it): start it again.
        self.call("Page.reload", ignoreCache=True)

    def screenshot(self, path: Path) -> None:
        # Ray 2.60's "token required" dialog can stay over a view although the session cookie
        # works (the view's data behind it loaded); Escape closes it, as a person would.
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Escape",
                code="Escape",
                windowsVirtualKeyCode=27,
            )
        time.sleep(0.5)
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(15)
            self.log.close()


# ----------------------------------------------------------------------------- ptr-ray serve


class ServeProcess:
    """``ptr-ray serve`` in its own process group; its output lines collected as they come."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ptr_ray.cli", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C of the test run does not reach it twice
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.log.write(line)
            self.log.flush()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        tail = "".join(self.lines[-60:])
        raise AssertionError(f"ptr-ray serve never printed /{pattern}/:\n{tail}")

    def stop(self) -> None:
        """Ctrl-C, as a user stops it (Serve and Ray shut down); killed if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._reader.join(10)
        self.log.close()


def ray_token() -> str | None:
    """The token of a local Ray 2.60 instance (token auth is its default): None if disabled."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def _headers() -> dict[str, str]:
    token = ray_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _get(url: str) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=_headers()), timeout=30) as r:
        return json.load(r)


def _post(url: str, body: dict[str, Any], attempts: int = 3) -> Any:
    """POST as ``ray job submit`` does. A 5xx is retried (twice, 15 s apart): once, on a
    loaded machine, the job API answered 500 while the node's job agent was still starting.
    The last answer's body is the error."""
    for attempt in range(1, attempts + 1):
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **_headers()},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # say what the dashboard answered, not the code
            text = e.read().decode(errors="replace")
            if e.code < 500 or attempt == attempts:
                raise AssertionError(f"POST {url}: HTTP {e.code}: {text}") from e
            print(f"POST {url}: HTTP {e.code} ({text[:300]}); retrying in 15 s")
            time.sleep(15)
    raise AssertionError("unreachable")


def submit_build(dashboard: str, model: Path, work: Path) -> dict[str, Any]:
    """A tiny ``ptr-ray build`` (transformers engines: no vLLM start) as a Ray job on the
    serve's Ray; returns the finished job's info (status, job_id)."""
    src = work / "queries.jsonl"
    src.write_text("".join(json.dumps({"query": q}) + "\n" for q in QUERIES))
    engine = json.dumps(
        {"model": str(model), "backend": "hf", "dtype": "float32", "max_model_len": 512}
    )
    overrides = [
        f"sources=[{{kind: jsonl, path: {src}, field: query}}]",
        "clean.min_tokens=2",
        "dedupe.near=false",
        "decontaminate.enabled=false",
        f"weak.models=[{engine}]",
        "weak.num_thoughts=1",
        "weak.sampling.max_tokens=4",
        f"strong.model={engine}",
        "strong.sampling.max_tokens=4",
        "strong.num_icl=0",
        "consistency.method=none",
        "sft.fraction=0.0",
        f"output.path={work / 'dataset'}",
    ]
    entry = shlex.join([sys.executable, "-m", "ptr_ray.cli", "build", *overrides])
    _post(
        f"{dashboard}/api/jobs/",
        {
            "entrypoint": entry,
            "submission_id": SUBMISSION_ID,
            "runtime_env": {"env_vars": {"PYTHONUNBUFFERED": "1"}},
        },
    )
    deadline = time.monotonic() + 420
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = _get(f"{dashboard}/api/jobs/{SUBMISSION_ID}")
        if info.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = _get(f"{dashboard}/api/jobs/{SUBMISSION_ID}/logs").get("logs", "")
    assert info.get("status") == "SUCCEEDED", f"build job {info.get('status')}:\n{logs[-4000:]}"
    info["logs"] = logs
    return info


@pytest.fixture
def chromium() -> str:
    exe = chromium_path()
    if exe is None:
        pytest.skip(
            "Debian's chromium is not installed, so the dashboard cannot be looked at: "
            "`make browser-deps` installs it (apt-get install chromium, as root); "
            ".ci/run does so before the tests"
        )
    return exe


@pytest.fixture
def served(tiny_model_dir, tmp_path) -> Iterator[tuple[ServeProcess, str]]:
    """``ptr-ray serve`` on the tiny model, dashboard on; yields it and the dashboard URL."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-dash-", dir="/tmp"))  # short: socket paths
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PTR_API_KEY")}
    env["PYTHONUNBUFFERED"] = "1"
    # Serve's proxy must answer its readiness check in 5 s, three times running, or it is
    # killed and `serve.start` fails: on 2 loaded cores it can miss that. Time, not behaviour.
    env.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    args = [
        f"engine.model={tiny_model_dir}",
        "engine.dtype=float32",
        "engine.max_model_len=1024",
        "engine.max_num_seqs=8",
        "host=127.0.0.1",
        f"port={free_port()}",
        "ray.include_dashboard=true",
        "ray.num_cpus=8",
        f"ray.temp_dir={ray_tmp}",
    ]
    proc = ServeProcess(args, tmp_path / "serve.log", env)
    try:
        # The URL Ray chose (8265 may be another instance's): printed before the model loads.
        m = proc.wait_for(r"Ray dashboard \(local instance\): (http://127\.0\.0\.1:\d+)", 180)
        proc.wait_for(r"ptr-ray serve: .* ready at http://127\.0\.0\.1:\d+", 420)
        yield proc, m.group(1)
    finally:
        proc.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.xfail(
    strict=False,
    reason="flaky, not yet trusted: on 2026-12-02 it passed twice (17:13, 17:16; every view "
    "listed the names, but Ray's token dialog stayed over the screenshots) and failed twice "
    "(17:08: POST /api/jobs/ answered HTTP 500; 17:19, beside a CI run: the build job's log "
    "lacked the 'Ray dashboard (cluster)' line)",
)
def test_dashboard_shows_ptr_rays_work_in_a_browser(chromium, served, tiny_model_dir, tmp_path):
    from ptr_ray.datagen.dataflow import model_label

    proc, dashboard = served
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)

    job = submit_build(dashboard, tiny_model_dir, tmp_path)
    # The build joined the serve's Ray and says where its dashboard is.
    assert f"Ray dashboard (cluster): {dashboard}" in job["logs"]
    job_id = job["job_id"]
    model = model_label(str(tiny_model_dir))

    profile = tmp_path / "chromium-profile"  # a new, empty profile every run
    profile.mkdir()
    browser = Browser(chromium, profile, tmp_path / "chromium.log")
    try:
        browser.authenticate(dashboard, ray_token())
        views = [
            ("serve", f"{dashboard}/#/serve", ["ptr-ray", "PTRIngress", "PTREngine"]),
            ("actors", f"{dashboard}/#/actors", ["PTRIngress", "PTREngine", "ServeController"]),
            (
                "build-actors",
                f"{dashboard}/#/jobs/{job_id}/actors",
                [f"WeakThoughts[{model}]", f"StrongAnswers[{model}]"],
            ),
            ("jobs", f"{dashboard}/#/jobs", [SUBMISSION_ID, "ptr_ray.cli serve"]),
            # the job's page: Ray Data's overview lists the build's dataset by its name
            ("data", f"{dashboard}/#/jobs/{job_id}", ["ptr-build-dataset"]),
        ]
        for name, url, expect in views:
            t0 = time.monotonic()
            browser.show(url, expect)
            browser.screenshot(shots / f"dashboard-{name}.png")
            print(f"{name}: {expect} shown after {time.monotonic() - t0:.1f}s")
    finally:
        browser.close()
    for name, _, _ in views:
        png = (shots / f"dashboard-{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
    assert proc.proc.poll() is None, "ptr-ray serve died while the dashboard was looked at"
