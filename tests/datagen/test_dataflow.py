"""The whole build: Ray Data + engine actor pools, a killed actor, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from ptr_ray.cli import main as cli_main
from ptr_ray.config import BuildConfig, ConfigError, EngineConfig
from ptr_ray.datagen import dataflow
from ptr_ray.datagen.dataflow import BuildError, run_build
from ptr_ray.datagen.results import weak_engines, weak_round_models
from ptr_ray.records import read_records
from ptr_ray.testing import FaultThread

TOPICS = [
    "bake sourdough bread with a young starter",
    "choose a first telescope for planets",
    "train a puppy to walk on a loose leash",
    "plan a three day trip to Lisbon in spring",
    "write a cover letter for a junior data analyst job",
    "repair a slow leaking bicycle tyre",
    "explain compound interest to a teenager",
    "set up a small aquarium for shrimp",
    "learn basic chords on an acoustic guitar",
    "reduce food waste in a shared kitchen",
    "prepare for a first half marathon",
    "grow basil on a north facing windowsill",
    "compare SQL joins with a short example",
    "organise a charity book swap at work",
    "pick a laptop for video editing under a budget",
    "start journaling and keep the habit",
]


def write_queries(path: Path, n: int = len(TOPICS), bad: bool = True) -> int:
    """``n`` good queries (plus four broken rows); returns the number of good ones."""
    with open(path, "wb") as f:
        for i, topic in enumerate(TOPICS[:n]):
            f.write(
                json.dumps(
                    {"instruction": f"How do I {topic}? Please give practical steps."}
                ).encode()
                + b"\n"
            )
            if bad and i == 2:
                f.write(b'{"instruction": "torn\n')
                f.write(b'{"instruction": "caf\xe9 au lait?"}\n')
                f.write(b'{"text": "no instruction field"}\n')
                f.write(b'{"instruction": ""}\n')
    return n


def make_cfg(
    tmp_path: Path, model_dir: Path, backend: str, src: Path, out: Path, **over
) -> BuildConfig:
    engine = {
        "model": str(model_dir),
        "backend": backend,
        "dtype": "float32",
        "max_model_len": 1024,
        "kv_cache_gib": 1,
        "num_cpus": 1,
    }
    data = {
        "sources": [{"kind": "jsonl", "path": str(src), "field": "instruction"}],
        "clean": {"min_tokens": 3, "max_tokens": 300},
        "dedupe": {"threshold": 0.9},
        "weak": {
            "models": [engine],
            "num_thoughts": 2,
            "sampling": {"temperature": 0.95, "top_p": 0.9, "top_k": 30, "max_tokens": 12},
            "pool": {"batch_size": 4},
        },
        "strong": {
            "model": engine,
            "sampling": {"temperature": 0.8, "max_tokens": 12},
            "num_icl": 1,
            "pool": {"batch_size": 4},
        },
        "consistency": {"method": "embedding", "threshold": 0.05, "pool": {"batch_size": 8}},
        "sft": {"fraction": 0.2},
        "output": {"path": str(out), "format": "jsonl", "rows_per_shard": 5},
    }
    for key, val in over.items():
        data[key] = {**data.get(key, {}), **val} if isinstance(val, dict) else val
    return BuildConfig.model_validate(data)


def synthetic_cfg(
    tmp_path: Path, model_dir: Path, out: Path, limit: int, seed: int, **over
) -> BuildConfig:
    """A cheap build: synthetic arithmetic queries, their reference answers, no filter."""
    base = dict(
        sources=[{"kind": "synthetic", "limit": limit}],
        seed=seed,
        dedupe={"near": False},
        strong={"source": "references"},
        consistency={"method": "none"},
        decontaminate={"tasks": ["arith"]},
    )
    return make_cfg(tmp_path, model_dir, "hf", tmp_path / "unused.jsonl", out, **{**base, **over})


def read_rejects(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]


def check_exactly_once(out: Path, n_good: int) -> tuple[list, list]:
    """Every good query is either one record or one generation-stage reject, never both/twice."""
    records = read_records(out)
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)), "duplicate record ids"
    gen = [e for e in read_rejects(out) if e["stage"] == "generate"]
    gen_ids = [e["id"] for e in gen]
    assert len(gen_ids) == len(set(gen_ids)) and not set(gen_ids) & set(ids)
    assert len(ids) + len(gen_ids) == n_good
    return records, gen


def test_weak_models_take_turns_and_each_is_started_once():
    one = BuildConfig.model_validate({"weak": {"num_thoughts": 3}})
    assert [e.model for e in weak_engines(one)] == ["builtin:smollm2-135m"]
    assert weak_round_models(one) == ["builtin:smollm2-135m"] * 3
    two = BuildConfig.model_validate(
        {"weak": {"num_thoughts": 3, "models": [{"model": "a"}, {"model": "b", "num_cpus": 2}]}}
    )
    assert [e.model for e in weak_engines(two)] == ["a", "b"]  # "a" writes rounds 1 and 3
    assert weak_round_models(two) == ["a", "b", "a"]
    assert dataflow.cpus_needed(two) == 1 + 2 + 1 + 1 + 1  # weak a+b, strong, embedding, input
    fewer = BuildConfig.model_validate(
        {"weak": {"num_thoughts": 1, "models": [{"model": "a"}, {"model": "b"}]}}
    )
    assert [e.model for e in weak_engines(fewer)] == ["a"]


def test_an_actor_holding_several_engines_asks_for_their_sum():
    a = EngineConfig(model="a", num_cpus=2, num_gpus=0.5, resources={"pool_vllm": 1})
    b = EngineConfig(model="b", num_cpus=1, num_gpus=0.25, resources={"pool_vllm": 1, "x": 2})
    assert dataflow._resources(a, b) == {
        "num_cpus": 3,
        "num_gpus": 0.75,
        "resources": {"pool_vllm": 1, "x": 2},  # node-type markers: the most, not the sum
    }
    assert dataflow._resources(EngineConfig(model="c")) == {"num_cpus": 1}
    with pytest.raises(ConfigError, match="tensor_parallel_size 2 needs num_gpus >= 2"):
        dataflow._resources(a, EngineConfig(model="d", num_gpus=1, tensor_parallel_size=2))


def test_engine_pools_overlap_batches_and_the_embedding_pool_does_not():
    from ptr_ray.config.datagen import PoolConfig

    weak = dataflow._compute(PoolConfig(replicas=2, max_concurrent_batches=3))
    assert (weak.min_size, weak.max_size) == (2, 2)
    assert weak.max_concurrent_calls_per_actor == 3  # three batches in hand at once
    assert weak.max_tasks_in_flight_per_actor == 6  # and the next ones already queued
    scaled = dataflow._compute(PoolConfig(replicas=1, max_replicas=4))
    assert (scaled.min_size, scaled.max_size, scaled.max_concurrent_calls_per_actor) == (1, 4, 2)
    embed = dataflow._compute(PoolConfig(replicas=1), engine=False)
    assert embed.max_concurrent_calls_per_actor in (None, 1)
    with pytest.raises(ValueError):
        PoolConfig(max_concurrent_batches=0)


def test_cli_reports_bad_source_in_one_line(tmp_path, tiny_model_dir, capsys):
    rc = cli_main(
        [
            "build",
            f"weak.models=[{{model: {tiny_model_dir}}}]",
            "sources=[{kind: jsonl, path: /nonexistent/q.jsonl}]",
            f"output.path={tmp_path / 'o'}",
        ]
    )
    assert rc == 2
    assert "query file not found: /nonexistent/q.jsonl" in capsys.readouterr().err


def test_lock_prevents_concurrent_runs(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "q.jsonl"
    write_queries(src, 2, bad=False)
    cfg = make_cfg(tmp_path, tiny_model_dir, "hf", src, out)
    with FileLock(str(out / ".build.lock")):
        with pytest.raises(BuildError, match="another build is writing"):
            run_build(cfg)


@dataclass(frozen=True)
class Kill:
    actor_id: str
    pid: int
    children: tuple[int, ...]  # the victim's engine processes (vLLM's engine core)
    alive_s: float  # how long the actor had been seen ALIVE
    busy_cpu_s: float  # CPU its process tree used in the 0.1 s before the kill


def _tree_cpu_s(procs) -> float:
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class ActorKiller(FaultThread):
    """SIGKILLs the Ray Data actor whose class name contains ``name`` while it generates.

    Ray Data names a ``map_batches`` actor ``MapWorker(MapBatches(<class>))``; the pid comes
    from the GCS actor table (``ray._private.state.actors``, which needs no dashboard; the
    state API's ``list_actors`` does). The actor is killed once it is ALIVE (engine loaded)
    and its process tree is busy (a batch is being generated), so that batch is lost with it
    and must be retried on the restarted actor.
    """

    def __init__(self, name: str, timeout_s: float = 600.0) -> None:
        super().__init__("actor-killer", timeout_s)
        self.actor_name = name
        self.kill: Kill | None = None

    def _watch(self) -> None:
        import psutil
        import ray

        deadline = time.monotonic() + self.timeout_s
        seen: float | None = None
        while not self._halt.is_set() and time.monotonic() < deadline:
            alive = [
                a
                for a in ray._private.state.actors(actor_state_name="ALIVE").values()
                if self.actor_name in a["ActorClassName"] and a["Pid"]
            ]
            if not alive:
                time.sleep(0.05)
                continue
            seen = seen or time.monotonic()
            actor = alive[0]
            try:
                proc = psutil.Process(actor["Pid"])
                tree = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            before = _tree_cpu_s(tree)
            time.sleep(0.1)
            busy = _tree_cpu_s(tree) - before
            if busy >= 0.03:  # generating, not idle
                os.kill(proc.pid, signal.SIGKILL)
                self.kill = Kill(
                    actor["ActorID"],
                    proc.pid,
                    tuple(c.pid for c in tree[1:]),
                    time.monotonic() - seen,
                    busy,
                )
                return


def _reap(pids: tuple[int, ...], timeout_s: float = 30.0) -> None:
    """End the killed actor's engine processes if they outlived it (they hold GBs)."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        p.kill()


@pytest.mark.integration
def test_vllm_build_survives_killed_actor_and_rerun_adds_nothing(
    ray_local, tiny_model_dir, tmp_path
):
    import ray

    src, out = tmp_path / "q.jsonl", tmp_path / "out"
    n_good = write_queries(src)
    # 48-token thoughts: each weak batch generates long enough for the killer to catch it
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        "vllm",
        src,
        out,
        weak={"sampling": {"temperature": 0.95, "top_p": 0.9, "top_k": 30, "max_tokens": 48}},
    )
    killer = ActorKiller("WeakThoughts")
    killer.start()
    try:
        run_build(cfg)
    finally:
        killer.stop()
        if killer.kill is not None:
            _reap(killer.kill.children)
    assert killer.error is None, killer.error
    kill = killer.kill
    assert kill is not None, "the build finished before the weak actor could be killed mid-batch"
    print(f"killed {kill}")

    # Ray restarted the killed actor (same actor, new process) and the build went on
    info = ray._private.state.actors(kill.actor_id)
    assert info["NumRestarts"] >= 1, info
    with pytest.raises(ProcessLookupError):
        os.kill(kill.pid, 0)

    records, gen_rejects = check_exactly_once(out, n_good)
    assert records, "the tiny model should get some rows through a 0.05 consistency bar"
    for r in records:
        assert r.weak_model is None if r.kind == "sft" else r.weak_model == str(tiny_model_dir)
        assert len(r.thoughts) == (0 if r.kind == "sft" else 2)
        assert r.answer.strip() and r.meta["run"]
        if r.kind == "ptr":
            assert r.consistency is not None and r.consistency >= 0.05
    stats = json.loads((out / "stats.json").read_text())
    assert stats["balanced"] and stats["rows_in"] == n_good + 4
    assert stats["rows_out"] == len(records)
    assert stats["dropped_by_stage"]["read"] == {
        "malformed_json": 1,
        "not_utf8": 1,
        "missing_field": 1,
        "empty_query": 1,
    }
    assert stats["tokens"]["weak"][str(tiny_model_dir)]["generated"] > 0
    assert stats["tokens"]["strong"][str(tiny_model_dir)]["generated"] > 0
    assert stats["wall_time_s"]["weak_busy"] > 0 and stats["wall_time_s"]["strong_busy"] > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 1 and len(meta["runs"]) == 1

    # a finished run, re-run: nothing new in the data or the rejects log
    data_before = sorted((p.name, p.stat().st_size) for p in (out / "data").iterdir())
    rejects_before = (out / "rejects.jsonl").read_text()
    run_build(cfg)
    assert sorted((p.name, p.stat().st_size) for p in (out / "data").iterdir()) == data_before
    assert (out / "rejects.jsonl").read_text() == rejects_before
    stats2 = json.loads((out / "stats.json").read_text())
    assert stats2["rows_out"] == 0 and stats2["skipped_existing"] == n_good and stats2["balanced"]
    assert len(stats2["previous_runs"]) == 1


