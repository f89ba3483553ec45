"""The generation stages as Ray Data callable classes (one actor pool per stage).

Each actor builds its engine once in ``__init__`` (vLLM start-up is the expensive part) and
then serves batches. Every row of a batch is its own coroutine awaiting its own prompts on a
:class:`~ptr_ray.engine.concurrent.ConcurrentEngine` (vLLM's ``AsyncLLM``): all of them are
in flight at once, so vLLM batches them, a row that finishes a round early starts its next
one at once, and a second batch given to the same actor (``pool.max_concurrent_batches``)
fills the slots the first one frees instead of waiting for its slowest row. Each prompt is
tokenized once, off the event loop: the ids of the context check are the ids generated from.
Rows already rejected pass through untouched.

A stage never raises on a single bad row: a prompt that does not fit the context is rejected
with ``prompt_too_long``; an engine error rejects that row with ``generation_error``
(retried by the next run, see the pipeline's resume logic). An engine whose own process died
(vLLM's engine core, killed or out of memory) is replaced by a new one in the same actor, and
the rows it failed run once more from the state they arrived in. A killed actor process is
restarted by Ray and its batch retried (``max_restarts``/``max_task_retries`` of map_batches).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ptr_ray import prompts
from ptr_ray.config import ConfigError, EngineConfig, PromptConfig, SamplingConfig
from ptr_ray.datagen import icl
from ptr_ray.datagen.rows import share_time, to_table
from ptr_ray.engine.base import PromptTooLongError, TokenPrompt

log = logging.getLogger(__name__)


def _reject(row: dict[str, Any], reason: str, detail: str = "") -> None:
    row["reject"], row["reject_detail"] = reason, detail[:500]


def _start_engine(cfg: EngineConfig, role: str) -> tuple[Any, int]:
    """An engine for an actor (``role``: the label of its metrics) and its context length."""
    from ptr_ray.engine.concurrent import make_concurrent_engine

    t0 = time.time()
    engine = make_concurrent_engine(cfg, role=role)
    max_len = int(engine.max_model_len)
    log.info("%s actor: %s ready in %.1fs (pid %d)", role, cfg.model, time.time() - t0, os.getpid())
    return engine, max_len


async def _fitting(
    engine: Any, conversation: Sequence[prompts.Message], room: int
) -> list[int] | None:
    """The conversation's prompt ids when at most ``room`` tokens long, else None."""
    try:
        ids = await engine.encode(conversation)
    except PromptTooLongError:
        return None
    return ids if len(ids) <= room else None


class _EngineStage:
    """Shared set-up: the engines, one coroutine per row, the batch-time bookkeeping.

    ``engines[i]`` (context length ``max_lens[i]``) runs ``engine_cfgs[i]``; most stages have
    one, the weak stage one per weak model. ``engine``/``max_len`` are the first."""

    time_column = ""
    stage = "engine"  # for logs (Ray wraps the class, so its __name__ is not ours)

    def __init__(self, engine: EngineConfig, *more: EngineConfig) -> None:
        self.engine_cfgs = [engine, *more]
        started = [_start_engine(cfg, self.stage) for cfg in self.engine_cfgs]
        self.engines: list[Any] = [e for e, _ in started]
        self.max_lens = [n for _, n in started]

    @property
    def engine(self) -> Any:
        return self.engines[0]

    @engine.setter
    def engine(self, engine: Any) -> None:
        self.engines[0] = engine

    @property
    def max_len(self) -> int:
        return self.max_lens[0]

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        t0 = time.time()
        todo = [i for i, r in enumerate(rows) if r["reject"] is None and self.wants(r)]
        if todo:
            before = list(self.engines)
            failed = await self._attempt(rows, todo)
            if failed and (self._replace_dead_engines() or self.engines != before):
                # the engine died under these rows (not their fault): a new engine gets each
                # of them once more, from the state it arrived in (the batch is unchanged)
                log.warning("%s actor: retrying %d row(s) on a new engine", self.stage, len(failed))
                arrived = batch.to_pylist()
                for i, _ in failed:
                    rows[i] = arrived[i]
                failed = await self._attempt(rows, [i for i, _ in failed])
                self._replace_dead_engines()  # the next batch starts on a live engine
            for i, error in failed:
                if rows[i]["reject"] is None:
                    _reject(rows[i], "generation_error", error)
            share_time([rows[i] for i in todo], self.time_column, time.time() - t0)
        return to_table(rows)

    async def _attempt(self, rows: list[dict[str, Any]], which: list[int]) -> list[tuple[int, str]]:
        """Run the coroutine of each row in ``which``; those whose engine call raised, with the
        error. A failure costs its own row, never the batch or the run."""
        outcomes = await asyncio.gather(*(self.row(rows[i]) for i in which), return_exceptions=True)
        failed = []
        for i, out in zip(which, outcomes, strict=True):
            if isinstance(out, Exception):
                log.error("%s actor failed on a row: %r", self.stage, out)
                failed.append((i, f"{type(out).__name__}: {out}"))
            elif isinstance(out, BaseException):  # cancelled, interrupted: not the row's fault
                raise out
        return failed

    def _replace_dead_engines(self) -> bool:
        """Start a new engine in place of each one whose process died; True if any did.

        Without this, one engine-core crash (an OOM kill, a driver fault) would turn every
        later row of this actor into a ``generation_error``; Ray restarts an actor only when
        the actor process itself dies, and here only the engine's process did."""
        replaced = False
        for i, (engine, cfg) in enumerate(zip(self.engines, self.engine_cfgs, strict=True)):
            if not engine.errored:
                continue
            log.error("%s actor: engine %s died; starting a new one", self.stage, cfg.model)
            try:
                engine.close()
            except Exception:  # a dead engine may fail to shut down cleanly
                log.debug("closing a dead engine raised", exc_info=True)
            self.engines[i], self.max_lens[i] = _start_engine(cfg, self.stage)
            replaced = True
        return replaced

    def wants(self, row: dict[str, Any]) -> bool:
        return True

    async def row(self, row: dict[str, Any]) -> None:
        """Fill in (or reject) one row."""
        raise NotImplementedError

    def __del__(self) -> None:
        for engine in getattr(self, "engines", []):
            engine.close()


