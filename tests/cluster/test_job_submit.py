"""A real `ray start --head` cluster, a real `ray job submit`, and a teardown that stops only it.

This machine is shared: other people's Ray instances run beside this one. So the cluster gets
its own temp dir, its own ports (a free block below the kernel's ephemeral range, so no
outgoing connection can grab one between the check and `ray start`), its own auth token (via
``RAY_AUTH_TOKEN``; token auth is on by default in Ray 2.60, and the CLI needs
``RAY_AUTH_MODE=token``), and it is stopped by killing only the processes that name its temp
dir or its GCS port, plus their descendants -- never with a bare `ray stop`, which kills every
Ray process on the machine.

The job is ``jobs/smoke.py``: ``ptr-ray smoke`` on the HF engine and a tiny local model, run in
a Ray task on the cluster, so the test covers working-dir upload, the job's driver joining the
cluster, a task landing on a worker whose Python imports ptr_ray, and the failure path (a bad
config fails the job with the CLI's one-line error).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptr_ray import runtime_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"

# Named ports of `ray start --head`; the worker port range comes after them in the same block.
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)
WORKER_PORTS = 64


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port_block(size: int, low: int = 20000, high: int = 32000, tries: int = 200) -> int:
    """First port of ``size`` consecutive free ports in [low, high): below Linux's ephemeral range."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(tries):
        base = rng.randrange(low, high - size)
        if all(_port_free(p) for p in range(base, base + size)):
            return base
    raise RuntimeError(f"no block of {size} free ports in [{low}, {high})")


