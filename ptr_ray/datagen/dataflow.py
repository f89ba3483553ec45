"""``ptr-ray build``: PTR's thought-data construction as a Ray Data pipeline.

    sources ─► Ray Data: read/clean/dedupe/decontaminate (prepare.py; rejects to the driver)
            ─► Ray Data: WeakThoughts pool ─► StrongAnswers pool ─► consistency pool
            ─► driver: sharded record files + rejects.jsonl + stats.json + meta.json

The weak and strong engines live in separate actor pools, each sized from its own config
(replicas, CPUs/GPUs per actor, tensor parallelism), so a cluster can give the strong model
big GPUs and the weak one small ones. Ray Data streams batches between the pools (its
progress bars show every stage; the dashboard shows the actors). Actors are restartable and
their tasks retried, so a dead actor costs a restart, not the run, and the driver's id check
makes sure each query is written once.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ptr_ray.config import BuildConfig, ConfigError, EngineConfig, PoolConfig, dump_config
from ptr_ray.config.common import most_of_each
from ptr_ray.datagen import output
from ptr_ray.datagen.actors import (
    EmbeddingConsistency,
    JudgeConsistency,
    StrongAnswers,
    WeakThoughts,
    reference_answers,
)
from ptr_ray.datagen.metrics import BuildMetrics, progress_of
from ptr_ray.datagen.prepare import check_sources, prepare_candidates
from ptr_ray.datagen.results import (
    Tally,
    strong_answers_label,
    summary,
    to_record,
    weak_engines,
)
from ptr_ray.datagen.rows import SCHEMA, from_candidates
from ptr_ray.errors import PtrRayValueError
from ptr_ray.ray_utils import init_ray

log = logging.getLogger(__name__)


class BuildError(PtrRayValueError):
    """A build that cannot start or produced nothing usable; the message says why."""


def cpus_needed(cfg: BuildConfig) -> int:
    """Logical CPUs the actor pools take at their initial size (a local instance gets at least
    this many, so every pool can be scheduled; on 2 cores they time-share)."""
    total = sum(e.num_cpus for e in weak_engines(cfg)) * cfg.weak.pool.replicas
    if cfg.strong.source == "model":
        total += cfg.strong.model.num_cpus * cfg.strong.pool.replicas
    if cfg.consistency.method == "embedding":
        total += cfg.consistency.num_cpus * cfg.consistency.pool.replicas
    elif cfg.consistency.method == "judge":
        total += (
            cfg.consistency.judge or cfg.strong.model
        ).num_cpus * cfg.consistency.pool.replicas
    return math.ceil(total) + 1  # + Ray Data's own input tasks


def _compute(pool: PoolConfig, engine: bool = True):
    """The pool's actors. An engine stage's actor is async and works on up to
    ``max_concurrent_batches`` batches at once (Ray Data sends it twice as many, so the next
    batch is already there when one ends); the embedding stage's actors take one at a time."""
    from ray.data import ActorPoolStrategy

    size: dict[str, int] = (
        dict(min_size=pool.replicas, max_size=pool.max_replicas)
        if pool.max_replicas and pool.max_replicas > pool.replicas
        else dict(size=pool.replicas)
    )
    if not engine:
        return ActorPoolStrategy(**size)
    k = pool.max_concurrent_batches
    return ActorPoolStrategy(
        **size, max_concurrent_calls_per_actor=k, max_tasks_in_flight_per_actor=2 * k
    )


def _resources(*engines: EngineConfig) -> dict[str, Any]:
    """An actor's Ray resources for the engines it holds: the sum of their CPUs and GPUs, and
    the most of each custom resource any asks for (those name node types, not amounts used)."""
    for engine in engines:  # a share of one GPU is fine for one rank (two small weak models)
        tp = engine.tensor_parallel_size
        if engine.num_gpus > 0 and tp > 1 and tp > engine.num_gpus:
            raise ConfigError(
                f"{engine.model}: tensor_parallel_size {engine.tensor_parallel_size} needs "
                f"num_gpus >= {engine.tensor_parallel_size} per actor (got {engine.num_gpus})"
            )
    res: dict[str, Any] = {"num_cpus": sum(e.num_cpus for e in engines)}
    gpus = sum(e.num_gpus for e in engines)
    if gpus > 0:
        res["num_gpus"] = gpus
    custom = most_of_each(engines)  # custom resources pin the pool to the nodes advertising them
    if custom:
        res["resources"] = custom
    return res


