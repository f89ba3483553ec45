"""The environment variables every ptr-ray process runs with, in one table.

Two ways in: :func:`apply_env` writes them into this process (the driver, an engine that starts
in it), and :func:`ray_env_vars` hands them to Ray as the job's ``runtime_env`` so workers on
any node get the same values (a worker on another node does not inherit the driver's
environment). A value the user already exported always wins, so a cluster can override any of
them. The Makefile exports the same telemetry switches for the shell's own commands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Everywhere: no telemetry, no tokenizer thread pools fighting Ray's workers, quiet engines.
DEFAULTS: dict[str, str] = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM's per-engine INFO lines drown the stages' own progress; export INFO to see them.
    "VLLM_LOGGING_LEVEL": "WARNING",
    # Ray's driver-side progress bars (Train workers' tqdm_ray) are redrawn around every print
    # by a patched print(); a bar whose close event is lost is then redrawn for the rest of
    # the run. Plain prints keep the pipeline's own output readable.
    "RAY_TQDM_PATCH_PRINT": "0",
}

#: Only where no GPU is visible: vLLM's CPU backend binds to loopback, DeepSpeed picks its CPU
#: accelerator without a warning. (The CPU KV-cache size comes from the engine's config.)
CPU_DEFAULTS: dict[str, str] = {
    "VLLM_HOST_IP": "127.0.0.1",
    "DS_ACCELERATOR": "cpu",
}

#: Passed on from the driver to Ray workers when set there: where builtin models are cached,
#: the CPU KV-cache size, offline hub mode, DeepSpeed's accelerator.
FORWARDED: tuple[str, ...] = (
    "PTR_RAY_CACHE",
    "VLLM_CPU_KVCACHE_SPACE",
    "HF_HUB_OFFLINE",
    "DS_ACCELERATOR",
)


def apply_env(extra: Mapping[str, str] | None = None, *, cpu: bool = False) -> None:
    """Set the defaults (plus the CPU ones and ``extra``) in ``os.environ`` where not exported."""
    for key, value in {**DEFAULTS, **(CPU_DEFAULTS if cpu else {}), **(extra or {})}.items():
        os.environ.setdefault(key, value)


def ray_env_vars(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``runtime_env["env_vars"]`` for a Ray job: the defaults (exported values win), the
    forwarded variables set in this process, then a stage's own ``extra``."""
    env = {key: os.environ.get(key, value) for key, value in DEFAULTS.items()}
    env.update({key: os.environ[key] for key in FORWARDED if key in os.environ})
    env.update(extra or {})
    return env
