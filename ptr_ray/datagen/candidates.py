"""Stages 1-3 in the driver: read, clean, dedupe, decontaminate, route to PTR or SFT.

These are cheap per row but *global* (a duplicate is a duplicate of any earlier row), so they
run as one streaming pass in the driver; the expensive generation stages then fan out over
Ray Data actor pools. Every row read ends up in exactly one bucket: a candidate, a skip
(already written by an earlier run), or a counted rejection with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tqdm import tqdm

from ptr_ray.config import BuildConfig
from ptr_ray.data.clean import Cleaner
from ptr_ray.data.decontaminate import NgramDecontaminator
from ptr_ray.data.dedupe import ExactDeduper, NearDeduper
from ptr_ray.data.mix import is_sft
from ptr_ray.data.queries import read_source
from ptr_ray.datagen.output import Existing, RejectLog
from ptr_ray.records import record_id

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    id: str
    query: str
    source: str
    kind: str  # "ptr" | "sft"
    ref_answer: str | None = None


@dataclass
class Prepared:
    candidates: list[Candidate] = field(default_factory=list)
    rows_in: int = 0
    skipped_existing: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    decontamination_ngrams: int = 0


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def build_decontaminator(cfg: BuildConfig) -> NgramDecontaminator | None:
    if not cfg.decontaminate.enabled:
        return None
    from ptr_ray.data.benchmarks import decontamination_texts

    texts = decontamination_texts(cfg.decontaminate.tasks)
    return NgramDecontaminator(
        texts, n=cfg.decontaminate.ngram, min_words=cfg.decontaminate.min_words
    )


def prepare_candidates(
    cfg: BuildConfig,
    count_tokens: Callable[[str], int],
    existing: Existing,
    rejects: RejectLog,
    decontaminator: NgramDecontaminator | None = None,
) -> Prepared:
    """One pass over every configured source; see the module docstring."""
    out = Prepared()
    timer = _Timer()
    if decontaminator is None and cfg.decontaminate.enabled:
        decontaminator = timer.run("decontaminate_index", build_decontaminator, cfg)
    if decontaminator is not None:
        out.decontamination_ngrams = len(decontaminator)
    cleaner = Cleaner(
        count_tokens,
        cfg.clean.min_tokens,
        cfg.clean.max_tokens,
        cfg.clean.strip_urls,
        cfg.clean.strip_images,
    )
    done = existing.done_ids
    exact = ExactDeduper()
    near = None
    if cfg.dedupe.near:
        near = NearDeduper(
            cfg.dedupe.threshold, cfg.dedupe.num_perm, cfg.dedupe.shingle_size, cfg.seed + 1
        )
        for q in existing.queries:  # a resumed run never adds a near-copy of a written row
            near.check_and_add(q)

    bar = tqdm(desc="read+clean+dedupe", unit=" rows", mininterval=2.0)
    for src_cfg in cfg.sources:
        rows = read_source(src_cfg, cfg.seed)
        while True:
            row = timer.run("read", next, rows, None)
            if row is None:
                break
            out.rows_in += 1
            bar.update(1)
            if not row.ok:
                rejects.add(
                    "read",
                    row.reason or "unknown",
                    source=row.source,
                    where=row.where,
                    detail=row.detail,
                    raw=row.raw,
                )
                continue
            res = timer.run("clean", cleaner, row.query)
            rid = record_id(res.text) if res.text else None
            if res.reason:
                rejects.add(
                    "clean",
                    res.reason,
                    source=row.source,
                    where=row.where,
                    id=rid,
                    query=res.text or None,
                    detail=f"{res.tokens} tokens" if res.tokens else "",
                )
                continue
            assert rid is not None
            if rid in done:
                out.skipped_existing += 1
                continue

            # Every later drop of this row names the same row.
            reject = partial(
                rejects.add, source=row.source, where=row.where, id=rid, query=res.text
            )
            if not exact.add(res.text):
                reject("dedupe", "duplicate")
                continue
            if near is not None and timer.run("dedupe", near.check_and_add, res.text) is not None:
                reject("dedupe", "near_duplicate")
                continue
            why = (
                timer.run("decontaminate", decontaminator.reason, res.text)
                if decontaminator
                else None
            )
            if why is not None:
                reject(
                    "decontaminate",
                    "contaminated",
                    detail="is an eval question"
                    if why == "exact"
                    else f"shares a {cfg.decontaminate.ngram}-gram with an eval set",
                )
                continue
            kind = "sft" if is_sft(rid, cfg.sft.fraction, cfg.seed) else "ptr"
            out.candidates.append(Candidate(rid, res.text, row.source, kind, row.answer))
    bar.close()
    rejects.flush()
    out.seconds = timer.seconds
    log.info(
        "prepared %d queries from %d rows (%d already written, %d dropped)",
        len(out.candidates),
        out.rows_in,
        out.skipped_existing,
        rejects.total,
    )
    return out
