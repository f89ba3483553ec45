"""The Makefile's install recipe: no hard-coded package index, and CPU-only fixes stay CPU-only.

``make -n`` prints the commands of a target without running them; pointing ``VENV`` at an
empty temporary folder makes the setup recipe print in full. Cheap: no pip, no network.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ptr_ray.testing import make_dry_run

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"https?://|--(extra-)?index-url\b")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(tmp_path: Path, *args: str) -> str:
    return make_dry_run(ROOT, tmp_path / "venv", *args)


def test_makefile_names_no_package_index() -> None:
    text = (ROOT / "Makefile").read_text()
    assert not URL.search(text), "pip's own configuration picks indexes; the Makefile names none"


def test_gpu_setup_keeps_torchvision_and_uses_no_index(tmp_path: Path) -> None:
    cmds = dry_run(tmp_path, "setup", "EXTRAS=gpu,dev")
    assert "-e '.[gpu,dev]'" in cmds
    assert "torch==2.13.0" in cmds
    assert not URL.search(cmds)
    # vllm 0.32.0 (CUDA) needs torchvision and torchaudio: setup must not remove them.
    assert "uninstall" not in cmds
    assert "cpu-lock.txt" not in cmds  # the CPU lock pins CPU-only wheels


def test_cpu_setup_removes_torchvision_and_uses_the_lock(tmp_path: Path) -> None:
    cmds = dry_run(tmp_path, "setup")
    assert "-e '.[cpu,dev]'" in cmds
    assert "-c constraints.txt -c requirements/cpu-lock.txt" in cmds
    assert "pip uninstall -q -y torchvision torchaudio torchcodec" in cmds
    assert not URL.search(cmds)


def test_make_test_lints_before_pytest(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "test").splitlines()
    ruff = next(i for i, line in enumerate(lines) if line.endswith("ruff check"))
    mypy = next(i for i, line in enumerate(lines) if line.endswith("-m mypy"))
    pytest_ = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert ruff < mypy < pytest_
