"""The CLI's one mapping of failures: an expected one is one line and an exit status, a bug is a
traceback plus a line saying so, and ``--debug`` shows every traceback (ptr_ray/cli.py)."""

from __future__ import annotations

import json

import filelock
import pytest

from ptr_ray import cli
from ptr_ray.config import ConfigError
from ptr_ray.data.queries import QuerySourceError
from ptr_ray.errors import PtrRayError, PtrRayRuntimeError
from ptr_ray.records import DatasetError
from ptr_ray.train.trainer import TrainingFailed


def _raise_in_stage(monkeypatch, exc: BaseException) -> None:
    def stage(name, args):
        raise exc

    monkeypatch.setattr(cli, "_run_stage", stage)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("ptr-ray: error: ")
    return lines[0]


EXPECTED = [
    (ConfigError("config key 'limit': must be >= 1 (got 0)"), 2, ["config key 'limit'", ">= 1"]),
    (DatasetError("/d/part-0.jsonl:3: not valid JSON"), 2, ["/d/part-0.jsonl:3"]),
    (QuerySourceError("query file not found: /q.jsonl"), 2, ["/q.jsonl"]),
    (
        TrainingFailed("training failed 3 times (max_failures=2); see /runs/t/train.log"),
        1,
        ["max_failures=2", "/runs/t/train.log"],
    ),
    (PtrRayError("the run failed\n  on two lines"), 1, ["the run failed on two lines"]),
    (PtrRayRuntimeError("code sandbox failed (exit 1): killed"), 1, ["code sandbox failed"]),
    (
        PermissionError(13, "Permission denied", "/srv/out/model"),
        1,
        ["/srv/out/model: Permission denied", "permissions"],
    ),
    (FileNotFoundError(2, "No such file or directory", "/no/such"), 1, ["/no/such"]),
    (IsADirectoryError(21, "Is a directory", "/tmp/x.yaml"), 1, ["/tmp/x.yaml: Is a directory"]),
    (OSError(28, "No space left on device", "/full/part-1.jsonl"), 1, ["No space left"]),
    (
        UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"),
        2,
        ["not UTF-8", "0xff", "--debug"],
    ),
    (filelock.Timeout("/out/.build.lock"), 1, ["/out/.build.lock", "another process"]),
    (KeyboardInterrupt(), 130, ["ptr-ray: error: interrupted"]),
]


@pytest.mark.parametrize(("exc", "status", "words"), EXPECTED, ids=lambda v: type(v).__name__)
def test_an_expected_failure_is_one_line_and_a_status(monkeypatch, capsys, exc, status, words):
    _raise_in_stage(monkeypatch, exc)
    assert cli.main(["smoke"]) == status
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    for word in words:
        assert word in line
    assert captured.out == ""


@pytest.mark.parametrize("argv", [["--debug", "smoke"], ["smoke", "--debug"]])
def test_debug_shows_the_traceback_of_an_expected_failure(monkeypatch, capsys, argv):
    _raise_in_stage(monkeypatch, ConfigError("config key 'x': bad"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1] == "ptr-ray: error: config key 'x': bad"


def test_an_unexpected_exception_is_a_bug_with_its_traceback(monkeypatch, capsys):
    def broken(name, args):
        return {}["missing"]  # a KeyError deep in our code: a bug, not the user's input

    monkeypatch.setattr(cli, "_run_stage", broken)
    assert cli.main(["smoke"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ptr-ray: internal error: KeyError: 'missing'")
    assert "bug" in last and "report" in last


def test_a_plain_runtime_error_is_a_bug_not_a_user_error(monkeypatch, capsys):
    _raise_in_stage(monkeypatch, RuntimeError("code sandbox failed (exit 1): boom"))
    assert cli.main(["smoke"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error: RuntimeError" in err


def _ray_task_error(cause: BaseException):
    from ray.exceptions import RayTaskError

    remote_tb = "Traceback (most recent call last):\n  File 'worker.py', line 1\n" + repr(cause)
    err = RayTaskError("fn", remote_tb, cause, proctitle="ray::fn", pid=1, ip="127.0.0.1")
    return err.as_instanceof_cause()


def test_a_ray_wrapped_expected_failure_is_unwrapped_to_its_line(monkeypatch, capsys):
    wrapped = _ray_task_error(DatasetError("/d/part-0.jsonl:7: not valid UTF-8"))
    assert "worker.py" in str(wrapped)  # the remote traceback: what used to be the message
    _raise_in_stage(monkeypatch, wrapped)
    assert cli.main(["smoke"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == "ptr-ray: error: /d/part-0.jsonl:7: not valid UTF-8"


def test_a_ray_data_user_code_error_is_unwrapped_through_its_cause(monkeypatch, capsys):
    from ray.exceptions import UserCodeException

    try:
        try:
            raise PermissionError(13, "Permission denied", "/srv/cache")
        except PermissionError as inner:
            raise UserCodeException("UDF failed to process a data block.") from inner
    except UserCodeException as e:
        wrapped = _ray_task_error(e)
    _raise_in_stage(monkeypatch, wrapped)
    assert cli.main(["smoke"]) == 1
    assert "/srv/cache: Permission denied" in _one_error_line(capsys.readouterr().err)


def test_a_ray_wrapped_bug_keeps_its_traceback(monkeypatch, capsys):
    _raise_in_stage(monkeypatch, _ray_task_error(ZeroDivisionError("division by zero")))
    assert cli.main(["smoke"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "worker.py" in err  # the remote traceback is shown
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("ptr-ray: internal error: ZeroDivisionError: division by zero")
    )


# ------------------------------------------------------------- real failures, no monkeypatch


def test_malformed_serve_file_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - args: {}\n    deployments: [3]\n")
    assert cli.main(["serve", "-c", str(bad)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "'applications.0.deployments.0'" in line and "got 3" in line


def test_non_utf8_config_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"engine:\n  model: caf\xe9\n")
    assert cli.main(["smoke", "-c", str(bad)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "UTF-8" in line and "line 2" in line


def test_config_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["smoke", "-c", str(tmp_path)]) == 2
    assert "is a folder" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"[" * 100_000 + b"\n", ["part-0.jsonl:1", "nested too deeply"]),
        (b'{"id": "1", "query": "caf\xe9", "answer": "a"}\n', ["part-0.jsonl:1", "UTF-8"]),
    ],
    ids=["deep-json", "latin-1"],
)
def test_bad_dataset_shard_is_one_line_naming_file_and_line(tmp_path, capsys, content, words):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "part-0.jsonl").write_bytes(content)
    rc = cli.main(["train", f"dataset={ds}", f"output_dir={tmp_path / 'o'}"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    for word in words:
        assert word in line


def test_dataset_shard_with_bom_reads(tmp_path):
    from ptr_ray.records import read_records

    ds = tmp_path / "ds"
    ds.mkdir()
    row = {"id": "1", "query": "q?", "thoughts": ["t"], "answer": "a"}
    (ds / "part-0.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    assert [r.query for r in read_records(ds)] == ["q?"]


def test_refine_with_an_empty_query_is_one_line(capsys):
    assert cli.main(["refine", "  "]) == 2
    assert "the query is empty" in _one_error_line(capsys.readouterr().err)
