"""THE N-round refinement loop: serving, evaluation and the prompt baseline all call this.

Round 1 answers the plain query; round k sends the growing conversation (the query, the
model's own earlier answers, the refine instruction), so an engine with prefix caching
serves the earlier rounds' tokens from cache. ``stop_when_stable`` ends a request early once
an answer repeats the previous one, which saves the remaining rounds' compute.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

from ptr_ray import prompts
from ptr_ray.config import PromptConfig, SamplingConfig
from ptr_ray.engine import Engine, Generation


@dataclass
class RoundResult:
    round: int
    answer: str
    tokens: int
    finish_reason: str
    latency_s: float
    prompt_tokens: int
    cached_tokens: int

    @classmethod
    def from_generation(cls, k: int, gen: Generation) -> RoundResult:
        c = gen.completions[0]
        return cls(
            k,
            c.text,
            c.tokens,
            c.finish_reason,
            gen.latency_s,
            gen.prompt_tokens,
            gen.cached_tokens,
        )


@dataclass
class RefineResult:
    rounds: list[RoundResult] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def final(self) -> str:
        return self.rounds[-1].answer if self.rounds else ""

    @property
    def answers(self) -> list[str]:
        return [r.answer for r in self.rounds]

    def to_dict(self) -> dict:
        return {
            "rounds": [asdict(r) for r in self.rounds],
            "final": self.final,
            "stopped_early": self.stopped_early,
        }


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def is_stable(previous: str, current: str) -> bool:
    """An answer that repeats the previous one (up to whitespace and case) is stable."""
    return _norm(previous) == _norm(current)


def round_prompt(query: prompts.Query, previous: Sequence[str], prompt_cfg: PromptConfig):
    return prompts.round_messages(
        query, previous, prompt_cfg.refine_instruction, prompt_cfg.system_prompt
    )


def refine_batch(
    engine: Engine,
    queries: Sequence[prompts.Query],
    rounds: int,
    sampling: SamplingConfig,
    prompt_cfg: PromptConfig | None = None,
    stop_when_stable: bool = False,
    on_round: Callable[[int, int], None] | None = None,
    history: Sequence[Sequence[str]] | None = None,
) -> list[RefineResult]:
    """Refine many queries together: each round is one batched engine call over the queries
    still active, which is what evaluation and dataset construction want for throughput.

    ``history`` (one list of earlier answers per query) continues episodes that another
    engine started: the returned rounds are the new ones only, numbered after the history.
    Dataset construction uses it to alternate weak models between thoughts."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    prompt_cfg = prompt_cfg or PromptConfig()
    one = sampling.model_copy(update={"n": 1})
    results = [RefineResult() for _ in queries]
    if history is not None and len(history) != len(queries):
        raise ValueError(f"history has {len(history)} entries for {len(queries)} queries")
    past = [list(h) for h in history] if history is not None else [[] for _ in queries]
    active = list(range(len(queries)))
    for k in range(1, rounds + 1):
        if not active:
            break
        convs = [round_prompt(queries[i], past[i] + results[i].answers, prompt_cfg) for i in active]
        gens = engine.generate(convs, one)
        still = []
        for i, gen in zip(active, gens, strict=True):
            res = results[i]
            rr = RoundResult.from_generation(len(past[i]) + k, gen)
            prev = res.rounds[-1].answer if res.rounds else (past[i][-1] if past[i] else None)
            res.rounds.append(rr)
            if stop_when_stable and prev is not None and is_stable(prev, rr.answer):
                res.stopped_early = k < rounds
            else:
                still.append(i)
        active = still
        if on_round:
            on_round(k, len(gens))
    return results


async def arefine(
    generate: Callable[[list[prompts.Message]], Awaitable[Generation]],
    query: prompts.Query,
    rounds: int,
    prompt_cfg: PromptConfig | None = None,
    stop_when_stable: bool = False,
) -> AsyncIterator[RoundResult]:
    """Refine one query with an async engine call per round, yielding each round as it ends
    (what a streaming server sends as one event per round)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    prompt_cfg = prompt_cfg or PromptConfig()
    answers: list[str] = []
    for k in range(1, rounds + 1):
        gen = await generate(round_prompt(query, answers, prompt_cfg))
        rr = RoundResult.from_generation(k, gen)
        yield rr
        if stop_when_stable and answers and is_stable(answers[-1], rr.answer):
            return
        answers.append(rr.answer)