def model_label(model: str) -> str:
    """A model source as a short name for actor class names: ``builtin:smollm2-135m`` ->
    ``smollm2-135m``, ``/runs/x/train-ptr/model`` -> ``train-ptr-model``,
    ``Qwen/Qwen2.5-1.5B`` -> ``Qwen2.5-1.5B`` (letters, digits and ``_.+-`` only)."""
    parts = model.removeprefix("builtin:").rstrip("/").split("/")
    tail = parts[-2:] if parts[-1] == "model" and len(parts) > 1 else parts[-1:]
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", "-".join(tail)).strip("-") or "model"


def named_stage(cls: type, label: str) -> type:
    """``cls`` under the name ``Class[label]``, e.g. ``WeakThoughts[smollm2-135m]``.

    Ray Data names an actor pool's operator ``MapBatches(<class name>)`` and its actors
    ``MapWorker(MapBatches(<class name>))``: that is what the progress bars, the dashboard's
    Actors and Jobs views and the logs show, so the name says which stage (weak, strong, judge,
    embedding) runs which model. The subclass adds nothing else; cloudpickle ships it by value.
    """
    return type(f"{cls.__name__}[{label}]", (cls,), {"__module__": cls.__module__})


def dataset_name(cfg: BuildConfig) -> str:
    """The Ray Data dataset's name (the dashboard's Ray Data view, metrics tags)."""
    folder = Path(cfg.output.path).expanduser().name or "dataset"
    return "ptr-build-" + re.sub(r"[^A-Za-z0-9_.+-]+", "-", folder)


def build_dataset(cfg: BuildConfig, candidates: Any):
    """The lazy Ray Data pipeline over the prepared candidates (``Prepared.candidates``, a
    dataset over blocks already in Ray's object store)."""
    bs = cfg.weak.pool.batch_size
    # one weak batch per block, so every actor of a pool gets work (prepared blocks are big)
    ds = candidates.map_batches(
        from_candidates, batch_size=None, batch_format="pyarrow"
    ).repartition(target_num_rows_per_block=bs)
    # Actor fault tolerance: Ray Data gives map_batches actors max_restarts=-1 and
    # max_task_retries=-1 by default, so a killed actor is restarted and its batch retried
    # (tests/datagen/test_dataflow.py kills one). Passing them again is deprecated in Ray 2.60.
    # One pool for every thought: each actor holds one engine per weak model (they take turns).
    engines = weak_engines(cfg)
    ds = ds.map_batches(
        named_stage(WeakThoughts, "+".join(model_label(e.model) for e in engines)),
        fn_constructor_kwargs=dict(
            engine=engines[0],
            alternate=engines[1:],
            rounds=cfg.weak.num_thoughts,
            sampling=cfg.weak.sampling,
            prompt=cfg.prompt,
            thought_mode=cfg.weak.thought_mode,
        ),
        batch_size=cfg.weak.pool.batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=_compute(cfg.weak.pool),
        **_resources(*engines),
    )
    if cfg.strong.source == "references":  # no strong engine: a cheap task per batch
        ds = ds.map_batches(
            reference_answers,
            batch_size=cfg.strong.pool.batch_size,
            batch_format="pyarrow",
            num_cpus=0.25,
        )
    else:
        ds = ds.map_batches(
            named_stage(StrongAnswers, model_label(cfg.strong.model.model)),
            fn_constructor_kwargs=dict(
                engine=cfg.strong.model,
                sampling=cfg.strong.sampling,
                icl_path=cfg.strong.icl_examples,
                num_icl=cfg.strong.num_icl,
                prompt=cfg.prompt,
            ),
            batch_size=cfg.strong.pool.batch_size,
            batch_format="pyarrow",
            compute=_compute(cfg.strong.pool),
            **_resources(cfg.strong.model),
        )
    cons = cfg.consistency
    if cons.method == "embedding":
        ds = ds.map_batches(
            named_stage(EmbeddingConsistency, model_label(cons.embedding_model)),
            fn_constructor_kwargs=dict(model=cons.embedding_model, threshold=cons.threshold),
            batch_size=cons.pool.batch_size,
            batch_format="pyarrow",
            compute=_compute(cons.pool, engine=False),
            num_cpus=cons.num_cpus,
        )
    elif cons.method == "judge":
        judge = cons.judge or cfg.strong.model
        ds = ds.map_batches(
            named_stage(JudgeConsistency, model_label(judge.model)),
            fn_constructor_kwargs=dict(
                engine=judge, threshold=cons.threshold, max_tokens=cons.judge_max_tokens
            ),
            batch_size=cons.pool.batch_size,
            batch_format="pyarrow",
            compute=_compute(cons.pool),
            **_resources(judge),
        )
    ds.set_name(dataset_name(cfg))
    return ds