@pytest.mark.integration
def test_resume_processes_only_new_queries(ray_local, tiny_model_dir, tmp_path):
    """A first run over 6 queries, then one over all 16 into the same folder (Parquet shards,
    transformers engines to keep it quick): the second run generates only the 10 new ones."""
    src, out = tmp_path / "q.jsonl", tmp_path / "out"
    write_queries(src, bad=False)
    base = dict(output={"format": "parquet"}, consistency={"method": "none"}, sft={"fraction": 0.0})
    cfg1 = make_cfg(
        tmp_path,
        tiny_model_dir,
        "hf",
        src,
        out,
        sources=[{"kind": "jsonl", "path": str(src), "field": "instruction", "limit": 6}],
        **base,
    )
    run_build(cfg1)
    first = {r.id for r in read_records(out)}
    cfg2 = make_cfg(tmp_path, tiny_model_dir, "hf", src, out, **base)
    run_build(cfg2)
    records, _ = check_exactly_once(out, len(TOPICS))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped_existing"] == len(first) + sum(
        1
        for e in read_rejects(out)
        if e["stage"] == "generate" and e["run"] == stats["previous_runs"][0]["run_id"]
    )
    assert stats["rows_in"] == len(TOPICS) and stats["balanced"]
    assert all(p.suffix == ".parquet" for p in (out / "data").iterdir())
    assert {r.id for r in records} >= first