@dataclass
class LocalCluster:
    temp_dir: Path
    ports: dict[str, int]
    env: dict[str, str]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the ray CLI against this cluster only (explicit --address, own token)."""
        return subprocess.run(
            [str(RAY), *args],
            env=self.env,
            cwd=self.temp_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api(self, path: str) -> dict:
        """GET the dashboard's job REST API; token auth wants a bearer header."""
        import httpx

        r = httpx.get(
            f"{self.dashboard_url}{path}",
            timeout=30,
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        r.raise_for_status()
        return r.json()

    def processes(self):
        """This cluster's processes: those naming its temp dir or GCS port, and their children."""
        import psutil

        gcs = f":{self.ports['--port']}"
        roots = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid != os.getpid() and (str(self.temp_dir) in cmd or gcs in cmd):
                roots.append(p)
        found = {p.pid: p for p in roots}
        for p in roots:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace_s: float = 15) -> list[int]:
        """SIGTERM this cluster's processes, SIGKILL what is left after ``grace_s``."""
        import psutil

        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        return [p.pid for p in procs]


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="rjs-", dir="/tmp"))  # short: unix socket paths
    base = free_port_block(len(PORT_FLAGS) + WORKER_PORTS)
    ports = {flag: base + i for i, flag in enumerate(PORT_FLAGS)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        {
            # `python` in the job's entrypoint must be this venv's: ptr_ray is installed there.
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),  # this cluster's own token, not ~/.ray's
            **runtime_env.DEFAULTS,
            **runtime_env.CPU_DEFAULTS,
            "PYTHONUNBUFFERED": "1",
        }
    )
    cluster = LocalCluster(temp_dir=temp_dir, ports=ports, env=env)
    args = [
        "start",
        "--head",
        "--num-cpus",
        "2",
        "--num-gpus",
        "0",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        "--min-worker-port",
        str(base + len(PORT_FLAGS)),
        "--max-worker-port",
        str(base + len(PORT_FLAGS) + WORKER_PORTS - 1),
    ]
    for flag, port in ports.items():
        args += [flag, str(port)]
    t0 = time.time()
    try:
        res = cluster.ray(*args, timeout=180)
        assert res.returncode == 0, f"ray start failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        print(
            f"ray start: {time.time() - t0:.1f}s, dashboard {cluster.dashboard_url}, "
            f"temp dir {temp_dir}"
        )
        yield cluster
    finally:
        stopped = cluster.stop()
        print(f"stopped {len(stopped)} processes of the test cluster")
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    """A small working dir: the job scripts only (ptr_ray comes from the venv's install)."""
    wd = tmp_path_factory.mktemp("job-wd")
    shutil.copytree(
        REPO / "jobs", wd / "jobs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return wd


def _submit(cluster: LocalCluster, job_dir: Path, submission_id: str, *job_args: str):
    return cluster.ray(
        "job",
        "submit",
        "--address",
        cluster.dashboard_url,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(job_dir),
        "--",
        "python",
        "jobs/smoke.py",
        *job_args,
    )


def test_smoke_job_runs_on_the_cluster(local_cluster, job_dir, tiny_model_dir):
    sid = f"ptr-smoke-{secrets.token_hex(4)}"
    t0 = time.time()
    res = _submit(
        local_cluster,
        job_dir,
        sid,
        f"models=[{tiny_model_dir}]",
        "engine.backend=hf",
        "engine.dtype=float32",
        "sampling.max_tokens=8",
        "query=What is 2+2?",
    )
    elapsed = time.time() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"ray job submit failed ({res.returncode}):\n{out[-4000:]}"
    print(f"job {sid}: submit-to-finish {elapsed:.1f}s")

    info = local_cluster.api(f"/api/jobs/{sid}")
    assert info["status"] == "SUCCEEDED", info
    assert info["entrypoint"].startswith("python jobs/smoke.py"), info["entrypoint"]
    text = local_cluster.api(f"/api/jobs/{sid}/logs")["logs"]
    # `ray job logs` (the CLI users run) shows the same text.
    cli_logs = local_cluster.ray("job", "logs", "--address", local_cluster.dashboard_url, sid)
    assert cli_logs.returncode == 0 and "smoke job ok" in cli_logs.stdout, cli_logs.stderr[-2000:]
    # The driver joined this cluster (2 CPUs, no GPU), not a private Ray of its own ...
    assert "connected to" in text and "2.0 CPU, 0 GPU on 1 node(s)" in text, text[-3000:]
    # ... and the smoke ran in a task, on a worker whose Python is this venv, answering once.
    assert "smoke job ok: 1 model(s) answered on node" in text, text[-3000:]
    assert f"python {VENV_BIN}" in text, text[-3000:]
    assert f"{tiny_model_dir}:" in text


def test_bad_config_fails_the_job_with_one_line(local_cluster, job_dir):
    sid = f"ptr-smoke-bad-{secrets.token_hex(4)}"
    res = _submit(local_cluster, job_dir, sid, "engine.backend=hf", "engine.no_such_key=1")
    assert res.returncode != 0, "a job whose config is invalid must not report success"
    info = local_cluster.api(f"/api/jobs/{sid}")
    assert info["status"] == "FAILED", info
    logs = local_cluster.api(f"/api/jobs/{sid}/logs")["logs"]
    assert "smoke job: error: unknown config key 'engine.no_such_key'" in logs, logs[-3000:]
    assert "Traceback" not in logs


def test_stop_kills_this_cluster_and_nothing_else(local_cluster):
    """Runs last: stop the cluster the way the fixture does, then check what is left.

    A decoy process that looks like another person's Ray GCS (another temp dir, another port)
    and any real Ray process of someone else must survive; every process of this cluster must
    be gone and its dashboard port closed.
    """
    import psutil

    decoy_dir = "/tmp/ray-someone-else/session_x/logs"
    decoy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(120)",
            "gcs_server",
            f"--log_dir={decoy_dir}",
            "--gcs_server_port=6379",
        ],
    )
    try:
        ours = local_cluster.processes()
        cmds = [" ".join(p.cmdline()) for p in ours]
        assert any("gcs_server" in c for c in cmds), cmds
        assert any("/raylet" in c for c in cmds), cmds
        ours_pids = {p.pid for p in ours}
        assert decoy.pid not in ours_pids
        neighbours = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.pid not in ours_pids
            and p.pid != os.getpid()
            and any(
                k in " ".join(p.info["cmdline"] or [])
                for k in ("gcs_server", "/raylet", "dashboard.py")
            )
        ]
        assert any(p.pid == decoy.pid for p in neighbours)

        stopped = set(local_cluster.stop())
        # A process of ours may have exited on its own between the two looks (idle workers).
        assert all(pid in stopped or not psutil.pid_exists(pid) for pid in ours_pids)
        assert local_cluster.processes() == []
        with pytest.raises(OSError):  # nothing listens on the dashboard port any more
            socket.create_connection(("127.0.0.1", local_cluster.ports["--dashboard-port"]), 2)
        # Another person's Ray may end on its own meanwhile (a job that finished): what matters
        # is that stop() signalled none of them, and that the decoy, which cannot end, lives.
        foreign = {p.pid: p.info["cmdline"] for p in neighbours}
        assert not stopped & foreign.keys(), (
            f"stopping the test cluster signalled processes it does not own: "
            f"{[foreign[pid] for pid in stopped & foreign.keys()]}"
        )
        assert decoy.poll() is None, "stopping the test cluster killed the decoy"
    finally:
        decoy.kill()
        decoy.wait()