class WeakThoughts(_EngineStage):
    """``rounds`` thoughts per PTR row, successive (the default) or independent.

    ``successive``: round t's prompt is :func:`ptr_ray.prompts.round_messages` of the query and
    thoughts 1..t-1 (the refine instruction between them), the exact prompt a PTR model sees
    when it refines at inference time (:mod:`ptr_ray.refine`). ``independent``: every thought
    is sampled from the query alone, as the paper's Eq. 1 and its authors' code do: one
    engine call with ``n`` samples per query and model (so the prompt is processed, and
    counted in ``weak_prompt_tokens``, once: on the first of the row's thoughts it wrote).

    Several weak models (``alternate``: the models after ``engine``) take turns: a row's
    thought i (counting its earlier ones) comes from model ``i % len(models)``. The actor holds
    one engine per model for every round, so each model is loaded once per actor: with a pool
    per round, a model used in rounds 1 and 3 was loaded twice, and one pool per model cannot
    serve successive thoughts, whose round t waits on round t-1 of the other model.
    """

    time_column = "t_weak"
    stage = "weak"

    def __init__(
        self,
        engine: EngineConfig,
        rounds: int,
        sampling: SamplingConfig,
        prompt: PromptConfig,
        thought_mode: str = "successive",
        alternate: Sequence[EngineConfig] = (),
    ) -> None:
        if thought_mode not in ("successive", "independent"):
            raise ConfigError(
                f"weak.thought_mode must be successive or independent, got {thought_mode!r}"
            )
        super().__init__(engine, *alternate)
        self.rounds, self.sampling, self.prompt = rounds, sampling, prompt
        self.one = sampling.model_copy(update={"n": 1})
        self.independent = thought_mode == "independent"
        # Successive: worst case the last round's prompt holds every new thought at max_tokens
        # plus a refine instruction turn (~32 tokens of template) per round. Independent: each
        # thought continues the query alone.
        self.budget = (
            sampling.max_tokens if self.independent else rounds * (sampling.max_tokens + 32)
        )

    def wants(self, row: dict[str, Any]) -> bool:
        return row["kind"] == "ptr"

    def _conversation(self, row: dict[str, Any]) -> Sequence[prompts.Message]:
        if self.independent:
            return prompts.query_messages(row["query"], self.prompt.system_prompt)
        return prompts.round_messages(
            row["query"], row["thoughts"], self.prompt.refine_instruction, self.prompt.system_prompt
        )

    def _turns(self, row: dict[str, Any]) -> list[int]:
        """The engine index of each of the row's new thoughts."""
        start, m = len(row["thoughts"]), len(self.engines)
        return [(start + t) % m for t in range(self.rounds)]

    async def row(self, row: dict[str, Any]) -> None:
        turns = self._turns(row)
        conv = self._conversation(row)
        first: dict[int, list[int]] = {}  # the opening prompt's ids, per model the row meets
        for j in sorted(set(turns)):
            ids = await _fitting(self.engines[j], conv, self.max_lens[j] - self.budget)
            if ids is None:
                which = f" of {self.engine_cfgs[j].model}" if j else ""
                _reject(
                    row,
                    "prompt_too_long",
                    f"prompt + {self.budget} tokens for {self.rounds} thought(s) > context "
                    f"{self.max_lens[j]}{which}",
                )
                return
            first[j] = ids
        if self.independent:
            await self._independent(row, turns, first)
        else:
            for t, j in enumerate(turns):
                ids = first[j] if t == 0 else await self.engines[j].encode(self._conversation(row))
                g = await self.engines[j].complete(TokenPrompt(ids), self.one)
                c = g.completions[0]
                self._add(row, c.text, c.tokens, g.prompt_tokens, g.cached_tokens, c.finish_reason)
        empty = [i for i, t in enumerate(row["thoughts"], 1) if not t]
        if empty:
            _reject(row, "empty_thought", f"thought {empty[0]} is empty")

    async def _independent(
        self, row: dict[str, Any], turns: list[int], first: dict[int, list[int]]
    ) -> None:
        """One call per model with ``n`` samples; the prompt tokens go on the first thought
        each call wrote (the prompt was processed once per call)."""
        models = sorted(first)
        gens = await asyncio.gather(
            *(
                self.engines[j].complete(
                    TokenPrompt(first[j]), self.sampling.model_copy(update={"n": turns.count(j)})
                )
                for j in models
            )
        )
        samples = {
            j: [(c, k == 0, g) for k, c in enumerate(g.completions)]
            for j, g in zip(models, gens, strict=True)
        }
        for j in turns:
            c, is_first, g = samples[j].pop(0)
            self._add(
                row,
                c.text,
                c.tokens,
                g.prompt_tokens if is_first else 0,
                g.cached_tokens if is_first else 0,
                c.finish_reason,
            )

    @staticmethod
    def _add(
        row: dict[str, Any], text: str, tokens: int, prompt_tokens: int, cached: int, finish: str
    ) -> None:
        row["thoughts"] = [*row["thoughts"], text.strip()]
        row["weak_tokens"] = [*row["weak_tokens"], tokens]
        row["weak_prompt_tokens"] = [*row["weak_prompt_tokens"], prompt_tokens]
        row["weak_cached_tokens"] = [*row["weak_cached_tokens"], cached]
        row["weak_finish"] = [*row["weak_finish"], finish]


