"""Episodes -> token ids, thought mask, turn boundaries, thought dropout and packing.

Every episode is rendered by :func:`ptr_ray.prompts.turn_spans`, the same function serving and
evaluation use, so the model is trained on exactly the token prefixes it will see at round k.

* **Thought mask**: labels are ``-100`` everywhere but the final answer's span.
* **Turn boundaries**: the [start, end) span of every assistant turn, which the consistency
  and confidence terms of the PTR loss average over.
* **Thought dropout**: each thought is dropped with probability p (at least one kept), so the
  model learns to refine from histories of varying length. Decisions are seeded by
  (seed, epoch, record) so a resumed run sees the same data.
* **Truncation**: an episode longer than ``max_length`` loses its oldest thoughts, never the
  answer; one that still does not fit is skipped. Both are counted.
* **Packing**: episodes are packed into sequences of at most ``max_length`` tokens
  (:mod:`ptr_ray.train.packing`, data plan version :data:`PLAN_VERSION`); position ids restart
  at 0 for every episode, which transformers turns into a block-diagonal causal mask (no
  attention across episode boundaries).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ptr_ray import prompts
from ptr_ray.errors import PtrRayValueError
from ptr_ray.records import Record
from ptr_ray.train.packing import PLAN_VERSION, pack, plan_efficiency, plan_groups

log = logging.getLogger(__name__)

__all__ = [
    "IGNORE",
    "PLAN_VERSION",
    "EncodeError",
    "EncodeStats",
    "Encoder",
    "Episode",
    "Plan",
    "check_dataset",
    "collate",
    "drop_thoughts",
    "episode_turns",
    "pack",
    "pad_plan",
    "plan_efficiency",
    "plan_epoch",
]

IGNORE = -100


class EncodeError(PtrRayValueError):
    """Records that cannot become training episodes (mode, lengths, too little data)."""


@dataclass
class Episode:
    """One encoded episode: ids and the [start, end) span of each assistant turn (last = answer)."""

    input_ids: list[int]
    spans: list[tuple[int, int]]
    record: int  # index of the record it came from

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def answer_span(self) -> tuple[int, int]:
        return self.spans[-1]


@dataclass
class EncodeStats:
    """Counts of everything encoding did to the data; reported, never silent."""

    records: int = 0
    episodes: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    skipped_sft: int = 0  # kind=sft rows with include_sft=False
    skipped_too_long: int = 0  # query + answer alone exceed max_length
    truncated_episodes: int = 0  # lost thoughts to fit max_length
    truncated_thoughts: int = 0
    dropped_thoughts: int = 0  # thought dropout

    def add(self, other: EncodeStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def episode_turns(record: Record, mode: str) -> tuple[list[str], list[str]]:
    """(thoughts, [answer]) for a mode: ``ift`` trains on query -> strong answer only."""
    if mode == "ift":
        return [], [record.answer]
    return list(record.thoughts), [record.answer]


def drop_thoughts(thoughts: Sequence[str], p: float, rng: random.Random) -> tuple[list[str], int]:
    """Drop each thought with probability ``p``, keeping at least one; returns (kept, dropped)."""
    if p <= 0 or not thoughts:
        return list(thoughts), 0
    keep = [t for t in thoughts if rng.random() >= p]
    if not keep:
        keep = [thoughts[rng.randrange(len(thoughts))]]
    return keep, len(thoughts) - len(keep)


class Encoder:
    """Renders records into :class:`Episode` s with one tokenizer and one prompt configuration."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        mode: str = "ptr",
        refine_instruction: str = prompts.DEFAULT_REFINE_INSTRUCTION,
        system_prompt: str | None = None,
        include_sft: bool = True,
        thought_dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        if mode not in ("ptr", "ift"):
            raise EncodeError(f"mode must be 'ptr' or 'ift', got {mode!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mode = mode
        self.refine_instruction = refine_instruction
        self.system_prompt = system_prompt
        self.include_sft = include_sft
        self.thought_dropout = thought_dropout
        self.seed = seed
        self._cache: dict[tuple[int, tuple[str, ...]], tuple[list[int], list[tuple[int, int]]]] = {}

    def spans(
        self, record: Record, turns: Sequence[str], index: int = -1
    ) -> tuple[list[int], list[tuple[int, int]]]:
        key = (index, tuple(turns))
        if index >= 0 and key in self._cache:
            return self._cache[key]
        out = prompts.turn_spans(
            self.tokenizer, record.query, list(turns), self.refine_instruction, self.system_prompt
        )
        if index >= 0:
            self._cache[key] = out
        return out

    def encode(
        self, record: Record, index: int, epoch: int = 0
    ) -> tuple[Episode | None, EncodeStats]:
        """One record -> one episode (or None when skipped), with what happened to it."""
        st = EncodeStats(records=1)
        if record.kind == "sft" and not self.include_sft and self.mode == "ptr":
            st.skipped_sft = 1
            return None, st
        thoughts, answer = episode_turns(record, self.mode)
        if self.thought_dropout > 0 and thoughts:
            rng = random.Random(f"{self.seed}:{epoch}:{index}")
            thoughts, st.dropped_thoughts = drop_thoughts(thoughts, self.thought_dropout, rng)
        ids, spans = self.spans(record, thoughts + answer, index)
        cut = 0
        while len(ids) > self.max_length and thoughts:
            thoughts = thoughts[1:]  # oldest thought first; the answer is never cut
            cut += 1
            ids, spans = self.spans(record, thoughts + answer, index)
        if len(ids) > self.max_length:
            st.skipped_too_long = 1
            return None, st
        if cut:
            st.truncated_episodes, st.truncated_thoughts = 1, cut
        st.episodes, st.tokens = 1, len(ids)
        st.answer_tokens = spans[-1][1] - spans[-1][0]
        return Episode(ids, spans, index), st

    def encode_many(
        self, records: Sequence[Record], indices: Sequence[int], epoch: int = 0
    ) -> tuple[list[Episode], EncodeStats]:
        total = EncodeStats()
        out: list[Episode] = []
        for i in indices:
            ep, st = self.encode(records[i], i, epoch)
            total.add(st)
            if ep is not None:
                out.append(ep)
        return out, total


def check_dataset(tokenizer: Any, records: Sequence[Record], cfg: Any) -> dict[str, Any]:
    """Checks before any worker starts: a clear :class:`EncodeError` for data training cannot use.

    ``cfg`` is a :class:`ptr_ray.config.TrainConfig`. Verifies the chat template renders
    prefix-stable episodes, that some record is usable in the mode, and that ``max_length``
    holds at least the shortest answer.
    """
    usable = [
        r for r in records if not (cfg.mode == "ptr" and r.kind == "sft" and not cfg.include_sft)
    ]
    if not usable:
        raise EncodeError(
            f"dataset {cfg.dataset}: no usable records for mode={cfg.mode} "
            f"(all {len(records)} are kind=sft and include_sft=false)"
        )
    if cfg.mode == "ptr" and not any(r.thoughts for r in usable):
        log.warning("dataset %s has no thoughts at all: PTR reduces to plain SFT", cfg.dataset)
    answer_lens = [len(tokenizer(r.answer, add_special_tokens=False)["input_ids"]) for r in usable]
    shortest = min(range(len(usable)), key=answer_lens.__getitem__)
    enc = Encoder(
        tokenizer, 1 << 30, "ift", cfg.prompt.refine_instruction, cfg.prompt.system_prompt
    )
    ids, spans = enc.spans(usable[shortest], [usable[shortest].answer])  # also checks the template
    need = spans[-1][1] - spans[-1][0]
    if cfg.max_length < need:
        raise EncodeError(
            f"max_length={cfg.max_length} is shorter than the shortest answer in {cfg.dataset} "
            f"({need} tokens with its end-of-turn, record {usable[shortest].id})"
        )
    return {"records": len(records), "usable": len(usable), "shortest_answer_tokens": need}


# ------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """One worker's micro-batches for one epoch: lists of packed sequences (episode groups)."""

    episodes: list[Episode]
    micro_batches: list[list[list[int]]] = field(default_factory=list)
    repeated: int = 0  # micro-batches repeated so that all workers take the same number of steps


def plan_epoch(
    episodes: list[Episode],
    max_length: int,
    micro_batch_size: int,
    packing: bool,
    seed: int,
    epoch: int,
    version: int = PLAN_VERSION,
) -> Plan:
    """Pack (or not) and group into micro-batches, in a seeded random order.

    ``version`` is the data plan version (:data:`ptr_ray.train.packing.PLAN_VERSIONS`); a run
    records it, and a resume under another version is refused (``train/resume.py``).
    """
    rng = random.Random(f"pack:{seed}:{epoch}")
    lengths = [len(e) for e in episodes]
    mbs = plan_groups(lengths, max_length, micro_batch_size, packing, rng, version)
    return Plan(episodes, mbs)


def pad_plan(plan: Plan, n_micro: int) -> Plan:
    """Repeat a worker's first micro-batches so it has exactly ``n_micro`` (DistributedSampler
    style), because every data-parallel rank must take the same number of steps."""
    if not plan.micro_batches:
        raise EncodeError("a worker got no data: the dataset has fewer episodes than workers")
    k = 0
    while len(plan.micro_batches) < n_micro:
        plan.micro_batches.append(plan.micro_batches[k % len(plan.micro_batches)])
        plan.repeated += 1
        k += 1
    return plan


def collate(
    episodes: Sequence[Episode], groups: Sequence[Sequence[int]], pad_id: int
) -> dict[str, Any]:
    """Tensors for one micro-batch: each row is one packed sequence of whole episodes.

    Returns input_ids, position_ids (restart at 0 per episode; padding is a segment of its
    own), labels (-100 but the final answers), ``n_tokens`` (non-pad) and the turn table
    ``turns`` [S, 6] = (row, start, end, episode, turn number 1..n, n turns).
    """
    import torch

    rows = [[episodes[i] for i in g] for g in groups]
    width = max(sum(len(e) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), IGNORE, dtype=torch.long)
    turns: list[tuple[int, int, int, int, int, int]] = []
    n_ep = 0
    n_tok = 0
    for r, row in enumerate(rows):
        off = 0
        for ep in row:
            n = len(ep)
            ids[r, off : off + n] = torch.tensor(ep.input_ids, dtype=torch.long)
            pos[r, off : off + n] = torch.arange(n)
            s, e = ep.answer_span
            labels[r, off + s : off + e] = ids[r, off + s : off + e]
            for t, (a, b) in enumerate(ep.spans, 1):
                turns.append((r, off + a, off + b, n_ep, t, len(ep.spans)))
            n_ep += 1
            off += n
        n_tok += off
        if off < width:
            pos[r, off:] = torch.arange(width - off)
    return {
        "input_ids": ids,
        "position_ids": pos,
        "labels": labels,
        "turns": torch.tensor(turns, dtype=torch.long).reshape(-1, 6),
        "n_tokens": n_tok,
        "n_episodes": n_ep,
    }