def test_reference_answers_are_explicit_and_named():
    """strong.source=references: a source that cannot have references is a config error at
    once; records and stats name ``references:<source>``; no strong pool is sized."""
    from pydantic import ValidationError

    from ptr_ray.datagen.dataflow import cpus_needed
    from ptr_ray.datagen.results import strong_answers_label, to_record
    from ptr_ray.datagen.rows import new_row

    with pytest.raises(ValidationError, match="strong.source=references needs reference answers"):
        BuildConfig.model_validate({"strong": {"source": "references"}})
    with pytest.raises(ValidationError, match=r"\['q.jsonl'\]"):
        BuildConfig.model_validate(
            {
                "strong": {"source": "references"},
                "sources": [
                    {"kind": "synthetic", "limit": 3},
                    {"kind": "jsonl", "path": "q.jsonl"},
                ],
            }
        )
    cfg = BuildConfig.model_validate(
        {
            "strong": {"source": "references", "model": {"num_cpus": 7}},
            "sources": [
                {"kind": "synthetic", "limit": 3},
                {"kind": "jsonl", "path": "q.jsonl", "answer_field": "a"},
            ],
        }
    )
    model_cfg = BuildConfig.model_validate({"strong": {"model": {"num_cpus": 7}}})
    assert cpus_needed(model_cfg) - cpus_needed(cfg) == 7
    row = new_row(
        id="a" * 16,
        query="What is 2 + 3?",
        kind="ptr",
        source="synthetic",
        thoughts=["5", "6"],
        ref_answer="2 + 3 = 5. The answer is 5.",
        answer="2 + 3 = 5. The answer is 5.",
        weak_tokens=[1, 1],
        weak_finish=["stop", "stop"],
    )
    rec = to_record(row, cfg, "run1")
    assert (
        rec["strong_model"] == "references:synthetic" and rec["meta"]["answer_from"] == "reference"
    )
    assert "icl_examples" not in rec["meta"] and "strong_tokens" not in rec["meta"]
    assert to_record(row, model_cfg, "run1")["strong_model"] == model_cfg.strong.model.model
    assert (
        strong_answers_label(cfg, {"synthetic", "q.jsonl"})
        == "references:q.jsonl,references:synthetic"
    )
    assert strong_answers_label(model_cfg, {"x"}) == model_cfg.strong.model.model


