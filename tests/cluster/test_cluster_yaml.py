"""cluster.yaml: valid for Ray's own autoscaler, and consistent with the project it launches.

Ray ships the JSON schema `ray up` checks (ray/autoscaler/ray-schema.json) and the code that
merges a config with the provider's defaults; both run here, offline. The rest checks what
the schema cannot know: the node shapes match the EC2 instance types, the image carries the
Ray and Python the project pins, nodes install ptr-ray the way the Makefile does, token auth
is on, and the GPU configs of the other stages fit on the node types this file offers.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"

# EC2 facts for the instance types cluster.yaml may use: (vCPUs, GPUs, GPU model).
EC2 = {
    "m6i.2xlarge": (8, 0, None),
    "m6i.4xlarge": (16, 0, None),
    "m6i.8xlarge": (32, 0, None),
    "g6.2xlarge": (8, 1, "L4"),
    "g6.12xlarge": (48, 4, "L4"),
    "g6.48xlarge": (192, 8, "L4"),
    "g5.12xlarge": (48, 4, "A10G"),
    "g5.48xlarge": (192, 8, "A10G"),
    "p4d.24xlarge": (96, 8, "A100"),
    "p5.48xlarge": (192, 8, "H100"),
}


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _workers(cluster: dict) -> dict[str, dict]:
    return {
        k: v for k, v in cluster["available_node_types"].items() if k != cluster["head_node_type"]
    }


def test_valid_against_rays_autoscaler_schema(cluster, schema):
    jsonschema.validate(cluster, schema)  # the file as written


def test_valid_after_rays_own_preparation(cluster):
    """What `ray up` does before launching: merge the AWS defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_schema_check_is_not_vacuous(cluster, schema):
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["head"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(cluster)
    next(iter(_workers(bad).values()))["resources"]["GPU"] = 0.5  # resources are integers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_node_labels_are_valid_ray_labels(cluster):
    from ray._private.label_utils import validate_node_label_syntax

    for name, node in cluster["available_node_types"].items():
        validate_node_label_syntax(node.get("labels"))
        assert "ptr-ray.io/pool" in node.get("labels", {}), name


def test_node_shapes_match_their_instance_types(cluster):
    for name, node in cluster["available_node_types"].items():
        itype = node["node_config"]["InstanceType"]
        assert itype in EC2, f"{name}: add {itype} to the EC2 table of this test"
        vcpus, gpus, _ = EC2[itype]
        res = node["resources"]
        assert res.get("GPU", 0) == gpus, f"{name}: {itype} has {gpus} GPUs, config says {res}"
        if name != cluster["head_node_type"]:
            assert res.get("CPU") == vcpus, f"{name}: {itype} has {vcpus} vCPUs, config says {res}"


def test_cpu_head_gpu_workers_for_vllm_and_training_and_spot(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0, (
        "the head hosts drivers, GCS and dashboard only"
    )
    workers = _workers(cluster)
    pools = {v["labels"]["ptr-ray.io/pool"]: v for v in workers.values()}
    assert {"vllm", "train", "cpu"} <= set(pools)
    assert pools["vllm"]["resources"]["GPU"] >= 1 and pools["train"]["resources"]["GPU"] >= 1
    spot = {
        k
        for k, v in workers.items()
        if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    }
    assert any(workers[k]["resources"].get("GPU", 0) for k in spot), "a spot GPU type for vLLM"
    # Training on spot loses a whole step on every reclaim: its type stays on-demand.
    train = next(k for k, v in workers.items() if v["labels"]["ptr-ray.io/pool"] == "train")
    assert train not in spot
    assert cluster["max_workers"] >= sum(v.get("max_workers", 0) for v in workers.values())
    for k, v in workers.items():
        assert v.get("min_workers", 0) == 0, f"{k}: GPU nodes should scale from zero"


def test_image_matches_the_pinned_ray_and_python(cluster):
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "constraints.txt").read_text().split()
        if "==" in line and not line.startswith("#")
    )
    image = cluster["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu", image)
    assert m, f"unexpected image {image}"
    assert m.group(1) == pins["ray"], (
        f"image Ray {m.group(1)} != constraints.txt ray=={pins['ray']}"
    )
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"3.{m.group(2)}" in ("3.11", "3.12") and ">=3.11" in requires


def test_nodes_install_ptr_ray_with_the_gpu_extra(cluster):
    setup = " && ".join(cluster["setup_commands"])
    assert "pip install -q -c constraints.txt -e '.[gpu]'" in setup
    assert "pip install -q --no-deps -c constraints.txt -r requirements/packaged.txt" in setup
    assert "cd ~/ptr-ray" in setup and cluster["file_mounts"]["~/ptr-ray"] == "."
    for path in ("constraints.txt", "requirements/packaged.txt", "pyproject.toml"):
        assert (REPO / path).is_file()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("vllm==") for d in extras["gpu"])
    # The code must reach the nodes: nothing under ptr_ray/ or jobs/ may be excluded.
    for pat in cluster["rsync_exclude"]:
        assert not pat.strip("/*").startswith(("ptr_ray", "jobs", "build")), pat
    assert ".gitignore" not in cluster.get("rsync_filter", [])