class StrongAnswers(_EngineStage):
    """The refined answer from query + thoughts, with in-context worked examples.

    SFT rows get a plain answer to the query (or keep the source's reference answer).
    When the examples make a prompt too long, fewer examples are used before giving up.
    """

    time_column = "t_strong"
    stage = "strong"

    def __init__(
        self,
        engine: EngineConfig,
        sampling: SamplingConfig,
        icl_path: str | None,
        num_icl: int,
        prompt: PromptConfig,
    ) -> None:
        super().__init__(engine)
        self.sampling = sampling.model_copy(update={"n": 1})
        self.prompt = prompt
        self.examples = icl.load_examples(icl_path) if num_icl else []
        self.num_icl = min(num_icl, len(self.examples))

    async def _prompt_ids(self, row: dict[str, Any]) -> tuple[list[int] | None, int]:
        """The strong prompt's ids (with as many examples as fit) and the examples used."""
        room = self.max_len - self.sampling.max_tokens
        if row["kind"] == "sft":
            msgs = prompts.query_messages(row["query"], self.prompt.system_prompt)
            return await _fitting(self.engine, msgs, room), 0
        for k in range(self.num_icl, -1, -1):
            msgs = icl.strong_messages(row["query"], row["thoughts"], self.examples, k)
            ids = await _fitting(self.engine, msgs, room)
            if ids is not None:
                return ids, k
        return None, 0

    async def row(self, row: dict[str, Any]) -> None:
        if row["kind"] == "sft" and row["ref_answer"]:
            row["answer"] = row["ref_answer"]
            return
        ids, k = await self._prompt_ids(row)
        if ids is None:
            _reject(
                row,
                "prompt_too_long",
                f"strong prompt + {self.sampling.max_tokens} new tokens > context {self.max_len}",
            )
            return
        row["icl_used"] = k
        g = await self.engine.complete(TokenPrompt(ids), self.sampling)
        c = g.completions[0]
        row["answer"] = c.text.strip()
        row["strong_tokens"], row["strong_finish"] = c.tokens, c.finish_reason
        row["strong_prompt_tokens"], row["strong_cached_tokens"] = g.prompt_tokens, g.cached_tokens
        if not row["answer"]:
            _reject(row, "empty_answer")