@pytest.mark.integration
def test_reference_build_on_synthetic_queries_starts_no_strong_engine(
    ray_local, tiny_model_dir, tmp_path
):
    """Synthetic arithmetic queries, independent weak thoughts, reference answers: the strong
    model does not exist, so the build finishing proves no strong engine was started."""
    from ptr_ray.data import synthetic

    out = tmp_path / "out"
    cfg = synthetic_cfg(
        tmp_path,
        tiny_model_dir,
        out,
        limit=6,
        seed=3,
        weak={"thought_mode": "independent"},
        strong={"source": "references", "model": {"model": str(tmp_path / "no-such-model")}},
        sft={"fraction": 0.3},
    )
    run_build(cfg)
    solutions = {p.question: p.solution for p in synthetic.generate("train", 6, seed=3)}
    records = read_records(out)
    assert len(records) == 6
    for r in records:
        assert r.answer == solutions[r.query] and r.source == "synthetic"
        assert r.strong_model == "references:synthetic" and r.meta["answer_from"] == "reference"
        assert len(r.thoughts) == (2 if r.kind == "ptr" else 0)
    assert {r.kind for r in records} == {"ptr", "sft"}
    stats = json.loads((out / "stats.json").read_text())
    assert (
        stats["strong_source"] == "references" and stats["strong_answers"] == "references:synthetic"
    )
    assert stats["weak_thought_mode"] == "independent"
    assert "strong" not in stats["tokens"] and stats["wall_time_s"]["strong_busy"] == 0
    assert stats["balanced"] and stats["rows_out"] == 6
    meta = json.loads((out / "meta.json").read_text())
    assert meta["strong_model"] == "references:synthetic" and meta["thought_mode"] == "independent"


