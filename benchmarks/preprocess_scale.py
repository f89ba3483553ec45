"""The build's preprocessing at scale: rows/s and the driver's peak memory, per row count.

    .venv/bin/python benchmarks/preprocess_scale.py [--rows 100000,1000000] [--num-cpus 2]

Generates ``--rows`` queries into a JSONL file (streamed to disk, never held in memory):
~80 % distinct questions of 8-40 words, ~7 % exact copies (case and spacing changed), ~7 %
near copies (a word added), ~2 % eval questions (decontamination), ~2 % malformed lines and
~2 % too short. Then runs ``prepare_candidates`` (datagen/prepare.py: read, clean with the weak
model's tokenizer, exact and MinHash near dedupe, 13-gram decontamination against every
packaged eval set, routing) on a local Ray instance, with the real ``RejectLog``, for each row
count in turn, and prints side by side:

- rows/s: rows read / wall time of ``prepare_candidates`` (the decontamination index, built
  in a task, included);
- driver peak RSS: the driver process's own resident memory, sampled every 20 ms in a thread
  while ``prepare_candidates`` runs (Ray's workers, raylet and object store are other
  processes and are not in it: the point is what the *driver* holds). It is split into
  RssAnon (private memory: what the driver's code allocates) and RssShmem (pages of Ray's
  object store, which is mapped into every Ray client, that the driver touched while reading
  blocks: shared, not the driver's own, and bounded by the object store's size), with the
  private memory just before the call. ``ru_maxrss`` (the process's lifetime peak RSS, from
  ``getrusage(RUSAGE_SELF)``) is printed too: it includes what the driver held before (Ray,
  the tokenizer) and nothing of Ray's workers (they are the raylet's children, not the
  driver's, and RUSAGE_CHILDREN would not see them either);
- the goal: driver peak <= 2 GiB at every size, and independent of the row count (the ratio
  of the largest size's peak to the smallest's, ideally ~1.0).

Absolute times depend on the machine and its load (2 shared cores here); the memory figures
do not. The counts of each bucket are printed as a sanity check (every row is accounted for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOAL_BYTES = 2 << 30


_FIELDS = ("VmRSS", "RssAnon", "RssShmem")


def memory() -> dict[str, int]:
    """This process's resident memory now, in bytes (Linux /proc/self/status): VmRSS (all of
    it), RssAnon (private: heap, arrays), RssShmem (shared memory pages it touched: Ray's
    object store is mapped into every client, so reading a block counts here)."""
    out = dict.fromkeys(_FIELDS, 0)
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in out:
                out[name] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Samples :func:`memory` in a thread; ``peak`` holds each field's largest sample."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak, self._stop = every_s, memory(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = memory()
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def write_queries(path: Path, n: int, seed: int, eval_questions: list[str]) -> None:
    """``n`` JSONL lines with the mix of the module docstring, written as they are made."""
    rng = random.Random(seed)
    vocab = [f"{w}{i}" for i in range(4000) for w in ("word", "term")]
    recent: list[str] = []  # a window of earlier queries to copy from
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = rng.random()
            if r < 0.07 and recent:
                line = {"query": "  " + rng.choice(recent).upper()}
            elif r < 0.14 and recent:
                line = {"query": rng.choice(recent) + " please"}
            elif r < 0.16:
                line = {"query": "Please solve: " + rng.choice(eval_questions)}
            elif r < 0.18:
                f.write('{"query": broken\n' if i % 2 else '{"other": 1}\n')
                continue
            elif r < 0.20:
                line = {"query": "hi"}
            else:
                q = " ".join(rng.choices(vocab, k=rng.randint(8, 40))) + "?"
                line = {"query": q}
                if len(recent) < 1000:
                    recent.append(q)
                else:
                    recent[rng.randrange(1000)] = q
            f.write(json.dumps(line) + "\n")


def run_one(rows: int, work: Path, count_tokens, eval_questions: list[str]) -> dict:
    from ptr_ray.config import BuildConfig
    from ptr_ray.datagen import output
    from ptr_ray.datagen.prepare import prepare_candidates

    src = work / f"queries-{rows}.jsonl"
    t0 = time.perf_counter()
    write_queries(src, rows, seed=rows, eval_questions=eval_questions)
    gen_s = time.perf_counter() - t0
    out = work / f"out-{rows}"
    out.mkdir()
    cfg = BuildConfig.model_validate(
        {
            "sources": [{"kind": "jsonl", "path": str(src), "field": "query"}],
            "clean": {"min_tokens": 4, "max_tokens": 256},
            "dedupe": {"near": True, "threshold": 0.8},
            "output": {"path": str(out)},
            "sft": {"fraction": 0.1},
        }
    )
    log = output.RejectLog(out, "bench", set())
    before = memory()
    with PeakMemory() as peak:
        t1 = time.perf_counter()
        prep = prepare_candidates(cfg, count_tokens, output.Existing(), log)
        wall = time.perf_counter() - t1
    log.close()
    assert prep.rows_in == prep.num_candidates + prep.skipped_existing + log.total == rows
    mib = 2**20
    result = {
        "rows": rows,
        "seconds": round(wall, 1),
        "rows_per_s": round(rows / wall),
        "driver_peak_rss_mib": round(peak.peak["VmRSS"] / mib, 1),
        "driver_peak_anon_mib": round(peak.peak["RssAnon"] / mib, 1),
        "driver_peak_shmem_mib": round(peak.peak["RssShmem"] / mib, 1),
        "driver_rss_before_mib": round(before["VmRSS"] / mib, 1),
        "driver_anon_before_mib": round(before["RssAnon"] / mib, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "candidates": prep.num_candidates,
        "dropped": dict(sorted(log.counts.items())),
        "stage_seconds": {k: round(v, 1) for k, v in prep.seconds.items()},
        "generate_input_s": round(gen_s, 1),
    }
    prep.candidates = None
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", default="100000,1000000", help="comma-separated row counts")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--tokenizer", default="builtin:smollm2-135m", help="the weak model's")
    p.add_argument("--work-dir", default=None, help="for the generated files (default: a temp)")
    args = p.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]

    import ray
    from transformers import AutoTokenizer

    from ptr_ray.data.benchmarks import load_task
    from ptr_ray.data.clean import tokenizer_counter
    from ptr_ray.models import resolve_model
    from ptr_ray.runtime_env import apply_env, ray_env_vars

    apply_env(cpu=True)
    count_tokens = tokenizer_counter(AutoTokenizer.from_pretrained(resolve_model(args.tokenizer)))
    eval_questions = [t.question for t in load_task("gsm8k", limit=200)]
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": ray_env_vars()},
    )
    results = []
    try:
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
            for rows in sizes:
                res = run_one(rows, Path(tmp), count_tokens, eval_questions)
                print(json.dumps(res), flush=True)
                results.append(res)
    finally:
        ray.shutdown()

    print(
        f"\n{'rows':>10} {'rows/s':>7} {'peak RSS':>9} {'of it: anon':>11} {'shmem':>6}"
        f" {'anon before':>11} {'ru_maxrss':>9}  (MiB)"
    )
    for r in results:
        print(
            f"{r['rows']:>10,} {r['rows_per_s']:>7,} {r['driver_peak_rss_mib']:>9.0f}"
            f" {r['driver_peak_anon_mib']:>11.0f} {r['driver_peak_shmem_mib']:>6.0f}"
            f" {r['driver_anon_before_mib']:>11.0f} {r['ru_maxrss_mib']:>9.0f}"
        )
    peaks = [r["driver_peak_rss_mib"] for r in results]
    anon = [r["driver_peak_anon_mib"] for r in results]
    ok = max(peaks) * 2**20 <= GOAL_BYTES
    print(
        f"driver peak at {results[-1]['rows']:,} rows / at {results[0]['rows']:,}: RSS "
        f"{peaks[-1] / peaks[0]:.3f}, private (anon) {anon[-1] / anon[0]:.3f} (goal ~1.0: "
        f"independent of rows); largest peak RSS {max(peaks):.0f} MiB vs goal "
        f"<= {GOAL_BYTES / 2**20:.0f} MiB: {'reached' if ok else 'NOT reached'}"
    )
    # the sizes run one after another in one process, so each starts from what the last left
    # (Python keeps freed arenas): the call's own cost is its peak over what it started from
    added = [r["driver_peak_anon_mib"] - r["driver_anon_before_mib"] for r in results]
    print(
        "private memory the call added over the driver's before it: "
        + ", ".join(f"{r['rows']:,} rows +{a:.0f} MiB" for r, a in zip(results, added, strict=True))
        + f" (ratio {added[-1] / max(added[0], 1e-9):.2f})"
    )


if __name__ == "__main__":
    main()
