"""The ``ptr-ray`` command: thin dispatch onto the stages' library functions.

Each stage subcommand takes ``--config FILE.yaml`` plus ``key.sub=value`` overrides, builds the
stage's pydantic config and calls one function. Heavy imports (vLLM, Ray, DeepSpeed) happen
inside the stage, so ``ptr-ray --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable

from ptr_ray.config import ConfigError, load_config
from ptr_ray.errors import PtrRayError

log = logging.getLogger(__name__)

# name -> (help, "module:ConfigClass", "module:function")
STAGES: dict[str, tuple[str, str, str]] = {
    "build": (
        "build a refinement dataset with Ray Data + weak/strong vLLM actors",
        "ptr_ray.config:BuildConfig",
        "ptr_ray.datagen.dataflow:run_build",
    ),
    "build-check": (
        "check the strong model beats the weak one on a labelled set (Wilcoxon)",
        "ptr_ray.config:BuildCheckConfig",
        "ptr_ray.eval.build_check:run_check",
    ),
    "train": (
        "fine-tune with the PTR loss on Ray Train + DeepSpeed",
        "ptr_ray.config:TrainConfig",
        "ptr_ray.train.trainer:run_train",
    ),
    "serve": (
        "serve a model with Ray Serve + FastAPI, N refinement rounds per request",
        "ptr_ray.config:ServeConfig",
        "ptr_ray.serve.app:run_serve",
    ),
    "eval": (
        "evaluate answer quality round by round on benchmarks",
        "ptr_ray.config:EvalConfig",
        "ptr_ray.eval.runner:run_eval",
    ),
    "run": (
        "the end-to-end pipeline: build, train PTR and IFT, evaluate base/IFT/PTR",
        "ptr_ray.config:PipelineConfig",
        "ptr_ray.pipeline:run_pipeline",
    ),
    "experiment": (
        "the paper's comparison under a fixed protocol: base/IFT/PTR, tested hypotheses",
        "ptr_ray.config:ExperimentConfig",
        "ptr_ray.experiment.runner:run_experiment",
    ),
    "smoke": (
        "load the packaged weak and strong models through vLLM and answer one query",
        "ptr_ray.config:SmokeConfig",
        "ptr_ray.smoke:run_smoke",
    ),
}


def _load(target: str) -> Callable | type:
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{target} is not available in this install ({e})") from e


def _run_stage(name: str, args: argparse.Namespace) -> int:
    _, cfg_target, fn_target = STAGES[name]
    cfg = load_config(_load(cfg_target), args.config, args.overrides)  # type: ignore[arg-type]
    fn = _load(fn_target)
    t0 = time.time()
    fn(cfg)  # type: ignore[operator]
    log.info("%s finished in %.1fs", name, time.time() - t0)
    return 0


def _models(args: argparse.Namespace) -> int:
    from ptr_ray import models

    if args.models_cmd == "list":
        rows = models.list_builtins()
        print(f"{'source':28} {'installed':9} {'prepared':8} description")
        for r in rows:
            print(
                f"{r['source']:28} {str(r['installed']):9} {str(r['prepared']):8} {r['description']}"
            )
        print(f"cache: {models.cache_dir()}")
        return 0
    for src in args.sources:
        t0 = time.time()
        print(f"{src} -> {models.resolve_model(src)} ({time.time() - t0:.1f}s)")
    return 0


def _refine(args: argparse.Namespace) -> int:
    fn = _load("ptr_ray.serve.client:refine_command")
    return int(fn(args) or 0)  # type: ignore[operator]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ptr-ray",
        description="Progressive Thought Refinement on Ray: build, train, serve, evaluate.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, (help_text, _, _) in STAGES.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--config", "-c", help="YAML config file")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        sp.set_defaults(func=lambda a, n=name: _run_stage(n, a))

    mp = sub.add_parser("models", help="list or prepare model sources")
    msub = mp.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="builtin models and whether each is prepared")
    pp = msub.add_parser("prepare", help="convert builtin models (or check any source resolves)")
    pp.add_argument("sources", nargs="+", help="e.g. builtin:smollm2-135m")
    mp.set_defaults(func=_models)

    rp = sub.add_parser(
        "refine", help="ask a running ptr-ray server; print each round as it arrives"
    )
    rp.add_argument("query")
    rp.add_argument("--rounds", type=int, default=3)
    rp.add_argument("--url", default="http://127.0.0.1:8000")
    rp.add_argument("--max-tokens", type=int, default=None)
    rp.add_argument("--temperature", type=float, default=None)
    rp.add_argument("--api-key", default=None, help="bearer token (default: $PTR_API_KEY)")
    rp.set_defaults(func=_refine)
    return p


def configure_logging(verbose: bool = False) -> None:
    """The process's logging, set once by the entry point (this CLI, the job scripts).

    Library modules only call ``logging.getLogger(__name__)``; Ray's workers get their logging
    from the ``LoggingConfig`` that :func:`ptr_ray.ray_utils.init_ray` passes to Ray.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"ptr-ray: error: {e}", file=sys.stderr)
        return 2
    except (PtrRayError, ValueError, FileNotFoundError) as e:
        # Errors meant for users (PtrRayError: ModelSourceError, DatasetError, ...; and plain
        # ValueErrors with one-line messages): show the line, not a traceback.
        if args.verbose:
            raise
        print(f"ptr-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
