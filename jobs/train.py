"""``ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train_gpu.yaml``.

A thin entry point for Ray Jobs: the same config and code as ``ptr-ray train``.
"""

from __future__ import annotations

import sys

from ptr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
