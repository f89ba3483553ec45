"""The Grafana dashboards in ops/grafana: generated from make_dashboards.py, valid dashboard
JSON, and every query names a metric that ptr-ray or vLLM really exports (by its name on Ray's
Prometheus endpoint) and labels those metrics carry."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from ptr_ray.datagen.metrics import METRICS as BUILD_METRICS
from ptr_ray.engine.vllm_metrics import REPLICA_TAG, ROLE_TAG
from ptr_ray.serve.metrics import ENGINE_METRICS, INGRESS_METRICS

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "ops" / "grafana"


def _generator():
    spec = importlib.util.spec_from_file_location("make_dashboards", GRAFANA / "make_dashboards.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _generator()


def exported(name: str, kind: str) -> set[str]:
    """The sample names Ray's endpoint shows for a metric made as ``name``."""
    base = "ray_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
    if kind == "counter":
        return {base if base.endswith("_total") else base + "_total"}
    if kind == "histogram":
        return {base + s for s in ("_bucket", "_sum", "_count")}
    return {base}


def vllm_metrics() -> dict[str, str]:
    """vLLM's stat-logger metrics, ``{vllm:name: kind}``, read from its source (without
    importing vLLM): the ones RayPrometheusStatLogger records."""
    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations
    src = (Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py").read_text()
    found = dict(
        (name, kind)
        for kind, name in re.findall(
            r'self\._(gauge|counter|histogram)_cls\(\s*name="([^"]+)"', src
        )
    )
    assert len(found) > 20 and "vllm:num_requests_running" in found
    return found


def known_names() -> set[str]:
    names: set[str] = set()
    for spec in (*INGRESS_METRICS.values(), *ENGINE_METRICS.values()):
        names |= exported(spec[0], spec[1])
    for name, (kind, _, _) in BUILD_METRICS.items():
        names |= exported(name, kind)
    for name, kind in vllm_metrics().items():
        names |= exported(name, kind)
    return names


def known_labels() -> set[str]:
    labels = {"le", "model_name", "engine", "finished_reason", REPLICA_TAG, ROLE_TAG}
    labels |= {"application", "deployment", "replica"}  # Serve's, on ray.serve.metrics
    for spec in (*INGRESS_METRICS.values(), *ENGINE_METRICS.values()):
        labels |= set(spec[3])
    for _, _, keys in BUILD_METRICS.values():
        labels |= set(keys)
    return labels


def dashboards() -> dict[str, dict]:
    return {name: json.loads((GRAFANA / name).read_text()) for name in GEN.DASHBOARDS}


def queries(d: dict) -> list[str]:
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    out += [v["query"]["query"] for v in d["templating"]["list"] if v["type"] == "query"]
    return out


def test_committed_json_is_what_the_generator_writes():
    for name, make in GEN.DASHBOARDS.items():
        assert (GRAFANA / name).read_text() == GEN.render(make), (
            f"{name} is stale: run .venv/bin/python ops/grafana/make_dashboards.py"
        )


@pytest.mark.parametrize("name", list(GEN.DASHBOARDS))
def test_dashboard_is_well_formed(name):
    d = dashboards()[name]
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 27
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in d["templating"]["list"]][0] == "datasource"
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat")
        assert p["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)) and all(t["expr"] for t in p["targets"])
    # panels never overlap
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], x, y)
                cells.add((x, y))


@pytest.mark.parametrize("name", list(GEN.DASHBOARDS))
def test_every_query_names_a_metric_the_code_exports(name):
    names, labels = known_names(), known_labels()
    used = set()
    for q in queries(dashboards()[name]):
        assert q.count("(") == q.count(")") and q.count("{") == q.count("}"), q
        metrics = re.findall(r"\bray_[A-Za-z0-9_]+", q)
        assert metrics, q
        for m in metrics:
            assert m in names, f"{name}: {m} is not exported by ptr-ray or vLLM ({q})"
            used.add(m)
        for group in re.findall(r"\bby \(([^)]*)\)", q):
            for label in (s.strip() for s in group.split(",")):
                assert label in labels, f"{name}: unknown label {label!r} in {q}"
        for label in re.findall(r"[{,]\s*([A-Za-z_]+)\s*[=!]~?", q):
            assert label in labels, f"{name}: unknown label {label!r} in {q}"
        for label in re.findall(r"label_values\([^,]+,\s*(\w+)\)", q):
            assert label in labels, q
    # the dashboards cover what the issue asks for
    must = {
        "ray_vllm_num_requests_running",
        "ray_vllm_num_requests_waiting",
        "ray_vllm_kv_cache_usage_perc",
        "ray_vllm_prefix_cache_hits_total",
        "ray_vllm_generation_tokens_total",
    }
    must |= (
        {"ray_ptr_requests_total", "ray_ptr_tokens_total", "ray_ptr_round_latency_seconds_bucket"}
        if "serve" in name
        else {"ray_ptr_build_rows_in_total", "ray_ptr_build_rows_dropped_total"}
        | {"ray_ptr_build_rows_out_total", "ray_ptr_build_tokens_total"}
    )
    assert must <= used, must - used


def test_a_misspelt_metric_would_be_caught():
    assert "ray_vllm_num_requests_runing" not in known_names()
    assert "ray_ptr_build_rows_in" not in known_names()  # a counter is only there with _total
