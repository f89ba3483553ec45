"""Writes ptr-ray's Grafana dashboards: ``ptr-ray-serve.json`` and ``ptr-ray-build.json``.

    .venv/bin/python ops/grafana/make_dashboards.py        # rewrites the two JSON files here

The panels are defined here, once, and the JSON files are generated from them (a test checks
that the committed files are what this script writes, and that every query names a metric
ptr-ray or vLLM really exports). Queries use the names on Ray's Prometheus endpoint: Ray puts
``ray_`` in front of every application metric, vLLM's ``vllm:x`` becomes ``ray_vllm_x``,
counters end in ``_total`` and histograms export ``_bucket``/``_sum``/``_count``.

Both dashboards read the data source ``${datasource}`` (Ray's provisioning calls it
``Prometheus``); copy them into Grafana's dashboard folder (README, "Metrics").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
ENGINE = 'role=~"$role", model_name=~"$model"'


def _datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def _query_var(name: str, label: str, metric: str, key: str) -> dict[str, Any]:
    q = f"label_values({metric}, {key})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": q,
        "query": {"query": q, "refId": f"{name}-values"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "hide": 0,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


class Layout:
    """Places panels left to right, two per row (or one full-width), and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        description: str = "",
        kind: str = "timeseries",
        width: int = 12,
    ) -> None:
        if self.x + width > 24:
            self.x, self.y = 0, self.y + 8
        p: dict[str, Any] = {
            "id": self._id(),
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "timeseries":
            p["options"] = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "none"},
            }
        else:  # stat
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}}
        self.panels.append(p)
        self.x += width
        if self.x >= 24:
            self.x, self.y = 0, self.y + 8


def _dashboard(uid: str, title: str, variables: list[dict], layout: Layout) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["ptr-ray"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": layout.panels,
    }


def _engine_panels(lay: Layout) -> None:
    """vLLM's own stats, one series per role and model (the ``role`` label ptr-ray adds)."""
    by = "role, model_name"
    lay.panel(
        "Generated tokens / s",
        [
            (
                f"sum by ({by}) (rate(ray_vllm_generation_tokens_total{{{ENGINE}}}[{RATE}]))",
                "{{role}} {{model_name}}",
            )
        ],
        description="decode throughput of the engines",
    )
    lay.panel(
        "Prompt tokens / s",
        [
            (
                f"sum by ({by}) (rate(ray_vllm_prompt_tokens_total{{{ENGINE}}}[{RATE}]))",
                "{{role}} {{model_name}}",
            )
        ],
        description="prefill throughput (cached tokens included)",
    )
    lay.panel(
        "Requests running / waiting",
        [
            (f"sum by ({by}) (ray_vllm_num_requests_running{{{ENGINE}}})", "running {{role}}"),
            (f"sum by ({by}) (ray_vllm_num_requests_waiting{{{ENGINE}}})", "waiting {{role}}"),
        ],
        description="in vLLM's scheduler: in the running batch, and queued for room",
    )
    lay.panel(
        "KV-cache usage",
        [
            (
                f"max by ({by}, ReplicaId) (ray_vllm_kv_cache_usage_perc{{{ENGINE}}})",
                "{{role}} {{model_name}} {{ReplicaId}}",
            )
        ],
        unit="percentunit",
        description="share of KV-cache blocks in use (1 = full: requests wait or are preempted)",
    )
    lay.panel(
        "Prefix-cache hit rate",
        [
            (
                f"sum by ({by}) (rate(ray_vllm_prefix_cache_hits_total{{{ENGINE}}}[{RATE}]))"
                f" / sum by ({by}) "
                f"(rate(ray_vllm_prefix_cache_queries_total{{{ENGINE}}}[{RATE}]))",
                "{{role}} {{model_name}}",
            )
        ],
        unit="percentunit",
        description="prompt tokens found in the prefix cache / prompt tokens looked up "
        "(refinement rounds re-send the conversation, so this should be high when serving)",
    )
    lay.panel(
        "Time to first token (p50, p95)",
        [
            (
                f"histogram_quantile({q}, sum by (le, {by}) "
                f"(rate(ray_vllm_time_to_first_token_seconds_bucket{{{ENGINE}}}[{RATE}])))",
                f"p{int(q * 100)} {{{{role}}}}",
            )
            for q in (0.5, 0.95)
        ],
        unit="s",
    )
    lay.panel(
        "Request latency in the engine (p50, p95)",
        [
            (
                f"histogram_quantile({q}, sum by (le, {by}) "
                f"(rate(ray_vllm_e2e_request_latency_seconds_bucket{{{ENGINE}}}[{RATE}])))",
                f"p{int(q * 100)} {{{{role}}}}",
            )
            for q in (0.5, 0.95)
        ],
        unit="s",
    )
    lay.panel(
        "Finished requests / s, preemptions / s",
        [
            (
                f"sum by ({by}, finished_reason) "
                f"(rate(ray_vllm_request_success_total{{{ENGINE}}}[{RATE}]))",
                "{{role}} {{finished_reason}}",
            ),
            (
                f"sum by ({by}) (rate(ray_vllm_num_preemptions_total{{{ENGINE}}}[{RATE}]))",
                "preempted {{role}}",
            ),
        ],
    )


