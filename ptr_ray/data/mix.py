"""SFT mixing: route a fraction of the queries to plain (query, answer) rows (``kind: "sft"``).

PTR fine-tuning on refinement episodes alone can make a model forget how to answer a question
directly; a share of ordinary instruction rows guards against that. The split is a pure
function of the record id, so a resumed run routes every query the same way it did before,
and the ids of SFT and PTR rows never collide (each query is one or the other).
"""

from __future__ import annotations

import hashlib

from ptr_ray.errors import PtrRayValueError


def is_sft(rid: str, fraction: float, seed: int = 0) -> bool:
    """Whether the query with record id ``rid`` becomes an SFT row (deterministic)."""
    if not 0 <= fraction <= 1:
        raise PtrRayValueError(f"sft fraction must be in [0, 1], got {fraction}")
    if fraction == 0:
        return False
    h = hashlib.sha256(f"{seed}:{rid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction
