"""The end-to-end pipeline as one cluster job.

    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline_gpu.yaml

Same as ``ptr-ray run`` (build the dataset, train PTR and IFT, evaluate base / IFT / PTR round
by round): a thin wrapper, so the job and the CLI can never drift apart. ``--config FILE`` and
``key.sub=value`` overrides are passed through unchanged; a bad config exits with status 2 and a
one-line error before any work starts. On a cluster the config's ``ray.address`` sections must
be ``auto`` (the job's driver then joins the cluster instead of starting a private Ray).
"""

from __future__ import annotations

import sys

from ptr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