def serve_dashboard() -> dict[str, Any]:
    lay = Layout()
    lay.row("Refinement API (ptr-ray ingress)")
    lay.panel(
        "Requests / s by route and status",
        [
            (
                f"sum by (route, status) (rate(ray_ptr_requests_total[{RATE}]))",
                "{{route}} {{status}}",
            )
        ],
        unit="reqps",
    )
    lay.panel(
        "Rounds / s",
        [(f"sum by (model) (rate(ray_ptr_rounds_total[{RATE}]))", "{{model}}")],
        description="refinement rounds generated (a request runs up to `rounds` of them)",
    )
    lay.panel(
        "Round latency (p50, p95)",
        [
            (
                f"histogram_quantile({q}, sum by (le, model) "
                f"(rate(ray_ptr_round_latency_seconds_bucket[{RATE}])))",
                f"p{int(q * 100)} {{{{model}}}}",
            )
            for q in (0.5, 0.95)
        ],
        unit="s",
    )
    lay.panel(
        "Tokens / s by kind",
        [(f"sum by (model, kind) (rate(ray_ptr_tokens_total[{RATE}]))", "{{kind}} {{model}}")],
        description="prompt, completion, and prompt tokens served from the prefix cache",
    )
    lay.panel(
        "Prompt tokens from the prefix cache",
        [
            (
                f'sum(rate(ray_ptr_tokens_total{{kind="cached"}}[{RATE}])) / '
                f'sum(rate(ray_ptr_tokens_total{{kind="prompt"}}[{RATE}]))',
                "cached / prompt",
            )
        ],
        unit="percentunit",
    )
    lay.panel(
        "Cancelled, timed out, stopped early (/ s)",
        [
            (f"sum(rate(ray_ptr_cancelled_total[{RATE}]))", "client went away"),
            (f"sum by (limit) (rate(ray_ptr_timeouts_total[{RATE}]))", "timeout {{limit}}"),
            (f"sum(rate(ray_ptr_stopped_early_total[{RATE}]))", "stopped when stable"),
        ],
    )
    lay.row("Engine replicas (Serve)")
    lay.panel(
        "Rounds in flight per replica",
        [
            (
                "sum by (replica) (ray_ptr_engine_rounds_started_total)"
                " - sum by (replica) (ray_ptr_engine_rounds_total)",
                "{{replica}}",
            )
        ],
        description="rounds started minus rounds ended, per engine replica",
    )
    lay.panel(
        "Rounds ended / s by outcome",
        [
            (
                f"sum by (outcome) (rate(ray_ptr_engine_rounds_total[{RATE}]))",
                "{{outcome}}",
            ),
            (f"sum(rate(ray_ptr_engine_requests_total[{RATE}]))", "requests taken"),
        ],
    )
    lay.row("vLLM engines")
    _engine_panels(lay)
    return _dashboard(
        "ptr-ray-serve",
        "ptr-ray: serving and engines",
        [
            _datasource_var(),
            _query_var("role", "Engine role", "ray_vllm_num_requests_running", "role"),
            _query_var("model", "Model", "ray_vllm_num_requests_running", "model_name"),
        ],
        lay,
    )


