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

The browser is driven over the DevTools protocol (a websocket, no driver binary): log in through
Ray's token dialog, navigate, poll ``document.body.innerText`` until the names appear (the
dashboard is a React app that fetches its tables after load), scroll the first name into view,
then take a screenshot (retaken if the token dialog came up meanwhile). ``PTR_DASHBOARD_SCREENSHOTS=DIR`` keeps
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
from contextlib import ExitStack
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
        self._stack = ExitStack()  # websockets 17: a connection is a context manager
        self.ws = self._stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        )
        self._id = 0
        self.token: str | None = None
        self.denied: list[str] = []  # requests answered 401/403, for the failure message
        self.logins = 0  # times the token dialog was answered
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Network.enable")

    def call(self, method: str, timeout_s: float = 60, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("method") == "Network.responseReceived":
                status = msg["params"]["response"]["status"]
                if status in (401, 403):  # what made the dashboard ask for the token
                    self.denied.append(f"{status} {msg['params']['response']['url']}")
            if msg.get("id") == self._id:  # any other event: not asked for
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        return str(self._js("document.body ? document.body.innerText : ''") or "")

    DIALOG = "Authentication Token Required"

    def show(
        self,
        url: str,
        expect: list[str],
        shot: Path,
        expand: str | None = None,
        timeout_s: float = 90,
    ) -> str:
        """Open ``url`` (clicking the section header ``expand`` open once it is drawn), wait
        until the page's visible text holds every string of ``expect``, bring the first of them
        into view and save a screenshot to ``shot``. Ray's token dialog, whenever it comes up,
        is answered as a person does (the page then reloads and the wait goes on)."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        text, expanded = "", expand is None
        while time.monotonic() < deadline:
            text = self.text()
            if self.DIALOG in text:
                self.answer_dialog()
                expanded = expand is None  # the page reloaded: sections are closed again
                continue
            if not expanded:
                expanded = self.click_text(expand or "")
                text = self.text()
            if expanded and all(e in text for e in expect):
                time.sleep(1.0)  # let the tables finish drawing before a screenshot
                assert self.reveal(expect[0]), f"{url}: {expect[0]!r} is not visible"
                time.sleep(0.5)
                png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
                if self.DIALOG in self.text():  # came up while drawing: answer, look again
                    continue
                shot.write_bytes(png)
                return text
            time.sleep(0.5)
        missing = [e for e in expect if e not in text]
        raise AssertionError(
            f"{url} never showed {missing} (section {expand!r} opened: {expanded}; "
            f"requests denied: {self.denied[-10:]}); the page said:\n{text[:3000]}"
        )

    def _js(self, expression: str, await_promise: bool = False) -> Any:
        """Evaluate in the page; None while the page is between two documents (a reload after
        the token dialog, a navigation): the callers poll, so the next try sees the new page."""
        try:
            res = self.call(
                "Runtime.evaluate",
                expression=expression,
                returnByValue=True,
                awaitPromise=await_promise,
            )
        except RuntimeError as e:
            if "navigated or closed" in str(e) or "context" in str(e).lower():
                return None
            raise
        return res.get("result", {}).get("value")

    def click_text(self, text: str) -> bool:
        """Click the innermost element whose whole text is ``text`` (e.g. a collapsed section's
        header, as a person expands it); False if there is none."""
        return bool(
            self._js(
                "(() => { const want = " + json.dumps(text) + ";"
                " const all = [...document.querySelectorAll('body *')]"
                ".filter(e => e.innerText && e.innerText.trim() === want);"
                " const el = all[all.length - 1]; if (!el) return false;"
                " el.click(); return true; })()"
            )
        )

    def reveal(self, text: str) -> bool:
        """Scroll the first visible element showing ``text`` (the innermost one: none of its
        children shows it whole) to the middle of the window, so the screenshot shows the row a
        reader looks for, not the table's first rows; False if no visible element shows it."""
        return bool(
            self._js(
                "(() => { const want = " + json.dumps(text) + ";"
                " const has = e => e.offsetParent !== null && (e.innerText || '').includes(want);"
                " const el = [...document.querySelectorAll('body *')]"
                ".find(e => has(e) && ![...e.children].some(has));"
                " if (!el) return false; el.scrollIntoView({block: 'center'}); return true; })()"
            )
        )

    def authenticate(self, dashboard: str, token: str | None) -> None:
        """Log in once, as a person does: Ray 2.60 protects a new local instance with a token
        (``ray get-auth-token`` prints it); the dashboard's first data request is refused and
        its dialog asks for the token, which sets a session cookie and reloads the page. If no
        dialog comes within 30 s, the token is posted to /api/authenticate as the dialog would."""
        self.token = token
        self.call("Page.navigate", url=f"{dashboard}/#/overview")
        if token is None:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.DIALOG in self.text():
                self.answer_dialog()
                return
            time.sleep(0.5)
        status = self._js(
            "fetch('/api/authenticate', {method: 'POST', headers: "
            f"{{Authorization: 'Bearer ' + {json.dumps(token)}}}}}).then(r => r.status)",
            await_promise=True,
        )
        assert status == 200, f"the dashboard refused Ray's token: HTTP {status}"
        self.call("Page.reload", ignoreCache=True)

    def answer_dialog(self) -> None:
        """Type the token into the dialog and press SUBMIT; wait until the page reloaded."""
        assert self.token, f"the dashboard asks for a token, none is known: {self.denied[-5:]}"
        self.logins += 1
        assert self.logins <= 5, f"the dashboard keeps asking for the token: {self.denied[-10:]}"
        focused = self._js(
            "(() => { const i = document.querySelector('[role=dialog] input');"
            " if (!i) return false; i.focus(); return true; })()"
        )
        assert focused, "the token dialog has no input field"
        self.call("Input.insertText", text=self.token)
        self._js(
            "(() => { const b = [...document.querySelectorAll('[role=dialog] button')]"
            ".find(b => b.innerText.trim().toUpperCase() === 'SUBMIT');"
            " if (b) b.click(); return !!b; })()"
        )
        deadline = time.monotonic() + 30
        while self.DIALOG in self.text():
            assert time.monotonic() < deadline, "the token dialog did not accept Ray's token"
            time.sleep(0.5)

    def close(self) -> None:
        try:
            if getattr(self, "_stack", None) is not None:
                self._stack.close()
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


def _post(url: str, body: dict[str, Any], attempts: int = 6) -> Any:
    """POST as ``ray job submit`` does. A 5xx is retried (for a minute, 10 s apart), as a
    person would resubmit: Ray's job head answers 500 when it finds no job agent (seen while
    another Ray instance held the agent port; the ``served`` fixture now refuses to start
    then). The last answer's body is the error."""
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
            print(f"POST {url}: HTTP {e.code} ({text[:300]}); retrying in 10 s")
            time.sleep(10)
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
    import ray

    from ptr_ray.ray_utils import DASHBOARD_AGENT_PORT, port_in_use

    if port_in_use(DASHBOARD_AGENT_PORT):  # the served instance's job API could not work
        why = (
            f"another Ray instance holds the dashboard agent port {DASHBOARD_AGENT_PORT}, so "
            "the job API of the instance under test would answer 'No available agent'"
        )
        if ray.is_initialized():  # this pytest process's own (the suite's shared instance)
            pytest.skip(f"{why}: `make test` runs this test in a pytest process of its own")
        pytest.fail(f"{why}: stop that instance first")
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


def test_dashboard_shows_ptr_rays_work_in_a_browser(chromium, served, tiny_model_dir, tmp_path):
    from ptr_ray.datagen.dataflow import model_label

    proc, dashboard = served
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)

    job = submit_build(dashboard, tiny_model_dir, tmp_path)
    # The build joined the serve's Ray and says where its dashboard is.
    said = [line for line in job["logs"].splitlines() if "dashboard" in line.lower()]
    assert f"Ray dashboard (cluster): {dashboard}" in job["logs"], (
        f"the build job never named {dashboard}; its lines about a dashboard: {said}; "
        f"its log began:\n{job['logs'][:3000]}"
    )
    job_id = job["job_id"]
    model = model_label(str(tiny_model_dir))

    profile = tmp_path / "chromium-profile"  # a new, empty profile every run
    profile.mkdir()
    browser = Browser(chromium, profile, tmp_path / "chromium.log")
    try:
        browser.authenticate(dashboard, ray_token())
        # (screenshot name, view, names it must show, the first brought into view; the
        # collapsed section to open first)
        views: list[tuple[str, str, list[str], str | None]] = [
            ("serve", f"{dashboard}/#/serve", ["PTRIngress", "PTREngine", "ptr-ray"], None),
            (
                "actors",
                f"{dashboard}/#/actors",
                ["PTREngine", "PTRIngress", "ServeController"],
                None,
            ),
            (
                "build-actors",
                f"{dashboard}/#/jobs/{job_id}/actors",
                [f"WeakThoughts[{model}]", f"StrongAnswers[{model}]"],
                None,
            ),
            ("jobs", f"{dashboard}/#/jobs", [SUBMISSION_ID, "ptr_ray.cli serve"], None),
            # the job's page: Ray Data's overview lists the build's dataset by its name
            ("data", f"{dashboard}/#/jobs/{job_id}", ["ptr-build-dataset"], "Ray Data Overview"),
        ]
        for name, url, expect, expand in views:
            t0 = time.monotonic()
            browser.show(url, expect, shots / f"dashboard-{name}.png", expand=expand)
            print(f"{name}: {expect} shown after {time.monotonic() - t0:.1f}s")
        print(f"token dialog answered {browser.logins}x; denied: {browser.denied}")
    finally:
        browser.close()
    for name, *_ in views:
        png = (shots / f"dashboard-{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
    assert proc.proc.poll() is None, "ptr-ray serve died while the dashboard was looked at"
