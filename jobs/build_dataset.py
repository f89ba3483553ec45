"""`ray job submit --working-dir . -- python jobs/build_dataset.py --config jobs/configs/build_gpu.yaml`

Dataset construction as one Ray job: the same code as `ptr-ray build`. Inside a job the driver
attaches to the cluster (set `ray.address: auto` in the config); the weak and strong engines
then run as Ray Data actor pools on the cluster's GPUs, sized by `weak.pool` / `strong.pool`
and each engine's `num_gpus` / `tensor_parallel_size`. Re-submitting with the same
`output.path` (on shared storage) resumes: rows already written are skipped.
"""

from __future__ import annotations

import sys

from ptr_ray.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Same arguments, config handling and one-line errors as ``ptr-ray build``."""
    return cli_main(["build", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