def test_token_auth_everywhere(cluster):
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--port=6379" in head and "--head" in head
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker
    shlex.split(head.replace(";", " "))  # well-formed shell


def test_shared_storage_is_mounted_into_the_container(cluster):
    assert "-v /mnt/shared:/mnt/shared" in cluster["docker"]["run_options"]
    init = " ".join(cluster["initialization_commands"])
    assert "/mnt/shared" in init and "mount -t nfs4" in init


# --- the other stages' GPU configs must fit this cluster ------------------------------------


def _gpu_capacity(cluster: dict) -> tuple[int, int]:
    """(GPUs of the largest node, GPUs of the whole cluster at max size)."""
    workers = _workers(cluster).values()
    per_node = max(v["resources"].get("GPU", 0) for v in workers)
    total = sum(v["resources"].get("GPU", 0) * v.get("max_workers", 0) for v in workers)
    return per_node, total


def _gpu_config(name: str) -> dict:
    path = REPO / name
    if not path.is_file():
        pytest.skip(f"{name} does not exist yet (written by another stage)")
    return yaml.safe_load(path.read_text())


def test_serve_gpu_replicas_fit_on_one_node(cluster):
    per_node, total = _gpu_capacity(cluster)
    serve = _gpu_config("serve_configs/gpu.yaml")
    for app in serve["applications"]:
        engine = (app.get("args") or {}).get("engine") or {}
        tp = int(engine.get("tensor_parallel_size", 1))
        for dep in app.get("deployments") or []:
            gpus = (dep.get("ray_actor_options") or {}).get("num_gpus", 0)
            assert gpus <= per_node, (
                f"{dep['name']} wants {gpus} GPUs per replica; nodes have {per_node}"
            )
            auto = dep.get("autoscaling_config") or {}
            assert gpus * auto.get("max_replicas", dep.get("num_replicas", 1) or 1) <= total
        assert tp <= per_node, "vLLM tensor parallelism must stay inside one node"


def test_train_gpu_workers_fit(cluster):
    per_node, total = _gpu_capacity(cluster)
    train = _gpu_config("jobs/configs/train_gpu.yaml")
    scaling = train.get("scaling") or {}
    if scaling.get("use_gpu"):
        gpw = scaling.get("gpus_per_worker", 1)
        assert gpw <= per_node
        assert scaling.get("num_workers", 1) * gpw <= total
    assert (train.get("ray") or {}).get("address") == "auto", "a job must join the cluster"


def test_eval_gpu_engine_fits(cluster):
    per_node, _ = _gpu_capacity(cluster)
    ev = _gpu_config("jobs/configs/eval_gpu.yaml")
    assert (ev.get("engine") or {}).get("num_gpus", 0) <= per_node
    assert (ev.get("ray") or {}).get("address") == "auto", "a job must join the cluster"


GPU_CONFIGS = (
    "jobs/configs/pipeline_gpu.yaml",
    "jobs/configs/build_gpu.yaml",
    "jobs/configs/train_gpu.yaml",
    "jobs/configs/eval_gpu.yaml",
    "serve_configs/gpu.yaml",
)


def mnt_paths(node: object) -> list[str]:
    """Every absolute /mnt/... string in a parsed config (where a stage reads or writes)."""
    if isinstance(node, dict):
        return [p for v in node.values() for p in mnt_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in mnt_paths(v)]
    return [node] if isinstance(node, str) and node.startswith("/mnt/") else []


def under(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_config_paths_are_on_shared_storage(cluster, name):
    """A path a GPU config uses must be a mount every container has: else a multi-node job
    writes checkpoints or results to one node's container disk, where nobody finds them."""
    path = REPO / name
    if not path.is_file():
        pytest.skip(f"{name} does not exist yet")
    mounts = {
        opt.split()[1].split(":")[1]
        for opt in cluster["docker"]["run_options"]
        if opt.startswith("-v ")
    }
    bad = [p for p in mnt_paths(yaml.safe_load(path.read_text())) if not under(p, mounts)]
    assert not bad, f"{name}: {bad} are outside the cluster's shared mounts {sorted(mounts)}"


def test_smoke_gpu_config_loads_and_fits(cluster):
    from ptr_ray.config import SmokeConfig, load_config

    cfg = load_config(SmokeConfig, REPO / "jobs/configs/smoke_gpu.yaml")
    per_node, _ = _gpu_capacity(cluster)
    assert cfg.engine.backend == "vllm" and 1 <= cfg.engine.num_gpus <= per_node
