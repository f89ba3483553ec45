"""`ray job submit --working-dir .` from the repository root uploads what the jobs need.

The upload is built by Ray's own packaging code (the function `ray job submit` calls), which
honours .gitignore and .rayignore. The working dir goes first on the job's PYTHONPATH, so the
uploaded ``ptr_ray/`` shadows the package installed on the nodes: a module left out of the
upload (an unanchored ``build/`` in .gitignore once hid ``ptr_ray/datagen/``) is a module the
job cannot import, even though the nodes have it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> zipfile.ZipFile:
    from ray._private.runtime_env import packaging

    out = tmp_path_factory.mktemp("pkg") / "working_dir.zip"
    packaging._zip_files(str(REPO), [], str(out), include_gitignore=True)
    return zipfile.ZipFile(out)


def _source_files(top: str) -> set[str]:
    return {
        str(p.relative_to(REPO))
        for p in (REPO / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_every_package_module_and_job_is_uploaded(upload):
    names = set(upload.namelist())
    for top in ("ptr_ray", "jobs"):
        missing = sorted(_source_files(top) - names)
        assert not missing, f"left out of the job upload (check .gitignore/.rayignore): {missing}"
    for f in ("pyproject.toml", "constraints.txt"):
        assert f in names


def test_upload_stays_small(upload):
    names = upload.namelist()
    assert not [n for n in names if n.startswith((".git/", ".venv/"))]
    size = sum(i.compress_size for i in upload.infolist())
    assert size < 50 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"
