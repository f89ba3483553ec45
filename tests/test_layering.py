"""The layering rule of docs/design.md, checked on the source: stages never import each other.

``datagen``, ``train``, ``serve`` and ``eval`` share the core modules (prompts, records, refine,
engine, config, data, ...); only the composers (``pipeline.py``, ``experiment/``, ``cli.py``)
combine stages. A stage importing another is how train/serve skew starts, so it fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ptr_ray"
STAGES = ("datagen", "train", "serve", "eval")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports (at any depth: lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage):
    others = {f"ptr_ray.{s}" for s in STAGES if s != stage} | {
        "ptr_ray.pipeline",
        "ptr_ray.experiment",
        "ptr_ray.cli",
    }
    offenders = sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in (PACKAGE / stage).rglob("*.py")
        for name in imported_modules(path)
        if any(name == o or name.startswith(o + ".") for o in others)
    )
    assert not offenders, "\n".join(offenders)


# The one allowed edge: ServeConfig reads a Ray Serve config file through the parser that lives
# with serving (serve/config_file.py: plain dicts, no FastAPI/Ray import), lazily.
ALLOWED = {("ptr_ray/config/serve.py", "ptr_ray.serve.config_file")}


def test_core_modules_import_no_stage():
    core = [p for p in PACKAGE.glob("*.py") if p.stem not in {"pipeline", "cli", "smoke"}]
    core += list((PACKAGE / "config").rglob("*.py")) + list((PACKAGE / "engine").rglob("*.py"))
    core += list((PACKAGE / "data").rglob("*.py"))
    stages = {f"ptr_ray.{s}" for s in (*STAGES, "experiment")}
    offenders = sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in core
        for name in imported_modules(path)
        if any(name == s or name.startswith(s + ".") for s in stages)
        and (str(path.relative_to(PACKAGE.parent)), name) not in ALLOWED
    )
    assert not offenders, "\n".join(offenders)