def reference_answers(batch: pa.Table) -> pa.Table:
    """``strong.source=references``: every row's answer is its source's reference answer (no
    engine). A row without one is rejected with ``no_reference``: a reference build never
    fills a gap with a generated answer."""
    rows = batch.to_pylist()
    for r in rows:
        if r["reject"] is not None:
            continue
        if r["ref_answer"] and r["ref_answer"].strip():
            r["answer"] = r["ref_answer"]
        else:
            _reject(
                r, "no_reference", f"source {r['source']!r} gave no reference answer for this row"
            )
    return to_table(rows)


class EmbeddingConsistency:
    """Cosine similarity of the answer's sentence embedding with each thought's, averaged.

    A strong answer that has nothing to do with the drafts (the strong model ignored them, or
    answered another question) scores low; a refinement of them scores high.
    """

    def __init__(self, model: str, threshold: float) -> None:
        from ptr_ray.embeddings import SentenceEmbedder

        self.embedder = SentenceEmbedder(model)
        self.threshold = threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        t0 = time.time()
        todo = [r for r in rows if r["reject"] is None and r["kind"] == "ptr"]
        if todo:
            texts: list[str] = []
            spans: list[tuple[int, int]] = []
            for r in todo:
                spans.append((len(texts), len(r["thoughts"])))
                texts.append(r["answer"])
                texts.extend(r["thoughts"])
            vecs = self.embedder.encode(texts)
            for r, (start, n) in zip(todo, spans, strict=True):
                answer = vecs[start]
                sims = vecs[start + 1 : start + 1 + n] @ answer
                r["consistency"] = float(sims.mean())
                if r["consistency"] < self.threshold:
                    _reject(
                        r,
                        "low_consistency",
                        f"consistency {r['consistency']:.3f} < threshold {self.threshold}",
                    )
            share_time(todo, "t_consistency", time.time() - t0)
        return to_table(rows)


JUDGE_PROMPT = (
    "You check training data. Below are a query, draft answers and a final answer. Rate from 1 "
    "to 10 how consistent the final answer is with the drafts: it should address the same "
    "query and build on, or correct, their reasoning. Reply with the number only.\n\n"
    "Query:\n{query}\n\n{drafts}\n\nFinal answer:\n{answer}"
)
_NUMBER = re.compile(r"\b(10|[1-9])\b")


class JudgeConsistency(_EngineStage):
    """An LLM judge's 1-10 consistency rating, scaled to [0.1, 1]."""

    time_column = "t_consistency"
    stage = "judge"

    def __init__(self, engine: EngineConfig, threshold: float, max_tokens: int) -> None:
        super().__init__(engine)
        self.threshold = threshold
        self.sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens)

    def wants(self, row: dict[str, Any]) -> bool:
        return row["kind"] == "ptr"

    async def row(self, row: dict[str, Any]) -> None:
        drafts = "\n\n".join(f"Draft {i}:\n{t}" for i, t in enumerate(row["thoughts"], 1))
        content = JUDGE_PROMPT.format(query=row["query"], drafts=drafts, answer=row["answer"])
        room = self.max_len - self.sampling.max_tokens
        ids = await _fitting(self.engine, [{"role": "user", "content": content}], room)
        if ids is None:
            _reject(
                row,
                "prompt_too_long",
                f"judge prompt + {self.sampling.max_tokens} tokens > context {self.max_len}",
            )
            return
        g = await self.engine.complete(TokenPrompt(ids), self.sampling)
        c = g.completions[0]
        row["judge_tokens"] = c.tokens
        m = _NUMBER.search(c.text)
        if not m:
            _reject(row, "judge_unparsed", f"judge said {c.text[:80]!r}")
            return
        row["consistency"] = int(m.group(1)) / 10
        if row["consistency"] < self.threshold:
            _reject(
                row,
                "low_consistency",
                f"judge score {row['consistency']:.1f} < threshold {self.threshold}",
            )
