"""``ray job submit`` of ``jobs/pipeline.py`` to a simulated cluster, which runs to the end with
each stage on its node type.

Cluster: a head with the dashboard (the job API; 0 CPUs, so the job's driver is its only
tenant), two ``vllm`` nodes and one ``train`` node. The pipeline config pins the build's weak
and strong pools and the evaluation task to ``pool_vllm`` and the training worker to
``pool_train``; every path in it is under the test's temp folder (the shared file system).
The job's driver joins the cluster through ``RAY_ADDRESS``, as on a real one (``ray.address:
local`` means "the cluster this job runs on"). Kept small: the packaged SmolLM2 on the
transformers engine builds the data, a tiny random model is trained (PTR only, 2 steps) and
evaluated on 3 ARC items.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[3]
RAY = Path(sys.executable).parent / "ray"
QUERIES = [
    "Explain why the sky is blue in two sentences.",
    "Write a Python function that returns the sum of a list of numbers.",
    "What is the capital of France and why is it important?",
    "Give three tips for writing clear technical documentation.",
    "How does a binary search work on a sorted list of numbers?",
    "Why do bicycles stay upright when they move?",
]


@pytest.fixture(scope="module")
def cluster(sim_cluster):
    return sim_cluster("vllm", "vllm", "train", dashboard=True)


def _pipeline_config(shared: Path, tiny_model_dir: Path, engine: dict) -> Path:
    src = shared / "queries.jsonl"
    src.write_text("".join(json.dumps({"query": q}) + "\n" for q in QUERIES))
    on_vllm = {**engine, "resources": {"pool_vllm": 1}}
    greedy = {"temperature": 0.0, "max_tokens": 16}
    cfg = {
        "output_dir": str(shared / "run"),
        "base_model": str(tiny_model_dir),
        "modes": ["ptr"],
        "ray": {"address": "local"},  # inside a job: the cluster the job was submitted to
        "build": {
            "sources": [{"kind": "jsonl", "path": str(src), "field": "query"}],
            "clean": {"min_tokens": 2, "max_tokens": 200},
            "dedupe": {"near": False},
            "decontaminate": {"enabled": False},
            "weak": {
                "models": [on_vllm],
                "num_thoughts": 2,
                "sampling": greedy,
                "pool": {"batch_size": 3},
            },
            "strong": {
                "model": on_vllm,
                "sampling": greedy,
                "num_icl": 0,
                "pool": {"batch_size": 3},
            },
            "consistency": {"method": "none"},
            "sft": {"fraction": 0.0},
        },
        "train": {
            "max_length": 512,
            "max_steps": 2,
            "checkpoint_every": 2,
            "progress": False,
            "deepspeed": {"zero_stage": 1},
            "scaling": {"num_workers": 1, "resources": {"pool_train": 1}},
        },
        "eval": {
            "tasks": ["arc_challenge"],
            "limit": 3,
            "rounds": 2,
            "engine": {
                "backend": "hf",
                "dtype": "float32",
                "max_model_len": 1024,
                "resources": {"pool_vllm": 1},
            },
            "sampling": {"max_tokens": 8},
            "ray": {"address": "local"},  # evaluate in a Ray task, on a vllm node
        },
    }
    path = shared / "pipeline_sim.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _api(cluster, path: str) -> dict:
    import httpx

    r = httpx.get(
        cluster.dashboard_url + path,
        timeout=30,
        headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"},
    )
    r.raise_for_status()
    return r.json()


def test_pipeline_job_finishes_on_the_simulated_cluster(
    cluster, tiny_model_dir, smollm_engine, tmp_path
):
    shared = tmp_path / "shared"
    shared.mkdir()
    config = _pipeline_config(shared, tiny_model_dir, smollm_engine)
    wd = tmp_path / "job-wd"  # the working dir uploaded with the job: the entry points only
    shutil.copytree(
        REPO / "jobs", wd / "jobs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    sid = f"ptr-sim-pipeline-{secrets.token_hex(4)}"
    t0 = time.time()
    res = subprocess.run(
        [
            str(RAY),
            "job",
            "submit",
            "--address",
            cluster.dashboard_url,
            "--submission-id",
            sid,
            "--working-dir",
            str(wd),
            "--",
            "python",
            "jobs/pipeline.py",
            "--config",
            str(config),
            "--debug",  # a failure in the job shows its traceback in this test's message
        ],
        capture_output=True,
        text=True,
        timeout=1100,
        cwd=tmp_path,
    )
    wall = time.time() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"ray job submit failed ({res.returncode}):\n{out[-6000:]}"
    print(f"job {sid}: submit to finish {wall:.1f}s")
    assert _api(cluster, f"/api/jobs/{sid}")["status"] == "SUCCEEDED"
    logs = _api(cluster, f"/api/jobs/{sid}/logs")["logs"]
    assert "running inside a Ray job: joining" in logs, logs[-3000:]

    # every stage finished, into the one shared folder
    run = shared / "run"
    stats = json.loads((run / "dataset" / "stats.json").read_text())
    assert stats["status"] == "finished" and stats["rows_out"] > 0, stats
    assert (run / "train-ptr" / "model" / "config.json").is_file()
    results = json.loads((run / "eval" / "results.json").read_text())
    assert {r["method"] for r in results["results"]} == {"base", "ptr"}

    # ... each on its node type: the two pools on two vllm nodes, the worker on the train node
    weak, strong = cluster.actors("WeakThoughts"), cluster.actors("StrongAnswers")
    assert len(weak) == len(strong) == 1, (weak, strong)
    nodes = {weak[0]["Address"]["NodeID"], strong[0]["Address"]["NodeID"]}
    assert len(nodes) == 2 and {cluster.kind_of(n) for n in nodes} == {"vllm"}
    workers = cluster.actors("RayTrainWorker")
    assert workers and {cluster.kind_of(a["Address"]["NodeID"]) for a in workers} == {"train"}