def build_dashboard() -> dict[str, Any]:
    lay = Layout()
    sel = 'build=~"$build"'
    lay.row("Rows (the counts stats.json reports, live)")
    for title, metric in (
        ("Rows in", "ray_ptr_build_rows_in_total"),
        ("Records written", "ray_ptr_build_rows_out_total"),
        ("Rows dropped", "ray_ptr_build_rows_dropped_total"),
        ("Rows pending in the pipeline", "ray_ptr_build_rows_pending"),
    ):
        lay.panel(title, [(f"sum({metric}{{{sel}}})", title)], kind="stat", width=6)
    lay.panel(
        "Rows back from the engines / rows queued",
        [
            (
                f"(sum(ray_ptr_build_rows_queued_total{{{sel}}})"
                f" - sum(ray_ptr_build_rows_pending{{{sel}}}))"
                f" / sum(ray_ptr_build_rows_queued_total{{{sel}}})",
                "progress",
            )
        ],
        unit="percentunit",
    )
    lay.panel(
        "Records written / s by kind",
        [
            (
                f"sum by (kind) (rate(ray_ptr_build_rows_out_total{{{sel}}}[{RATE}]))",
                "{{kind}}",
            )
        ],
    )
    lay.panel(
        "Dropped rows by stage and reason",
        [
            (
                f"sum by (stage, reason) (ray_ptr_build_rows_dropped_total{{{sel}}})",
                "{{stage}} {{reason}}",
            )
        ],
        description="cumulative; rejects.jsonl holds each row and why",
    )
    lay.panel(
        "Rows skipped (already in the dataset)",
        [(f"sum(ray_ptr_build_rows_skipped_total{{{sel}}})", "skipped")],
    )
    lay.row("Tokens per model")
    lay.panel(
        "Generated tokens / s by role and model",
        [
            (
                f"sum by (role, model) "
                f'(rate(ray_ptr_build_tokens_total{{{sel}, kind="generated"}}[{RATE}]))',
                "{{role}} {{model}}",
            )
        ],
    )
    lay.panel(
        "Tokens by role, model and kind",
        [
            (
                f"sum by (role, model, kind) (ray_ptr_build_tokens_total{{{sel}}})",
                "{{role}} {{model}} {{kind}}",
            )
        ],
        description="cumulative prompt, generated and prefix-cached tokens",
    )
    lay.row("vLLM engines of the build (weak, strong, judge)")
    _engine_panels(lay)
    return _dashboard(
        "ptr-ray-build",
        "ptr-ray: dataset build",
        [
            _datasource_var(),
            _query_var("build", "Build", "ray_ptr_build_rows_in_total", "build"),
            {
                **_query_var("role", "Engine role", "ray_vllm_num_requests_running", "role"),
                "regex": "/^(weak|strong|judge)$/",
                "allValue": "weak|strong|judge",
            },
            _query_var("model", "Model", "ray_vllm_num_requests_running", "model_name"),
        ],
        lay,
    )


DASHBOARDS = {"ptr-ray-serve.json": serve_dashboard, "ptr-ray-build.json": build_dashboard}


def render(make: Any) -> str:
    return json.dumps(make(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    for name, make in DASHBOARDS.items():
        (HERE / name).write_text(render(make), encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
