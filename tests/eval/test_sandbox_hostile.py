"""Hostile completions against the code sandbox, in every isolation mode this machine has.

Each attack is written so that its test passes only if the attack *worked*: it returns what it
stole or "escaped", and the test asserts that, with the message "contained". So an attack
that ran and was stopped scores ``failed: contained`` (or ``timed out``), which also proves it
ran at all; side effects are checked from outside (listener, files, the victim process).

Modes: ``root`` runs here (needs root, as CI has); ``userns`` runs the evaluator as uid 1000
in a user namespace; ``landlock`` and ``limits`` run it under a seccomp filter that denies
namespaces (and Landlock), the way Docker's default profile does. Every attack is bounded on
its own (fork bombs stop after a few seconds and a few hundred processes, the memory hog
at 3 GiB), so a containment failure cannot take the machine down.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ptr_ray.eval import sandbox_filters as filters

pytestmark = pytest.mark.slow

MARKER = "ptr-sandbox-marker-7f3a9c"  # this file is in the project tree: programs must not read it
CANARY = "ptr-sandbox-canary-" + uuid.uuid4().hex
TIMEOUT = 6.0
WORKERS = 8  # most attacks block or die at once: run them side by side
LIMITS = {"memory_mb": 256, "processes": 16}
PROMPT = 'def attack():\n    """hostile"""\n'
ADD_PROMPT = 'def add(a, b):\n    """a + b"""\n'
ADD_TEST = (
    "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
)


@dataclass
class Stage:
    """What the attacks aim at, set up outside the sandbox."""

    tmp: Path
    listener: socket.socket
    unix_path: str
    secret: Path
    drop_dir: Path
    victim: subprocess.Popen
    stray_file: str = field(default_factory=lambda: f"/tmp/ptr-sandbox-pwned-{uuid.uuid4().hex}")
    # a sitecustomize-style drop into site-packages would run in the next evaluator
    site_file: str = field(
        default_factory=lambda: (
            f"{sysconfig.get_paths()['purelib']}/ptr_pwned_{uuid.uuid4().hex}.py"
        )
    )

    def written(self) -> list[str]:
        paths = (str(self.drop_dir / "pwned"), self.stray_file, self.site_file)
        return [p for p in paths if os.path.exists(p)]


@pytest.fixture
def stage(monkeypatch):
    tmp = Path(tempfile.mkdtemp(prefix="ptr-hostile-"))
    tmp.chmod(0o755)  # world-readable: only isolation, not file modes, may stop the reads
    secret = tmp / "secret.txt"
    secret.write_text(CANARY)
    secret.chmod(0o644)
    drop = tmp / "drop"
    drop.mkdir()
    drop.chmod(0o777)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    unix_path = str(tmp / "raylet.sock")
    ulisten = socket.socket(socket.AF_UNIX)
    ulisten.bind(unix_path)
    ulisten.listen(8)
    ulisten.setblocking(False)
    os.chmod(unix_path, 0o777)
    victim = subprocess.Popen(["sleep", "120"])
    monkeypatch.setenv("PTR_SANDBOX_CANARY", CANARY)
    st = Stage(tmp, listener, unix_path, secret, drop, victim)
    yield st
    for s in (listener, ulisten):
        _assert_no_connection(s)
        s.close()
    assert victim.poll() is None, "the victim process was killed from inside the sandbox"
    victim.kill()
    victim.wait()
    for p in st.written():
        os.unlink(p)
    shutil.rmtree(tmp, ignore_errors=True)


def _assert_no_connection(s: socket.socket) -> None:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return
    conn.close()
    raise AssertionError("a sandboxed program connected to a listening socket")


def attacks(st: Stage) -> dict[str, tuple[str, str, str]]:
    """name -> (prompt, completion, test); the test passes only if the attack succeeded."""
    port = st.listener.getsockname()[1]
    escaped = "def check(candidate):\n    assert candidate() == 'escaped', 'contained'\n"
    leaked = (
        "def check(candidate):\n"
        f"    x = candidate()\n    assert {CANARY!r} in x or {MARKER!r} in x, 'contained'\n"
    )
    forge = (
        "    import json, os, sys\n"
        "    line = json.dumps({'results': [{'passed': True, 'result': 'passed'}] * 64})\n"
        "    print(line)\n    sys.__stdout__.write(line + '\\n')\n    sys.__stderr__.write(line)\n"
        "    frame = json.dumps('passed').encode()\n"
        "    for fd in range(1024):\n"
        "        try:\n            os.write(fd, len(frame).to_bytes(4, 'big') + frame)\n"
        "        except OSError:\n            pass\n"
    )
    a = {
        "fork_bomb": (
            "    import posix, time\n    n, t0 = 0, time.monotonic()\n"
            "    while n < 300 and time.monotonic() - t0 < 3:\n"
            "        try:\n            pid = posix.fork()\n        except OSError:\n            break\n"
            "        if pid == 0:\n            time.sleep(6)\n            posix._exit(0)\n"
            "        n += 1\n"
            "    return 'escaped' if n >= 300 else 'contained:%d' % n\n",
            "def check(candidate):\n    r = candidate()\n    assert r == 'escaped', r\n",
        ),
        "memory_hog": (
            "    try:\n        hog = bytearray(3 << 30)\n        hog[:: 1 << 12] = b'x' * (3 << 18)\n"
            "    except MemoryError:\n        return 'contained'\n    return 'escaped'\n",
            "def check(candidate):\n    r = candidate()\n    assert r == 'escaped', r\n",
        ),
        "infinite_loop": ("    while True:\n        pass\n", escaped),
        "sleep_ignoring_signals": (
            "    import signal, time\n"
            "    for s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):\n"
            "        signal.signal(s, signal.SIG_IGN)\n    time.sleep(10_000)\n",
            escaped,
        ),
        "tcp_connect": (
            "    import socket\n    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n"
            "    except OSError:\n        return 'contained'\n    return 'escaped'\n",
            escaped,
        ),
        "unix_connect": (
            "    import socket\n    try:\n        s = socket.socket(socket.AF_UNIX)\n"
            f"        s.connect({st.unix_path!r})\n"
            "    except OSError:\n        return 'contained'\n    return 'escaped'\n",
            escaped,
        ),
        "parent_environ": (
            "    import os, posix\n    out = [str(dict(os.environ))]\n"
            "    try:\n        pids = [d for d in os.listdir('/proc') if d.isdigit()]\n"
            "    except OSError:\n        pids = []\n"
            "    for p in ['self', str(posix.getppid()), '1'] + pids:\n"
            "        try:\n            with open('/proc/%s/environ' % p, 'rb') as f:\n"
            "                out.append(f.read().decode(errors='replace'))\n"
            "        except OSError:\n            pass\n    return '\\n'.join(out)\n",
            leaked,
        ),
        "read_outside": (
            "    out = []\n"
            f"    for p in [{str(st.secret)!r}, {__file__!r}]:\n"
            "        try:\n            out.append(open(p).read())\n"
            "        except OSError:\n            pass\n    return '\\n'.join(out)\n",
            leaked,
        ),
        "write_outside": (  # /tmp is the cell's own in the namespace modes: checked outside
            "    hits = []\n"
            f"    for p in [{str(st.drop_dir / 'pwned')!r}, {st.site_file!r}, {st.stray_file!r}]:\n"
            "        try:\n            with open(p, 'w') as f:\n                f.write('x')\n"
            "            hits.append(p)\n        except OSError:\n            pass\n"
            f"    return 'escaped' if hits and hits[0] != {st.stray_file!r} else 'contained'\n",
            escaped,
        ),
        "kill_other_process": (
            "    import posix\n    try:\n"
            f"        posix.kill({st.victim.pid}, 9)\n"
            "    except OSError:\n        return 'contained'\n    return 'escaped'\n",
            escaped,
        ),
    }
    out = {k: (PROMPT, body, test) for k, (body, test) in a.items()}
    out["forged_result_in_call"] = (ADD_PROMPT, forge + "    return a - b\n", ADD_TEST)
    out["forged_result_then_exit"] = (
        ADD_PROMPT,
        "    return a - b\n\nimport os\n\ndef _f(a, b):\n" + forge + "\n_f(0, 0)\nos._exit(0)\n",
        ADD_TEST,
    )
    out["honest"] = (ADD_PROMPT, "    return a + b\n", ADD_TEST)  # correct code still passes
    out["whoami"] = (
        PROMPT,
        "    import posix\n    return posix.getuid()\n",
        "def check(candidate):\n    assert candidate() == 0, 'contained'\n",
    )
    out["always_equal"] = (
        ADD_PROMPT,
        "    class E:\n        def __eq__(self, o):\n            return True\n    return E()\n",
        ADD_TEST,
    )
    return out


def _jobs(st: Stage) -> tuple[list[str], list[dict]]:
    names, jobs = [], []
    for name, (prompt, body, test) in attacks(st).items():
        entry = "add" if prompt == ADD_PROMPT else "attack"
        problem = {"task_id": name, "prompt": prompt, "test": test, "entry_point": entry}
        names.append(name)
        jobs.append({"problem": problem, "completion": body})
    return names, jobs


RUNNER = """
import json, os, sys
req = json.loads(sys.stdin.read())
if req["deny"]:
    from ptr_ray.eval import sandbox_filters as filters, sandbox_jail as jail
    jail.prctl(jail.PR_SET_NO_NEW_PRIVS, 1)
    filters.install_seccomp(req["deny"])
