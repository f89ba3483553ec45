"""The ``ptr-ray`` command: thin dispatch onto the stages' library functions.

Each stage subcommand takes ``--config FILE.yaml`` plus ``key.sub=value`` overrides, builds the
stage's pydantic config and calls one function. Heavy imports (vLLM, Ray, DeepSpeed) happen
inside the stage, so ``ptr-ray --help`` answers at once.

Failures a user can cause are one line on stderr, ``ptr-ray: error: <what, naming the file, key
or limit>``, and an exit status (:func:`expected_failure` is the one mapping):

- 2: the command line, a config or an input is wrong (``PtrRayValueError``, ``ConfigError``,
  an undecodable file); argparse's usage errors use 2 as well;
- 1: the run failed for another reason the user can act on (``PtrRayError`` such as
  ``TrainingFailed``; an ``OSError`` such as a permission denied or a full disk, naming the
  path; a file lock that another process holds);
- 130: interrupted (Ctrl-C);
- 70: anything else is a bug: its traceback, then one line saying so.

``--debug`` shows the traceback of expected failures too. An error raised inside a Ray task
arrives wrapped (``RayTaskError``); it is unwrapped and judged by its cause.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable

from ptr_ray.config import ConfigError, load_config
from ptr_ray.errors import PtrRayError, PtrRayValueError

log = logging.getLogger(__name__)

EXIT_FAILED = 1  # the run failed for a reason the user can act on
EXIT_USAGE = 2  # the command line, a config or an input is wrong (argparse uses 2 too)
EXIT_BUG = 70  # an unexpected exception: a bug (sysexits.h EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

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
    if not args.query.strip():  # checked here too: the client raises a plain ValueError
        raise PtrRayValueError("the query is empty; give the question as the argument")
    fn = _load("ptr_ray.serve.client:refine_command")
    return int(fn(args) or 0)  # type: ignore[operator]


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the subcommand (`ptr-ray build --debug -c x.yaml`,
    # which is also how the job scripts in jobs/ pass it). SUPPRESS, and no set_defaults (the
    # parsers share this action), keep a subcommand from overwriting a --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of every error, not only of bugs",
    )
    p = argparse.ArgumentParser(
        prog="ptr-ray",
        description="Progressive Thought Refinement on Ray: build, train, serve, evaluate.",
        epilog="Exit status: 0 done, 1 the run failed, 2 bad command line/config/input, "
        "70 a bug (traceback shown), 130 interrupted.",
        parents=[debug],
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, (help_text, _, _) in STAGES.items():
        sp = sub.add_parser(name, help=help_text, description=help_text, parents=[debug])
        sp.add_argument("--config", "-c", help="YAML config file")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        sp.set_defaults(func=lambda a, n=name: _run_stage(n, a))

    mp = sub.add_parser("models", help="list or prepare model sources", parents=[debug])
    msub = mp.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="builtin models and whether each is prepared", parents=[debug])
    pp = msub.add_parser(
        "prepare",
        help="convert builtin models (or check any source resolves)",
        parents=[debug],
    )
    pp.add_argument("sources", nargs="+", help="e.g. builtin:smollm2-135m")
    mp.set_defaults(func=_models)

    rp = sub.add_parser(
        "refine",
        help="ask a running ptr-ray server; print each round as it arrives",
        parents=[debug],
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


def unwrap(exc: BaseException) -> BaseException:
    """The exception a user's failure really is, out of Ray's wrappers.

    ``ray.get`` raises a ``RayTaskError`` (whose message is the remote traceback) around the
    task's own exception, and Ray Data puts a ``UserCodeException`` in between. Ray is only
    consulted when it is already imported: otherwise none of its exceptions can be in flight.
    """
    if "ray" not in sys.modules:
        return exc
    from ray.exceptions import RayTaskError, UserCodeException

    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner: object = None
        if isinstance(exc, RayTaskError):
            inner = exc.cause
        elif isinstance(exc, UserCodeException):
            inner = exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _os_error(e: OSError) -> str:
    what = e.strerror or _one_line(str(e)) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    if not paths:
        return f"{type(e).__name__}: {what}"
    hint = (
        "; check its permissions or choose another path" if isinstance(e, PermissionError) else ""
    )
    return f"{' -> '.join(paths)}: {what}{hint}"


def expected_failure(exc: BaseException) -> tuple[int, str] | None:
    """``(exit status, one-line message)`` for a failure a user can cause; None for a bug."""
    exc = unwrap(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, PtrRayError):
        msg = _one_line(str(exc)) or type(exc).__name__
        return (EXIT_USAGE if isinstance(exc, PtrRayValueError) else EXIT_FAILED), msg
    if isinstance(exc, UnicodeDecodeError):  # a reader that did not name its file: say so
        byte = bytes(exc.object[exc.start : exc.start + 1]).hex()
        return EXIT_USAGE, (
            f"an input file is not UTF-8 text (byte 0x{byte} at offset {exc.start}: "
            f"{exc.reason}); run with --debug to see which file"
        )
    filelock = sys.modules.get("filelock")
    if filelock is not None and isinstance(exc, filelock.Timeout):
        return EXIT_FAILED, (
            f"timed out waiting for the lock {exc.lock_file}: another process holds it "
            "(a concurrent ptr-ray run?); wait for it to finish"
        )
    if isinstance(exc, OSError):
        return EXIT_FAILED, _os_error(exc)
    return None


def report(exc: BaseException, debug: bool = False) -> int:
    """Print ``exc`` the way the CLI does (see the module docstring); returns the exit status."""
    judged = expected_failure(exc)
    if judged is not None:
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        status, msg = judged
        print(f"ptr-ray: error: {msg}", file=sys.stderr)
        return status
    traceback.print_exception(exc, file=sys.stderr)
    cause = unwrap(exc)
    first = (str(cause).strip().splitlines() or [""])[0]
    print(
        f"ptr-ray: internal error: {type(cause).__name__}: {first} -- this is a bug in ptr-ray "
        "(or a library it uses), not a problem with your input; please report it to the "
        "ptr-ray maintainers with the traceback above and the command you ran",
        file=sys.stderr,
    )
    return EXIT_BUG


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the one place that reports
        return report(e, debug=getattr(args, "debug", False))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
