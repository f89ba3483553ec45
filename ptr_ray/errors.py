"""The package's error base class.

Every error ptr-ray raises on purpose derives from :class:`PtrRayError`, so a caller (the CLI,
a job script, a notebook) can tell "ptr-ray refused this input, here is why" from a bug:
``except PtrRayError`` catches the first and lets the second surface with its traceback.
Errors about bad values also derive from ``ValueError``, so code written against the builtin
keeps working.
"""

from __future__ import annotations


class PtrRayError(Exception):
    """Base of every deliberate ptr-ray error; the message is one line a user can act on."""


class PtrRayValueError(PtrRayError, ValueError):
    """A value ptr-ray rejects (config, input file, request, model source)."""