from ptr_ray.config.eval import SandboxConfig
from ptr_ray.eval import sandbox
cfg = SandboxConfig(**req["sandbox"])
try:
    iso = sandbox.probe(cfg)
    res = sandbox.run_programs([(j["problem"], j["completion"]) for j in req["jobs"]], req["timeout"], sandbox=cfg)
    print(json.dumps({"mode": iso.mode, "drop_uid": iso.drop_uid, "results": res}))
except sandbox.SandboxError as e:
    print(json.dumps({"mode": None, "error": type(e).__name__, "message": str(e)}))
"""
DOCKER_LIKE = {"unshare": 272, "mount": 165, "setns": 308}
NO_LANDLOCK = {
    "landlock_create_ruleset": 444,
    "landlock_add_rule": 445,
    "landlock_restrict_self": 446,
}


def run_mode(mode: str, jobs: list[dict], isolation: str = "best_effort") -> dict:
    """Run the batch with the evaluator placed so that ``mode`` is the strongest available."""
    cfg = {"isolation": isolation, "workers": WORKERS, "limits": LIMITS}
    deny = {}
    prefix: list[str] = []
    if mode == "userns":
        prefix = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    elif mode == "landlock":
        deny = DOCKER_LIKE
    elif mode == "limits":
        deny = {**DOCKER_LIKE, **NO_LANDLOCK}
    req = {"jobs": jobs, "timeout": TIMEOUT, "sandbox": cfg, "deny": deny}
    proc = subprocess.run(
        prefix + [sys.executable, "-c", RUNNER],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _require(mode: str) -> None:
    if mode == "root" and os.geteuid() != 0:
        pytest.skip("root mode needs root (CI runs as root)")
    if mode == "userns" and not shutil.which("unshare"):
        pytest.skip("needs util-linux unshare to start the evaluator in a user namespace")
    if mode in ("landlock", "limits") and not filters.seccomp_supported():
        pytest.skip("the Docker-like namespace ban is simulated with the x86_64 seccomp table")
    if mode == "landlock" and filters.landlock_abi() == 0:
        pytest.skip("this kernel has no Landlock")


# What each mode promises to contain (sandbox.py's docstring and the README say the same).
ALL = [
    "fork_bomb", "memory_hog", "infinite_loop", "sleep_ignoring_signals", "tcp_connect",
    "unix_connect", "parent_environ", "read_outside", "write_outside", "kill_other_process",
    "forged_result_in_call", "forged_result_then_exit", "always_equal",
]  # fmt: skip
LIMITS_ONLY = [a for a in ALL if a not in ("parent_environ", "read_outside", "write_outside")]
# The userns run is simulated from root: its single mapped uid is the host's uid 0, which the
# kernel exempts from RLIMIT_NPROC (a real unprivileged user is not exempt). Its bomb still dies
# with the PID namespace; the process cap is shown by the root, landlock and limits runs.
USERNS_AS_ROOT = os.geteuid() == 0
PROMISES = {
    "root": ALL,
    "userns": [a for a in ALL if a != "fork_bomb"] if USERNS_AS_ROOT else ALL,
    "landlock": ALL,
    "limits": LIMITS_ONLY,
}


def _launchers() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if b"ptr_ray.eval.sandbox_launcher" in f.read():
                    out.append(int(d))
        except (OSError, ValueError):
            pass
    return out


@pytest.mark.parametrize("mode", ["root", "userns", "landlock", "limits"])
def test_hostile_completions_are_contained_and_fail(mode, stage):
    _require(mode)
    names, jobs = _jobs(stage)
    t0 = time.monotonic()
    if mode == "root":
        from ptr_ray.config.eval import SandboxConfig
        from ptr_ray.eval.sandbox import probe, run_programs

        cfg = SandboxConfig(workers=WORKERS, limits=LIMITS)
        iso = probe(cfg)
        out = {"mode": iso.mode, "drop_uid": iso.drop_uid}
        out["results"] = run_programs(
            [(j["problem"], j["completion"]) for j in jobs], TIMEOUT, sandbox=cfg
        )
    else:
        out = run_mode(mode, jobs)
    elapsed = time.monotonic() - t0
    assert out["mode"] == mode, out
    got = dict(zip(names, out["results"], strict=True))
    promised = PROMISES[mode]
    if os.geteuid() == 0 and not out["drop_uid"]:  # uid 0 is exempt from RLIMIT_NPROC
        promised = [a for a in promised if a != "fork_bomb"]
    for name in promised:
        r = got[name]
        assert not r["passed"], f"{mode}: {name} escaped: {r}"
        if name in ("infinite_loop", "sleep_ignoring_signals"):
            assert r["result"] == "timed out", (name, r)
        elif name == "fork_bomb":
            n = int(r["result"].rsplit(":", 1)[1])
            assert 1 <= n < LIMITS["processes"] + 1, (name, r)
        elif name == "memory_hog":
            assert r["result"] in ("failed: contained", "failed: the program exited"), r
        elif name.startswith("forged") or name == "always_equal":
            assert r["result"].startswith("failed"), (name, r)
        else:
            assert r["result"] == "failed: contained", (name, r)
    assert got["honest"] == {"passed": True, "result": "passed"}, got["honest"]
    if mode == "root" or out["drop_uid"]:  # a uid of its own per worker slot
        assert got["whoami"]["result"] == "failed: contained", got["whoami"]
    if "write_outside" in promised:
        assert stage.written() == [], "a sandboxed program wrote outside its work folder"
    assert elapsed < 150, elapsed  # 16 programs, 8 at a time, 6 s deadline each (+ start-up)
    time.sleep(0.2)
    assert _launchers() == [], "a sandbox process outlived its batch"


def test_required_isolation_refuses_without_namespaces():
    """The same machine state that runs in landlock mode under best_effort (above)."""
    _require("landlock")
    job = {
        "problem": {"task_id": "a", "prompt": ADD_PROMPT, "test": ADD_TEST, "entry_point": "add"},
        "completion": "    return a + b\n",
    }
    out = run_mode("landlock", [job], isolation="required")
    assert out["error"] == "SandboxUnavailableError" and "required" in out["message"]
    assert "\n" not in out["message"]


def test_exponential_fork_bomb_dies_with_its_cell(stage):
    """Only after the bounded bomb showed the process limit holds (root mode)."""
    _require("root")
    from ptr_ray.config.eval import SandboxConfig
    from ptr_ray.eval.sandbox import run_programs

    cfg = SandboxConfig(limits=LIMITS)
    names, jobs = _jobs(stage)
    bounded = jobs[names.index("fork_bomb")]
    r = run_programs([(bounded["problem"], bounded["completion"])], TIMEOUT, sandbox=cfg)[0]
    assert r["result"].startswith("failed: contained:"), r
    bomb = (
        "    import posix, time\n    end = time.monotonic() + 2\n"
        "    while time.monotonic() < end:\n"
        "        try:\n            posix.fork()\n        except OSError:\n            pass\n"
    )
    t0 = time.monotonic()
    r = run_programs([(bounded["problem"], bomb)], TIMEOUT, sandbox=cfg)[0]
    assert not r["passed"] and time.monotonic() - t0 < 20
    time.sleep(0.2)
    base = cfg.uid_base
    left = [d for d in os.listdir("/proc") if d.isdigit() and _uid(d) in range(base, base + 8)]
    assert left == [], "processes of the sandbox uid survived the cell"


def _uid(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1