def run_build(cfg: BuildConfig) -> Path:
    """Build (or resume) the dataset folder ``cfg.output.path``; returns its path."""
    t_start = time.time()
    out = Path(cfg.output.path).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / ".build.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BuildError(
            f"another build is writing to {out} (lock {out / '.build.lock'})"
        ) from None
    try:
        return _run_locked(cfg, out, t_start)
    finally:
        lock.release()


def _run_locked(cfg: BuildConfig, out: Path, t_start: float) -> Path:
    from transformers import AutoTokenizer

    from ptr_ray.data.clean import tokenizer_counter
    from ptr_ray.models import resolve_model

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    existing = output.scan(out)
    if existing.record_ids:
        log.info(
            "resuming into %s: %d records already written, %d final rejects",
            out,
            len(existing.record_ids),
            len(existing.final_reject_ids),
        )
    dump_config(cfg, out / "config.yaml")
    rejects = output.RejectLog(out, run_id, existing.reject_keys)
    seconds: dict[str, float] = {}
    stats: dict[str, Any] = {"run_id": run_id, "status": "running"}
    writer: output.ShardWriter | None = None
    tally = Tally(cfg)
    metrics = BuildMetrics(out.name)  # the same counts, live on Ray's metrics endpoint
    written_ids: set[str] = set(existing.record_ids)
    kinds = {"ptr": 0, "sft": 0}
    prepared = None
    seen = 0
    started = False
    try:
        t0 = time.time()
        tok = AutoTokenizer.from_pretrained(resolve_model(cfg.weak.models[0].model))
        seconds["tokenizer"] = time.time() - t0
        check_sources(cfg)
        t1 = time.time()
        # preprocessing runs on Ray Data too, so Ray starts first (even for a build with
        # nothing left to generate)
        started = init_ray(cfg.ray, min_cpus=cpus_needed(cfg))
        seconds["ray_init"] = time.time() - t1
        import ray

        t0 = time.time()
        prepared = prepare_candidates(cfg, tokenizer_counter(tok), existing, rejects)
        seconds.update(prepared.seconds)
        seconds["prepare_total"] = time.time() - t0
        writer = output.ShardWriter(out, run_id, cfg.output.format, cfg.output.rows_per_shard)
        if prepared.num_candidates:
            if metrics.attach():
                metrics.report(progress_of(prepared, rejects, tally, kinds, seen))
            try:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = True
                t2 = time.time()
                ds = build_dataset(cfg, prepared.candidates)
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    good = []
                    for row in batch.cast(SCHEMA).to_pylist():
                        seen += 1
                        tally.add(row)
                        if row["reject"]:
                            rejects.add(
                                "generate",
                                row["reject"],
                                source=row["source"] or "",
                                id=row["id"],
                                query=row["query"],
                                detail=row["reject_detail"] or "",
                                thoughts=row["thoughts"],
                                answer=row["answer"],
                                consistency=row["consistency"],
                            )
                        elif row["id"] in written_ids:  # a retried batch delivered twice
                            rejects.add(
                                "write",
                                "duplicate_id",
                                source=row["source"] or "",
                                id=row["id"],
                                query=row["query"],
                            )
                        else:
                            good.append(to_record(row, cfg, run_id))
                            written_ids.add(row["id"])
                            kinds[row["kind"]] += 1
                    writer.write(good)
                    rejects.flush()
                    metrics.report(progress_of(prepared, rejects, tally, kinds, seen))
                seconds["generate_wall"] = time.time() - t2
                try:
                    (out / "ray_data_stats.txt").write_text(ds.stats())
                except Exception:  # stats text is a nicety; never fail a finished run on it
                    log.debug("no Ray Data stats", exc_info=True)
            finally:
                metrics.close()
        stats["status"] = "finished"
    except BaseException as e:
        stats["status"] = (
            "interrupted"
            if isinstance(e, KeyboardInterrupt)
            else f"failed: {type(e).__name__}: {e}"
        )
        raise
    finally:
        if prepared is not None:
            prepared.candidates = None  # its blocks go with the Ray instance
        if started:
            import ray

            ray.shutdown()
        if writer is not None:
            writer.close()
        rejects.close()
        seconds.update({f"{k}_busy": v for k, v in tally.busy.items()})
        seconds["total"] = time.time() - t_start
        rows_in = prepared.rows_in if prepared else 0
        skipped = prepared.skipped_existing if prepared else 0
        rows_out = writer.rows if writer else 0
        strong_answers = strong_answers_label(
            cfg, set(prepared.candidate_sources) if prepared else set()
        )
        stats.update(
            {
                "strong_source": cfg.strong.source,
                "strong_answers": strong_answers,
                "weak_thought_mode": cfg.weak.thought_mode,
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rows_out_by_kind": kinds,
                "skipped_existing": skipped,
                "dropped": dict(sorted(rejects.counts.items())),
                "dropped_total": rejects.total,
                "dropped_by_stage": rejects.by_stage,
                # candidates that never came back from the pipeline (an interrupted run)
                "pending": prepared.num_candidates - seen if prepared else 0,
                "tokens": tally.token_stats(),
                "consistency": summary(tally.consistency),
                "wall_time_s": {k: round(v, 3) for k, v in seconds.items()},
                "files": writer.files if writer else [],
                "decontamination_ngrams": prepared.decontamination_ngrams if prepared else 0,
                "repaired_files": existing.repaired,
            }
        )
        stats["balanced"] = rows_in == rows_out + rejects.total + skipped + stats["pending"]
        output.write_stats(out, stats)
        output.update_meta(
            out,
            run_id,
            {
                "weak_models": [m.model for m in cfg.weak.models],
                "strong_model": strong_answers,
                "num_thoughts": cfg.weak.num_thoughts,
                "thought_mode": cfg.weak.thought_mode,
                "refine_instruction": cfg.prompt.refine_instruction,
                "run": {"status": stats["status"], "rows_out": rows_out},
            },
        )
    if not stats["balanced"]:
        raise BuildError(f"stats do not add up (see {out / 'stats.json'}); this is a bug")
    gen_errors = rejects.counts.get("generation_error", 0)
    if gen_errors and stats["rows_out"] == 0:
        raise BuildError(
            f"every generation failed ({gen_errors} rows); see {out / 'rejects.jsonl'}"
        )
    log.info(
        "build %s: %d rows in, %d written (%d ptr, %d sft), %d dropped %s, %d already there; %.1fs",
        stats["status"],
        stats["rows_in"],
        stats["rows_out"],
        kinds["ptr"],
        kinds["sft"],
        stats["dropped_total"],
        stats["dropped"],
        stats["skipped_existing"],
        seconds["total"],
    )
    return out
