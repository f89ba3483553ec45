"""The generation stages as Ray Data callable classes (one actor pool per class and model).

Each actor builds its engine once in ``__init__`` (vLLM start-up is the expensive part) and
then serves batches: a batch is one batched engine call per round, which is where vLLM's
continuous batching and prefix caching pay off. Rows already rejected pass through untouched.

A stage never raises on a single bad row: a prompt that does not fit the context is rejected
with ``prompt_too_long``; an engine error rejects the batch's rows with ``generation_error``
(retried by the next run, see the pipeline's resume logic). A killed actor process is
restarted by Ray and its batch retried (``max_restarts``/``max_task_retries`` of map_batches).
"""

from __future__ import annotations

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
from ptr_ray.refine import refine_batch

log = logging.getLogger(__name__)


def _prompt_len(tokenizer: Any, messages: list[prompts.Message]) -> int:
    return len(prompts.encode(tokenizer, messages, add_generation_prompt=True))


def _reject(row: dict[str, Any], reason: str, detail: str = "") -> None:
    row["reject"], row["reject_detail"] = reason, detail[:500]


def _start_engine(cfg: EngineConfig, role: str) -> tuple[Any, int]:
    """An engine for an actor (``role``: the label of its metrics) and its context length."""
    from ptr_ray.engine import make_engine

    t0 = time.time()
    engine = make_engine(cfg, role=role)
    max_len = int(getattr(engine, "max_model_len", cfg.max_model_len or 2048))
    log.info("%s actor: %s ready in %.1fs (pid %d)", role, cfg.model, time.time() - t0, os.getpid())
    return engine, max_len


