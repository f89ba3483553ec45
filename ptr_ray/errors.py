"""The package's error base classes.

Every error ptr-ray raises on purpose derives from :class:`PtrRayError`, so a caller (the CLI,
a job script, a notebook) can tell "ptr-ray refused this input, here is why" from a bug:
``except PtrRayError`` catches the first and lets the second surface with its traceback.
The message is one line that names the file, key or limit and says what to do.

Which base to pick decides the CLI's exit status (``ptr_ray/cli.py``):

- :class:`PtrRayValueError` (also a ``ValueError``): the input is wrong (a config key, an
  input file, a request, a model source). Exit status 2.
- :class:`PtrRayRuntimeError` (also a ``RuntimeError``), or :class:`PtrRayError` itself: the
  input was fine but the run failed (training gave up, a sandbox died). Exit status 1.
"""

from __future__ import annotations


class PtrRayError(Exception):
    """Base of every deliberate ptr-ray error; the message is one line a user can act on."""


class PtrRayValueError(PtrRayError, ValueError):
    """A value ptr-ray rejects (config, input file, request, model source)."""


class PtrRayRuntimeError(PtrRayError, RuntimeError):
    """A run that failed for a reason outside the input (workers gave up, a sandbox died)."""
