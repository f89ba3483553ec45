"""`ray job submit --working-dir . -- python jobs/build_dataset.py --config jobs/configs/build_gpu.yaml`

Dataset construction as one Ray job: the same code as `ptr-ray build`. Inside a job the driver
attaches to the cluster (set `ray.address: auto` in the config); the weak and strong engines
then run as Ray Data actor pools on the cluster's GPUs, sized by `weak.pool` / `strong.pool`
and each engine's `num_gpus` / `tensor_parallel_size`. Re-submitting with the same
`output.path` (on shared storage) resumes: rows already written are skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from ptr_ray.config import BuildConfig, ConfigError, load_config
    from ptr_ray.build.pipeline import run_build

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", "-c", default="jobs/configs/build_local.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(BuildConfig, args.config, args.overrides)
        out = run_build(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"build_dataset: error: {e}", file=sys.stderr)
        return 2
    print(f"dataset written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
