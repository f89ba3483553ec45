"""``jobs/smoke.py`` reports failures the way ``ptr-ray`` does (fast; no cluster).

The job on a real cluster is in test_job_submit.py. Here its body is replaced by one that
raises, so each kind of failure is checked: a user's error is one line and its exit status,
even wrapped by Ray (the smoke runs in a task), a bug keeps its traceback, ``--debug`` shows
every traceback.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ptr_ray import cli
from ptr_ray.errors import PtrRayRuntimeError, PtrRayValueError

JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.py"


@pytest.fixture(scope="module")
def smoke_job():
    spec = importlib.util.spec_from_file_location("smoke_job_under_test", JOB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ray_task_error(cause: BaseException) -> BaseException:
    from ray.exceptions import RayTaskError

    tb = "Traceback (most recent call last):\n  File 'worker.py', line 1\n" + repr(cause)
    err = RayTaskError("_smoke_on_worker", tb, cause, proctitle="ray::smoke", pid=1, ip="x")
    return err.as_instanceof_cause()


def _fail_with(monkeypatch, smoke_job, exc: BaseException) -> list:
    seen: list = []

    def run(cfg):
        seen.append(cfg)
        raise exc

    monkeypatch.setattr(smoke_job, "_run", run)
    return seen


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (
            PtrRayRuntimeError("code sandbox failed (exit 9): killed"),
            1,
            "ptr-ray: error: code sandbox failed (exit 9): killed",
        ),
        (
            _ray_task_error(PtrRayValueError("model source 'builtin:nope' is unknown")),
            2,
            "ptr-ray: error: model source 'builtin:nope' is unknown",
        ),
        (KeyboardInterrupt(), 130, "ptr-ray: error: interrupted"),
    ],
    ids=["runtime", "ray_wrapped", "interrupt"],
)
def test_a_user_failure_is_one_line(monkeypatch, capsys, smoke_job, exc, status, line):
    seen = _fail_with(monkeypatch, smoke_job, exc)
    assert smoke_job.main(["engine.backend=hf"]) == status
    assert seen and seen[0].engine.backend == "hf"  # the body ran with the parsed config
    err = capsys.readouterr().err
    assert "Traceback" not in err and "worker.py" not in err
    assert [ln for ln in err.splitlines() if "error" in ln] == [line]


def test_a_bug_keeps_its_traceback(monkeypatch, capsys, smoke_job):
    _fail_with(monkeypatch, smoke_job, _ray_task_error(ZeroDivisionError("division by zero")))
    assert smoke_job.main([]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "worker.py" in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("ptr-ray: internal error: ZeroDivisionError: division by zero")
    )


def test_debug_shows_the_traceback_of_a_user_failure(monkeypatch, capsys, smoke_job):
    _fail_with(monkeypatch, smoke_job, PtrRayRuntimeError("the node has no GPU"))
    assert smoke_job.main(["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "PtrRayRuntimeError" in err
    assert err.strip().splitlines()[-1] == "ptr-ray: error: the node has no GPU"


@pytest.mark.parametrize("debug", [False, True])
def test_a_bad_config_is_one_line_before_ray(monkeypatch, capsys, smoke_job, debug):
    seen = _fail_with(monkeypatch, smoke_job, AssertionError("the body must not run"))
    argv = ["engine.no_such_key=1"] + (["--debug"] if debug else [])
    assert smoke_job.main(argv) == cli.EXIT_USAGE
    assert not seen
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("smoke job: error: unknown config key 'engine.no_such_key'")
    assert ("Traceback" in err) is debug