class _EngineStage:
    """Shared set-up: the engine and the batch-time bookkeeping."""

    time_column = ""
    stage = "engine"  # for logs (Ray wraps the class, so its __name__ is not ours)

    def __init__(self, engine: EngineConfig) -> None:
        self.engine_cfg = engine
        self.engine, self.max_len = _start_engine(engine, self.stage)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        t0 = time.time()
        todo = [r for r in rows if r["reject"] is None and self.wants(r)]
        if todo:
            try:
                self.process(todo)
            except Exception as e:  # an engine failure costs this batch, not the run
                log.exception("%s actor failed on a batch of %d", self.stage, len(todo))
                for r in todo:
                    if r["reject"] is None:
                        _reject(r, "generation_error", f"{type(e).__name__}: {e}")
            share_time(todo, self.time_column, time.time() - t0)
        return to_table(rows)

    def wants(self, row: dict[str, Any]) -> bool:
        return True

    def process(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


class WeakThoughts(_EngineStage):
    """``rounds`` thoughts per PTR row, successive (the default) or independent.

    ``successive``: round t's prompt is :func:`ptr_ray.prompts.round_messages` of the query and
    thoughts 1..t-1 (the refine instruction between them) through
    :func:`ptr_ray.refine.refine_batch`, the exact prompt a PTR model sees when it refines at
    inference time. ``independent``: every thought is sampled from the query alone, as the
    paper's Eq. 1 and its authors' code do: one engine call with ``n = rounds`` samples per
    query (so the prompt is processed, and counted in ``weak_prompt_tokens``, once: on the
    first of the row's new thoughts).

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
        super().__init__(engine)
        self.rounds, self.sampling, self.prompt = rounds, sampling, prompt
        self.independent = thought_mode == "independent"
        self.alternate = list(alternate)
        started = [_start_engine(e, self.stage) for e in self.alternate]
        self.other_engines = [e for e, _ in started]
        self.other_max_lens = [n for _, n in started]

    @property
    def engines(self) -> list[Any]:
        """The engine of each weak model, in turn order (``self.engine`` first)."""
        return [self.engine, *self.other_engines]

    @property
    def max_lens(self) -> list[int]:
        return [self.max_len, *self.other_max_lens]

    def __del__(self) -> None:
        for engine in getattr(self, "other_engines", []):
            engine.close()
        super().__del__()

    def wants(self, row: dict[str, Any]) -> bool:
        return row["kind"] == "ptr"

    def _conversation(self, row: dict[str, Any]) -> list[prompts.Message]:
        if self.independent:
            return prompts.query_messages(row["query"], self.prompt.system_prompt)
        return prompts.round_messages(
            row["query"], row["thoughts"], self.prompt.refine_instruction, self.prompt.system_prompt
        )

    def _turns(self, row: dict[str, Any]) -> list[int]:
        """The engine index of each of the row's new thoughts."""
        start, m = len(row["thoughts"]), len(self.engines)
        return [(start + t) % m for t in range(self.rounds)]

    def process(self, rows: list[dict[str, Any]]) -> None:
        fits = []
        # Successive: worst case the last round's prompt holds every new thought at max_tokens
        # plus a refine instruction turn (~32 tokens of template) per round. Independent: each
        # thought continues the query alone.
        budget = (
            self.sampling.max_tokens
            if self.independent
            else self.rounds * (self.sampling.max_tokens + 32)
        )
        engines, max_lens = self.engines, self.max_lens
        for r in rows:
            conv = self._conversation(r)
            for j in sorted(set(self._turns(r))):  # every model the row will meet
                n = _prompt_len(engines[j].tokenizer, conv)
                if n + budget > max_lens[j]:
                    which = f" of {self.alternate[j - 1].model}" if j else ""
                    _reject(
                        r,
                        "prompt_too_long",
                        f"{n} prompt tokens + {budget} for {self.rounds} thought(s) > context "
                        f"{max_lens[j]}{which}",
                    )
                    break
            else:
                fits.append(r)
        if not fits:
            return
        if self.independent:
            self._independent(fits)
        elif len(engines) == 1:
            self._successive(self.engine, fits, self.rounds)
        else:  # models take turns: one batched call per round and model
            m = len(engines)
            for _ in range(self.rounds):
                turn: dict[int, list[dict[str, Any]]] = {}
                for r in fits:  # whose turn, fixed before this round adds any thought
                    turn.setdefault(len(r["thoughts"]) % m, []).append(r)
                for j, group in sorted(turn.items()):
                    self._successive(engines[j], group, 1)
        for r in fits:
            empty = [i for i, t in enumerate(r["thoughts"], 1) if not t]
            if empty:
                _reject(r, "empty_thought", f"thought {empty[0]} is empty")

    def _successive(self, engine: Any, rows: list[dict[str, Any]], rounds: int) -> None:
        """``rounds`` more refinement rounds of ``rows`` on ``engine``, one batched call each."""
        results = refine_batch(
            engine,
            [r["query"] for r in rows],
            rounds,
            self.sampling,
            self.prompt,
            history=[r["thoughts"] for r in rows],
        )
        for r, res in zip(rows, results, strict=True):
            for rr in res.rounds:
                self._add(
                    r, rr.answer, rr.tokens, rr.prompt_tokens, rr.cached_tokens, rr.finish_reason
                )

    def _independent(self, fits: list[dict[str, Any]]) -> None:
        """One call per model and sample count, ``n`` samples each; the prompt tokens go on the
        first thought each call wrote for a row (the prompt was processed once per call)."""
        turns = [self._turns(r) for r in fits]
        samples: list[dict[int, list[tuple[Any, bool, Any]]]] = [{} for _ in fits]
        for j, engine in enumerate(self.engines):
            by_n: dict[int, list[int]] = {}
            for i, plan in enumerate(turns):
                if plan.count(j):
                    by_n.setdefault(plan.count(j), []).append(i)
            for n, idx in by_n.items():
                gens = engine.generate(
                    [self._conversation(fits[i]) for i in idx],
                    self.sampling.model_copy(update={"n": n}),
                )
                for i, g in zip(idx, gens, strict=True):
                    samples[i][j] = [(c, k == 0, g) for k, c in enumerate(g.completions)]
        for r, plan, got in zip(fits, turns, samples, strict=True):
            for j in plan:
                c, first, g = got[j].pop(0)
                self._add(
                    r,
                    c.text,
                    c.tokens,
                    g.prompt_tokens if first else 0,
                    g.cached_tokens if first else 0,
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
        self.sampling, self.prompt = sampling, prompt
        self.examples = icl.load_examples(icl_path) if num_icl else []
        self.num_icl = min(num_icl, len(self.examples))

    def _messages(self, row: dict[str, Any]) -> tuple[list[prompts.Message] | None, int]:
        room = self.max_len - self.sampling.max_tokens
        if row["kind"] == "sft":
            msgs = prompts.query_messages(row["query"], self.prompt.system_prompt)
            return (msgs, 0) if _prompt_len(self.engine.tokenizer, msgs) <= room else (None, 0)
        for k in range(self.num_icl, -1, -1):
            msgs = icl.strong_messages(row["query"], row["thoughts"], self.examples, k)
            if _prompt_len(self.engine.tokenizer, msgs) <= room:
                return msgs, k
        return None, 0

    def process(self, rows: list[dict[str, Any]]) -> None:
        convs, targets = [], []
        for r in rows:
            if r["kind"] == "sft" and r["ref_answer"]:
                r["answer"] = r["ref_answer"]
                continue
            msgs, k = self._messages(r)
            if msgs is None:
                _reject(
                    r,
                    "prompt_too_long",
                    f"strong prompt + {self.sampling.max_tokens} new tokens > context {self.max_len}",
                )
                continue
            r["icl_used"] = k
            convs.append(msgs)
            targets.append(r)
        if not convs:
            return
        gens = self.engine.generate(convs, self.sampling.model_copy(update={"n": 1}))
        for r, g in zip(targets, gens, strict=True):
            c = g.completions[0]
            r["answer"] = c.text.strip()
            r["strong_tokens"], r["strong_finish"] = c.tokens, c.finish_reason
            r["strong_prompt_tokens"], r["strong_cached_tokens"] = g.prompt_tokens, g.cached_tokens
            if not r["answer"]:
                _reject(r, "empty_answer")


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

    def process(self, rows: list[dict[str, Any]]) -> None:
        convs, targets = [], []
        for r in rows:
            drafts = "\n\n".join(f"Draft {i}:\n{t}" for i, t in enumerate(r["thoughts"], 1))
            msgs = [
                {
                    "role": "user",
                    "content": JUDGE_PROMPT.format(
                        query=r["query"], drafts=drafts, answer=r["answer"]
                    ),
                }
            ]
            n = _prompt_len(self.engine.tokenizer, msgs)
            if n + self.sampling.max_tokens > self.max_len:
                _reject(
                    r, "prompt_too_long", f"judge prompt of {n} tokens > context {self.max_len}"
                )
                continue
            convs.append(msgs)
            targets.append(r)
        if not convs:
            return
        gens = self.engine.generate(convs, self.sampling)
        for r, g in zip(targets, gens, strict=True):
            c = g.completions[0]
            r["judge_tokens"] = c.tokens
            m = _NUMBER.search(c.text)
            if not m:
                _reject(r, "judge_unparsed", f"judge said {c.text[:80]!r}")
                continue
            r["consistency"] = int(m.group(1)) / 10
            if r["consistency"] < self.threshold:
                _reject(
                    r,
                    "low_consistency",
                    f"judge score {r['consistency']:.1f} < threshold {self.threshold}",
                )
