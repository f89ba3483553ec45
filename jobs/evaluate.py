"""`ray job submit -- python jobs/evaluate.py --config jobs/configs/eval_gpu.yaml [key=value ...]`

The evaluation stage as one Ray job: every method of the config answers every task over N
refinement rounds (ptr_ray.eval.runner). With `ray:` set in the config (the GPU config sets
`address: auto`), evaluation runs inside a Ray task that holds the engines' GPU/CPUs; the
round-by-round table is printed to the job log and the report files go to `output_dir`.
"""

from __future__ import annotations

import sys

from ptr_ray.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Same arguments, config handling and one-line errors as ``ptr-ray eval``."""
    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
