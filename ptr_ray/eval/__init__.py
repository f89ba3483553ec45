"""Round-by-round evaluation: tasks, metrics, the multi-round runner, baselines and reports.

``evaluate(cfg)`` returns an :class:`EvalReport`; ``write_report(report, out_dir)`` writes the
JSON/CSV/Markdown/PNG files. Heavy modules (vLLM, matplotlib) load only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalReport", "evaluate", "run_eval", "write_report"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "run_eval"):
        from ptr_ray.eval import runner

        return getattr(runner, name)
    if name in ("EvalReport", "write_report"):
        from ptr_ray.eval import report

        return getattr(report, name)
    raise AttributeError(name)
