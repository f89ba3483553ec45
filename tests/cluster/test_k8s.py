"""KubeRay manifests (k8s/): parsed and checked field by field, and kept in sync with the repo.

No Kubernetes API server here, so the checks are the ones that break a deployment in
practice: the CRD kinds and API version, what the job runs and where its code is, the Ray
version and token auth, head without tasks, GPU limits on the worker groups (equal to the
requests, as Kubernetes demands for extended resources), volumes that exist, one image
everywhere, the Serve config embedded verbatim, and the other stages' GPU configs fitting the
worker groups. ``kubectl kustomize`` (client-side, offline) runs when kubectl is installed.
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
PIPELINE_ENTRYPOINT = "python jobs/pipeline.py --config jobs/configs/pipeline_gpu.yaml"


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [d for d in _docs() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in k8s/, found {len(found)}"
    return found[0]


def _cluster_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["rayClusterSpec" if obj["kind"] == "RayJob" else "rayClusterConfig"]


def _pods(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def _gpus(pod: dict[str, Any]) -> int:
    return sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for c in pod["containers"]
    )


def _pins() -> dict[str, str]:
    return dict(
        ln.split("==", 1)
        for ln in (REPO / "constraints.txt").read_text().split()
        if "==" in ln and not ln.startswith("#")
    )


def _dockerfile() -> str:
    return (K8S / "Dockerfile").read_text()


@pytest.fixture(params=["RayJob", "RayService"])
def ray_obj(request) -> dict[str, Any]:
    return _one(request.param)


def test_api_version_and_kinds():
    kinds = sorted(d["kind"] for d in _docs())
    assert kinds == ["PersistentVolumeClaim", "RayJob", "RayService"]
    for d in _docs():
        if d["kind"].startswith("Ray"):
            assert d["apiVersion"] == "ray.io/v1"
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])


def test_ray_cluster_spec(ray_obj):
    spec = _cluster_spec(ray_obj)
    assert spec["rayVersion"] == _pins()["ray"]
    assert spec["authOptions"]["mode"] == "token", "Ray 2.60 CLI/dashboard expect token auth"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no tasks or actors on the head"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for group in [head, *spec["workerGroupSpecs"]]:
        # KubeRay's rayStartParams is map[string]string: a YAML int or bool is rejected.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group
    ports = {
        p["name"]: p["containerPort"]
        for p in head["template"]["spec"]["containers"][0].get("ports", [])
    }
    assert ports.get("dashboard") == 8265 and ports.get("gcs-server") == 6379
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], g["groupName"]


def test_pods_gpu_limits_volumes_and_image(ray_obj):
    spec = _cluster_spec(ray_obj)
    images = set()
    for name, pod in _pods(spec):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            images.add(c["image"])
            res = c["resources"]
            assert res["limits"].get("cpu") and res["limits"].get("memory"), (name, res)
            if "nvidia.com/gpu" in res.get("requests", {}):
                assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for m in mounts.values():
                assert m["name"] in volumes, f"{name}: mount of undeclared volume {m['name']}"
            assert "/mnt/shared" in mounts, f"{name}: no shared storage"
        if name == "head":
            assert _gpus(pod) == 0, "the head is CPU-only"
        elif _gpus(pod):
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), name
            assert "/dev/shm" in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}, (
                f"{name}: vLLM/NCCL need a large /dev/shm"
            )
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in volumes.values()
            if "persistentVolumeClaim" in v
        }
        assert claims <= {_one("PersistentVolumeClaim")["metadata"]["name"]}
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert images == {f"ptr-ray:{version}-gpu"}, images


def test_rayjob_runs_the_pipeline():
    job = _one("RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] == PIPELINE_ENTRYPOINT
    argv = shlex.split(spec["entrypoint"])
    assert (REPO / argv[1]).is_file(), f"{argv[1]} missing"
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR (\S+)", _dockerfile(), re.M)[1]
    assert env["working_dir"] == workdir, "relative paths of the entrypoint resolve in working_dir"
    assert "COPY --chown=ray:users jobs/ jobs/" in _dockerfile()
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    pools = {
        g["template"]["metadata"]["labels"]["ptr-ray.io/pool"]: g
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
    }
    assert {"vllm", "train", "cpu"} <= set(pools)
    assert _gpus(pools["vllm"]["template"]["spec"]) >= 1
    assert _gpus(pools["train"]["template"]["spec"]) >= 1
    assert _gpus(pools["cpu"]["template"]["spec"]) == 0
    spot = pools["vllm"]["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"]
    assert spot == "SPOT"
    assert (
        pools["train"]["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"]
        == "ON_DEMAND"
    )


def test_rayjob_config_loads_and_joins_the_cluster():
    path = REPO / "jobs/configs/pipeline_gpu.yaml"
    if not path.is_file():
        pytest.skip("jobs/configs/pipeline_gpu.yaml not written yet (pipeline stage)")
    config = importlib.import_module("ptr_ray.config")
    cls = getattr(config, "PipelineConfig", None)
    if cls is None:
        pytest.skip("ptr_ray.config.PipelineConfig not defined yet (pipeline stage)")
    cfg = config.load_config(cls, path)
    rays = [v for v in _walk(cfg) if isinstance(v, config.RayConfig)]
    for r in rays:
        assert r.address != "local", "a job on a cluster must join it (ray.address: auto)"


def _walk(obj: Any):
    from pydantic import BaseModel

    yield obj
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk(getattr(obj, name))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)


def test_rayservice_embeds_serve_configs_gpu_yaml():
    svc = _one("RayService")
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert isinstance(serve, dict) and serve.get("applications"), "serveConfigV2: no applications"
    for app in serve["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert attr and module.startswith("ptr_ray."), app["import_path"]
    gpu = REPO / "serve_configs/gpu.yaml"
    if not gpu.is_file():
        pytest.skip("serve_configs/gpu.yaml not written yet (serve stage)")
    source = yaml.safe_load(gpu.read_text())
    assert [a["import_path"] for a in serve["applications"]] == [
        a["import_path"] for a in source["applications"]
    ]
    assert serve == source, "k8s/rayservice.yaml is stale: run python k8s/sync_serve_config.py"
    res = subprocess.run(
        [sys.executable, str(K8S / "sync_serve_config.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_rayservice_import_path_resolves():
    svc = _one("RayService")
    for app in yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]:
        module, _, attr = app["import_path"].partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            pytest.skip(f"{module} not importable yet ({e})")
        assert callable(getattr(mod, attr, None)), app["import_path"]


def test_rayservice_replicas_fit_the_serve_group():
    svc = _one("RayService")
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    groups = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    per_pod = max(_gpus(g["template"]["spec"]) for g in groups)
    total = sum(_gpus(g["template"]["spec"]) * g["maxReplicas"] for g in groups)
    for app in serve["applications"]:
        tp = int(((app.get("args") or {}).get("engine") or {}).get("tensor_parallel_size", 1))
        assert tp <= per_pod, "vLLM tensor parallelism must fit inside one pod"
        for dep in app.get("deployments") or []:
            gpus = (dep.get("ray_actor_options") or {}).get("num_gpus", 0)
            auto = dep.get("autoscaling_config") or {}
            assert gpus <= per_pod
            assert gpus * auto.get("max_replicas", dep.get("num_replicas") or 1) <= total
            if gpus:
                assert auto.get("min_replicas", 1) * gpus <= sum(
                    _gpus(g["template"]["spec"]) * g["minReplicas"] for g in groups
                ), "minReplicas of the GPU group must hold the Serve minimum"


def test_rayjob_groups_fit_the_gpu_job_configs():
    groups = _cluster_spec(_one("RayJob"))["workerGroupSpecs"]
    per_pod = max(_gpus(g["template"]["spec"]) for g in groups)
    total = sum(_gpus(g["template"]["spec"]) * g["maxReplicas"] for g in groups)
    checked = 0
    train = REPO / "jobs/configs/train_gpu.yaml"
    if train.is_file():
        s = yaml.safe_load(train.read_text()).get("scaling") or {}
        if s.get("use_gpu"):
            assert s.get("gpus_per_worker", 1) <= per_pod
            assert s.get("num_workers", 1) * s.get("gpus_per_worker", 1) <= total
        checked += 1
    ev = REPO / "jobs/configs/eval_gpu.yaml"
    if ev.is_file():
        assert (yaml.safe_load(ev.read_text()).get("engine") or {}).get("num_gpus", 0) <= per_pod
        checked += 1
    if not checked:
        pytest.skip("no GPU job configs yet")


def test_dockerfile_installs_the_gpu_extra_on_the_pinned_ray():
    df = _dockerfile()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu$", df, re.M)
    assert base and base[1] == _pins()["ray"], "image Ray must equal constraints.txt's pin"
    assert "pip install --no-cache-dir -c constraints.txt -e '.[gpu]'" in df
    assert (
        "pip install --no-cache-dir --no-deps -c constraints.txt -r requirements/packaged.txt" in df
    )
    for src in re.findall(r"^COPY --chown=\S+ (.+) \S+$", df, re.M):
        for item in src.split():
            assert (REPO / item.rstrip("/")).exists(), f"Dockerfile copies missing {item}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_and_rewrites_every_image(tmp_path):
    k = tmp_path / "k8s"
    shutil.copytree(K8S, k)
    kust = yaml.safe_load((k / "kustomization.yaml").read_text())
    kust["images"] = [{"name": "ptr-ray", "newName": "registry.example/ptr-ray", "newTag": "t1"}]
    (k / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    res = subprocess.run(
        ["kubectl", "kustomize", str(k)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    built = [d for d in yaml.safe_load_all(res.stdout) if d]
    images = [
        c["image"]
        for d in built
        if d["kind"].startswith("Ray")
        for _, pod in _pods(_cluster_spec(d))
        for c in pod["containers"]
    ]
    assert images and set(images) == {"registry.example/ptr-ray:t1"}


def test_gpu_config_paths_are_mounted_in_the_pods():
    """Every /mnt/... path of the GPU configs is a volume mount of the pods that use it."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("cy", Path(__file__).with_name("test_cluster_yaml.py"))
    cy = module_from_spec(spec)
    spec.loader.exec_module(cy)
    checked = 0
    for name in cy.GPU_CONFIGS:
        path = REPO / name
        if not path.is_file():
            continue
        obj = _one("RayService" if name.startswith("serve_configs") else "RayJob")
        for group, pod in _pods(_cluster_spec(obj)):
            mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            bad = [
                p for p in cy.mnt_paths(yaml.safe_load(path.read_text())) if not cy.under(p, mounts)
            ]
            assert not bad, f"{name}: {bad} not mounted in {obj['kind']} group {group}"
        checked += 1
    if not checked:
        pytest.skip("no GPU configs yet")
