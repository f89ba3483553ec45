"""``ptr-ray eval``: every method answers every task over N refinement rounds.

For each method an engine is created (vLLM by default), every pending task is refined with
THE loop of :mod:`ptr_ray.refine` (round 1: the zero-shot prompt; round k: the conversation
so far plus the refine instruction), each round's answers are scored, and the engine is
closed before the next method starts, so three 0.5B models fit a laptop one after another.

Every (method, task) result is saved under ``output_dir/results/`` as soon as it is done,
with a fingerprint of everything that decides it (model, engine, sampling, prompts, items,
rounds, scoring); a rerun with ``resume: true`` reuses matching results and only computes
what is missing or changed.

Library use (the end-to-end pipeline)::

    report = evaluate(cfg)          # EvalReport
    paths = write_report(report, cfg.output_dir)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ptr_ray.config import EngineConfig, EvalConfig, EvalMethodConfig, dump_config
from ptr_ray.config.common import most_of_each
from ptr_ray.engine import Engine, make_engine
from ptr_ray.errors import PtrRayValueError
from ptr_ray.eval.methods import check_methods, method_engine_config
from ptr_ray.eval.metrics import score_batch
from ptr_ray.eval.report import (
    EvalReport,
    ItemResult,
    ItemRound,
    TaskResult,
    markdown_table,
    write_report,
)
from ptr_ray.eval.tasks import EvalTask, check_tasks, load_tasks
from ptr_ray.fsutil import write_json_atomic
from ptr_ray.refine import refine_batch

log = logging.getLogger(__name__)

# Bump when extraction or scoring changes, so resumed runs do not mix old and new scores.
# 2: MATH-style answers are compared symbolically (math-verify).
SCORING_VERSION = 2

EngineFactory = Callable[[EngineConfig], Engine]


class EvalError(PtrRayValueError):
    """A problem with an evaluation run, reported as one line."""


def _model_signature(source: str) -> str:
    """A local folder's weights can change under the same path (a re-trained checkpoint): key
    resumed results on its files' sizes and mtimes too. builtin:NAME weights are pinned."""
    p = Path(source).expanduser()
    if not p.is_dir():
        return source
    parts = [
        f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}"
        for f in sorted(p.iterdir())
        if f.is_file() and not f.name.startswith(".")
    ]
    return source + "|" + ",".join(parts)


