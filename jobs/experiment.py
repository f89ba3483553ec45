"""The PTR experiment (base / IFT / PTR over N rounds, tested hypotheses) as one cluster job.

    ray job submit --working-dir . -- python jobs/experiment.py --config jobs/configs/experiment_local.yaml

Same as ``ptr-ray experiment``: a thin wrapper, so the job and the CLI can never drift apart.
``--config FILE`` and ``key.sub=value`` overrides are passed through unchanged; a bad config
exits with status 2 and a one-line error before any work starts. On a cluster the config's
``ray.address`` sections must be ``auto`` (the job's driver then joins the cluster).
"""

from __future__ import annotations

import sys

from ptr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
