"""`ray job submit -- python jobs/evaluate.py --config jobs/configs/eval_gpu.yaml [key=value ...]`

The evaluation stage as one Ray job: every method of the config answers every task over N
refinement rounds (ptr_ray.eval.runner). With `ray:` set in the config (the GPU config sets
`address: auto`), evaluation runs inside a Ray task that holds the engines' GPU/CPUs; the
round-by-round table is printed to the job log and the report files go to `output_dir`.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from ptr_ray.config import ConfigError, EvalConfig, load_config
    from ptr_ray.eval.runner import run_eval

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", "-c", default="jobs/configs/eval_local.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(EvalConfig, args.config, args.overrides)
        run_eval(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