def fingerprint(cfg: EvalConfig, engine_cfg: EngineConfig, task: EvalTask) -> str:
    """Hash of everything that decides a (method, task) result."""
    key = {
        "v": SCORING_VERSION,
        "model": _model_signature(engine_cfg.model),
        "engine": engine_cfg.model_dump(
            mode="json", exclude={"num_cpus", "num_gpus", "resources", "metrics"}
        ),
        "sampling": _sampling(cfg, task).model_dump(mode="json"),
        "prompt": cfg.prompt.model_dump(mode="json"),
        "rounds": cfg.rounds,
        "stable": cfg.stop_when_stable,
        "task": [task.name, task.kind, task.template],
        "items": [[i.id, task.prompt(i), i.answer] for i in task.items],
        "scoring": [cfg.math_metric, cfg.similarity_threshold, cfg.code_timeout_s],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _sampling(cfg: EvalConfig, task: EvalTask):
    max_tokens = cfg.task_max_tokens.get(task.name) or task.max_tokens or cfg.sampling.max_tokens
    return cfg.sampling.model_copy(update={"max_tokens": max_tokens, "n": 1})


def _result_path(cfg: EvalConfig, method: str, task: str) -> Path:
    return Path(cfg.output_dir) / "results" / method / f"{task}.json"


def _load_cached(path: Path, fp: str) -> TaskResult | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fp:
            log.info("%s was made with other settings; recomputing", path)
            return None
        return TaskResult.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable cached result %s (%s)", path, e)
        return None


def preflight(cfg: EvalConfig) -> tuple[list[EngineConfig], list[EvalTask]]:
    """All the checks, before any engine starts: tasks, model sources, engine keys, data."""
    check_tasks(cfg)
    engines = check_methods(cfg)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise EvalError(f"output_dir {out} exists and is not a folder")
    tasks = load_tasks(cfg)
    for ecfg in engines:
        if ecfg.max_model_len:
            worst = max((_sampling(cfg, t).max_tokens for t in tasks), default=0) * cfg.rounds
            if worst + 512 > ecfg.max_model_len:
                log.warning(
                    "%s: %d rounds x up to %d new tokens may outgrow max_model_len=%d in late "
                    "rounds; raise engine.max_model_len if a prompt-too-long error appears",
                    ecfg.model,
                    cfg.rounds,
                    worst // cfg.rounds,
                    ecfg.max_model_len,
                )
    return engines, tasks


def evaluate_task(
    engine: Engine, method: EvalMethodConfig, task: EvalTask, cfg: EvalConfig, fp: str = ""
) -> TaskResult:
    """Refine every item of ``task`` for ``cfg.rounds`` rounds with one engine, then score."""
    t0 = time.time()
    queries = [task.prompt(i) for i in task.items]
    sampling = _sampling(cfg, task)
    round_seconds: list[float] = []
    last = [time.time()]
    bar = tqdm(
        total=cfg.rounds, desc=f"{method.name}/{task.name} rounds", leave=False, unit="round"
    )

    def on_round(k: int, n: int) -> None:
        now = time.time()
        round_seconds.append(now - last[0])
        last[0] = now
        bar.update(1)
        bar.set_postfix(items=n)
        log.info(
            "%s/%s: round %d done for %d items in %.1fs",
            method.name,
            task.name,
            k,
            n,
            round_seconds[-1],
        )

    try:
        refined = refine_batch(
            engine,
            queries,
            cfg.rounds,
            sampling,
            cfg.prompt,
            stop_when_stable=cfg.stop_when_stable,
            on_round=on_round,
        )
    finally:
        bar.close()
    while len(round_seconds) < cfg.rounds:  # every item stopped early: later rounds are free
        round_seconds.append(0.0)

    items = [ItemResult(it.id, it.answer, q) for it, q in zip(task.items, queries, strict=True)]
    for k in range(1, cfg.rounds + 1):
        answers, rounds = [], []
        for res in refined:
            carried = len(res.rounds) < k
            rr = res.rounds[min(k, len(res.rounds)) - 1]
            answers.append(rr.answer)
            rounds.append((rr, carried))
        scores = score_batch(
            task.kind,
            task.items,
            answers,
            code_timeout_s=cfg.code_timeout_s,
            similarity_threshold=cfg.similarity_threshold,
            sandbox=cfg.sandbox,
        )
        for item, (rr, carried), sc in zip(items, rounds, scores, strict=True):
            item.rounds.append(
                ItemRound(
                    round=k,
                    answer=rr.answer,
                    extracted=sc.extracted,
                    values=sc.values,
                    tokens=0 if carried else rr.tokens,
                    finish_reason="carried" if carried else rr.finish_reason,
                    prompt_tokens=0 if carried else rr.prompt_tokens,
                    cached_tokens=0 if carried else rr.cached_tokens,
                    carried=carried,
                    detail=sc.detail,
                )
            )
    return TaskResult(
        method.name,
        method.model,
        task.name,
        task.kind,
        task.metric_names(cfg.math_metric),
        cfg.rounds,
        items,
        fp,
        round_seconds,
        time.time() - t0,
        dict(task.skipped),
    )


def evaluate(cfg: EvalConfig, engine_factory: EngineFactory | None = None) -> EvalReport:
    """Evaluate every method on every task; returns the report (see :func:`write_report`)."""
    t0 = time.time()
    engine_cfgs, tasks = preflight(cfg)
    factory = engine_factory or make_engine
    by_key: dict[tuple[str, str], TaskResult] = {}
    reused_keys: set[tuple[str, str]] = set()
    total = len(cfg.methods) * len(tasks)
    bar = tqdm(total=total, desc="eval (method x task)", unit="task")
    try:
        for method, ecfg in zip(cfg.methods, engine_cfgs, strict=True):
            pending: list[tuple[EvalTask, str]] = []
            for task in tasks:
                fp = fingerprint(cfg, ecfg, task)
                cached = (
                    _load_cached(_result_path(cfg, method.name, task.name), fp)
                    if cfg.resume
                    else None
                )
                if cached is not None:
                    log.info("%s/%s: reusing finished result", method.name, task.name)
                    by_key[(method.name, task.name)] = cached
                    reused_keys.add((method.name, task.name))
                    bar.update(1)
                else:
                    pending.append((task, fp))
            if not pending:
                continue
            log.info(
                "method %s: starting %s engine for %s (%d tasks)",
                method.name,
                ecfg.backend,
                ecfg.model,
                len(pending),
            )
            engine = factory(ecfg)
            try:
                for task, fp in pending:
                    bar.set_postfix(method=method.name, task=task.name)
                    try:
                        res = evaluate_task(engine, method, task, cfg, fp)
                    except ValueError as e:  # e.g. a late-round prompt longer than the context
                        raise EvalError(f"{method.name}/{task.name}: {e}") from e
                    write_json_atomic(
                        _result_path(cfg, method.name, task.name), res.to_dict(), indent=None
                    )
                    by_key[(method.name, task.name)] = res
                    head = res.summary()
                    accs = [r.accuracy for r in head if r.metric == res.metrics[0]]
                    log.info(
                        "%s/%s %s by round: %s",
                        method.name,
                        task.name,
                        res.metrics[0],
                        " ".join(f"{a:.3f}" for a in accs),
                    )
                    bar.update(1)
            finally:
                engine.close()
    finally:
        bar.close()
    ordered = [by_key[(m.name, t.name)] for m in cfg.methods for t in tasks]
    reused = sum(1 for m in cfg.methods for t in tasks if (m.name, t.name) in reused_keys)
    return EvalReport(ordered, cfg.rounds, cfg.model_dump(mode="json"), time.time() - t0, reused)


def ray_task_options(cfg: EvalConfig) -> dict[str, Any]:
    """The evaluation task's Ray options: the most CPUs, GPUs and custom resources
    (``engine.resources``, e.g. a node type's ``pool_vllm``) that any method's engine asks for,
    since the task runs the methods' engines one after another."""
    engines = [method_engine_config(cfg, m) for m in cfg.methods]
    opts: dict[str, Any] = {
        "num_cpus": max(e.num_cpus for e in engines),
        "num_gpus": max(e.num_gpus for e in engines),
    }
    resources = most_of_each(engines)
    if resources:
        opts["resources"] = resources
    return opts


def _evaluate_on_ray(cfg: EvalConfig) -> EvalReport:
    """Run :func:`evaluate` inside one Ray task holding the engines' CPUs/GPUs (cluster jobs)."""
    import ray

    ray_cfg = cfg.ray
    assert ray_cfg is not None
    from ptr_ray.ray_utils import ray_session

    if ray_cfg.address == "local":  # a local worker's cwd need not be ours
        cfg = cfg.model_copy(update={"output_dir": str(Path(cfg.output_dir).resolve())})
    opts = ray_task_options(cfg)
    with ray_session(ray_cfg):  # the pipeline's instance if it runs one, else our own
        remote = ray.remote(**opts)(evaluate)
        log.info("evaluating inside a Ray task (%s)", opts)
        return ray.get(remote.remote(cfg))


def track_report(report: EvalReport, cfg: EvalConfig, out: Path) -> None:
    """Each (method, task)'s headline metric by round to the tracking backends: scalar
    ``eval/<task>/<method>`` at step = round, one call per round (W&B wants rising steps)."""
    from ptr_ray.tracking import open_tracker

    by_round: dict[int, dict[str, float]] = {}
    for res in report.results:
        for row in res.summary():
            if row.metric == res.metrics[0]:
                by_round.setdefault(row.round, {})[f"{res.task}/{res.method}"] = row.accuracy
    params = cfg.model_dump(mode="json")
    with open_tracker(cfg.tracking, out, run_name=out.name, prefix="eval", params=params) as t:
        for k in sorted(by_round):
            t.log_scalars(by_round[k], k)


def run_eval(cfg: EvalConfig) -> EvalReport:
    """``ptr-ray eval``: evaluate, write the report files, print the round-by-round table."""
    t0 = time.time()
    from ptr_ray.tracking import check_tracking

    check_tracking(cfg.tracking)  # a backend that is not installed fails now, not at the end
    if cfg.ray is not None:
        preflight(cfg)  # fail on the driver, before a Ray task is scheduled
        report = _evaluate_on_ray(cfg)
    else:
        report = evaluate(cfg)
    report.wall_s = time.time() - t0
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    paths = write_report(report, out, plot=cfg.plot)
    if cfg.tracking.backends:
        track_report(report, cfg, out)
    print()
    print(markdown_table(report))
    print(f"\nwall time {report.wall_s:.0f}s; wrote " + ", ".join(str(p) for p in paths.values()))
    return report