def test_two_weak_models_take_turns_in_one_pool(ray_local, tiny_model_dir, tmp_path):
    """Two weak models, three successive thoughts (a, b, a): one pool whose actors hold both
    engines; records name both models and the token stats split the rounds between them."""
    second = tmp_path / "second-model"
    second.symlink_to(tiny_model_dir)  # another model source for the same weights
    out = tmp_path / "out"
    first = synthetic_cfg(tmp_path, tiny_model_dir, out, limit=4, seed=5).weak.models[0]
    cfg = synthetic_cfg(
        tmp_path,
        tiny_model_dir,
        out,
        limit=4,
        seed=5,
        weak={
            "models": [first, first.model_copy(update={"model": str(second)})],
            "num_thoughts": 3,
        },
        sft={"fraction": 0.0},
    )
    run_build(cfg)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["balanced"], stats
    records = read_records(out)
    assert records and all(len(r.thoughts) == 3 for r in records)
    assert {r.weak_model for r in records} == {f"{tiny_model_dir},{second}"}
    weak = stats["tokens"]["weak"]
    rows = len(records) + stats["dropped_by_stage"].get("generate", 0)
    assert weak[str(tiny_model_dir)]["calls"] == 2 * rows  # thoughts 1 and 3
    assert weak[str(second)]["calls"] == rows  # thought 2
