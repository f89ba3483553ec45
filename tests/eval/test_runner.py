"""The runner: N rounds through refine_batch, per-round scoring, resume, bad input."""

from __future__ import annotations

import json
import re

import pytest

from ptr_ray.config import ConfigError, EvalConfig, load_config
from ptr_ray.data.benchmarks import load_task
from ptr_ray.engine import Completion, Generation
from ptr_ray.eval.methods import ModelCheckError, standard_methods
from ptr_ray.eval.runner import evaluate, run_eval
from ptr_ray.eval.tasks import TaskError
from ptr_ray.prompts import DEFAULT_REFINE_INSTRUCTION


class ScriptedEngine:
    """Answers wrong in round 1 and right from round 2 on (gold looked up from the prompt),
    so the per-round scores are known exactly; records every conversation it is sent."""

    instances: list[ScriptedEngine] = []

    def __init__(self, cfg, gold_by_prompt: dict[str, str]) -> None:
        self.cfg, self.gold = cfg, gold_by_prompt
        self.calls: list[list[list[dict]]] = []
        self.closed = False
        self.tokenizer, self.model_path = None, cfg.model
        ScriptedEngine.instances.append(self)

    def generate(self, conversations, sampling):
        self.calls.append([list(c) for c in conversations])
        out = []
        for conv in conversations:
            gold = self.gold[conv[0]["content"]]
            rnd = sum(m["role"] == "assistant" for m in conv) + 1
            if gold in "ABCDE":
                text = "A plant is alive." if rnd == 1 else f"The answer is ({gold})."
            else:
                text = "I do not know." if rnd == 1 else f"So it is {gold}.\nThe answer is {gold}."
            out.append(
                Generation(
                    [Completion(text, 7, "stop")],
                    prompt_tokens=20 * rnd,
                    cached_tokens=10 * (rnd - 1),
                )
            )
        return out

    def close(self) -> None:
        self.closed = True


def _cfg(tmp_path, **kw) -> EvalConfig:
    data = {
        "methods": [m.model_dump() for m in standard_methods("builtin:smollm2-135m")],
        "tasks": ["gsm8k", "arc_challenge"],
        "limit": 3,
        "rounds": 3,
        "output_dir": str(tmp_path / "out"),
    }
    data.update(kw)
    return EvalConfig.model_validate(data)


def _factory(cfg: EvalConfig):
    from ptr_ray.eval.tasks import load_tasks

    gold = {t.prompt(i): i.answer for t in load_tasks(cfg) for i in t.items}
    return lambda ecfg: ScriptedEngine(ecfg, gold)


def test_rounds_go_through_refine_loop_and_are_scored(tmp_path):
    ScriptedEngine.instances.clear()
    cfg = _cfg(
        tmp_path,
        methods=[
            {"name": "base", "model": "builtin:smollm2-135m"},
            {"name": "ptr", "model": "builtin:qwen2.5-coder-0.5b", "engine": {"max_num_seqs": 4}},
        ],
    )
    report = evaluate(cfg, _factory(cfg))
    assert [r.method for r in report.results] == ["base", "base", "ptr", "ptr"]
    for task in ("gsm8k", "arc_challenge"):
        assert report.accuracy("base", task) == [0.0, 1.0, 1.0]
    # one engine per method, each closed; overrides applied per method only
    engines = ScriptedEngine.instances
    assert [e.cfg.model for e in engines] == ["builtin:smollm2-135m", "builtin:qwen2.5-coder-0.5b"]
    assert [e.cfg.max_num_seqs for e in engines] == [cfg.engine.max_num_seqs, 4]
    assert all(e.closed for e in engines)
    # round k sends the growing conversation: query, answers, refine instructions
    calls = engines[0].calls
    assert len(calls) == 2 * 3  # two tasks x three rounds, each round one batched call
    r3 = calls[2][0]
    assert [m["role"] for m in r3] == ["user", "assistant", "user", "assistant", "user"]
    assert r3[2]["content"] == r3[4]["content"] == DEFAULT_REFINE_INSTRUCTION
    # the per-item answers of every round are in the result
    item = report.results[1].items[0]
    assert [r.extracted for r in item.rounds][1:] == [item.gold, item.gold]
    assert item.rounds[0].extracted is None  # "A plant is alive." is no answer
    gsm = report.results[0].summary()
    assert {r.metric for r in gsm} == {"exact", "flexible"}
    assert [r.cached_frac for r in gsm if r.metric == "exact"] == [0.0, 0.25, pytest.approx(1 / 3)]


def test_mc_prompt_lists_lettered_options_and_asks_letter_first():
    from ptr_ray.eval.tasks import EvalTask

    item = load_task("arc_challenge", 1)[0]
    p = EvalTask("arc_challenge", "multiple_choice", [item]).prompt(item)
    assert item.question in p and "A. " + item.choices[0] in p
    n = len(item.choices)
    assert 'Begin your reply with "The answer is" followed by the letter of the correct option' in p
    assert ("(A, B, C or D)" if n == 4 else f"or {'ABCDE'[n - 1]})") in p
    assert "answer is X" not in p  # a placeholder small models copy verbatim


def test_resume_skips_finished_and_recomputes_changed(tmp_path):
    cfg = _cfg(tmp_path, rounds=2)
    made = []
    base = _factory(cfg)

    def factory(ecfg):
        made.append(ecfg.model)
        return base(ecfg)

    first = evaluate(cfg, factory)
    assert made == ["builtin:smollm2-135m"]
    again = evaluate(cfg, factory)
    assert made == ["builtin:smollm2-135m"]  # nothing to do: no engine started
    assert again.summary() == first.summary()
    assert (first.reused, again.reused) == (0, 2)
    # a different refine instruction changes the fingerprint: recomputed
    cfg2 = cfg.model_copy(
        update={
            "prompt": cfg.prompt.model_copy(
                update={"refine_instruction": "Check your work and answer again."}
            )
        }
    )
    evaluate(cfg2, _factory(cfg2))
    files = sorted(p.name for p in (tmp_path / "out" / "results" / "base").iterdir())
    assert files == ["arc_challenge.json", "gsm8k.json"]
    data = json.loads((tmp_path / "out" / "results" / "base" / "gsm8k.json").read_text())
    assert data["fingerprint"] != first.results[0].fingerprint
    # resume: false recomputes
    made.clear()
    evaluate(cfg.model_copy(update={"resume": False}), factory)
    assert made == ["builtin:smollm2-135m"]


def test_custom_jsonl_task_counts_malformed_rows(tmp_path, caplog):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"q": "Pick the colour of the sky.", "opts": ["red", "blue"], "gold": "blue"},
        {"q": "Pick one.", "opts": ["x", "y"], "gold": 0},
        {"q": "", "opts": ["x", "y"], "gold": "A"},
        {"q": "No options", "gold": "A"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    cfg = _cfg(
        tmp_path,
        tasks=[],
        rounds=2,
        custom_tasks=[
            {
                "name": "mine",
                "path": str(path),
                "question_field": "q",
                "answer_field": "gold",
                "choices_field": "opts",
                "metric": "multiple_choice",
            }
        ],
    )
    from ptr_ray.eval.tasks import load_tasks

    (task,) = load_tasks(cfg)
    assert [i.answer for i in task.items] == ["B", "A"]
    assert task.skipped == {
        "missing or empty 'q'": 1,
        "'opts' is not a list of 2-10 options": 1,
        "invalid JSON": 1,
    }
    report = evaluate(cfg, _factory(cfg))
    assert report.accuracy("base", "mine") == [0.0, 1.0]
    assert report.results[0].skipped_rows["invalid JSON"] == 1


def test_stop_when_stable_carries_the_last_answer(tmp_path):
    cfg = _cfg(tmp_path, tasks=["arc_challenge"], rounds=4, stop_when_stable=True)
    report = evaluate(cfg, _factory(cfg))
    # the scripted answer repeats from round 2 on: stable at round 3, round 4 carried
    assert report.accuracy("base", "arc_challenge") == [0.0, 1.0, 1.0, 1.0]
    last = report.results[0].items[0].rounds[3]
    assert last.carried and last.finish_reason == "carried"


# ------------------------------------------------------------------------------ bad input


def _never(_):
    raise AssertionError("no engine may start when the config is bad")


@pytest.mark.parametrize(
    "kw,exc,msg",
    [
        (
            {"tasks": ["gsm8k", "gsm9k"]},
            TaskError,
            r"unknown eval task 'gsm9k'; known: .*arc_challenge",
        ),
        (
            {"methods": [{"name": "x", "model": "builtin:nope"}]},
            ModelCheckError,
            r"model source 'builtin:nope' does not resolve: unknown builtin model 'nope'",
        ),
        (
            {"methods": [{"name": "x", "model": "/no/such/folder"}]},
            ModelCheckError,
            r"'/no/such/folder' does not resolve: model folder /no/such/folder does not exist",
        ),
        (
            {"methods": [{"name": "x", "model": "not a model id"}]},
            ModelCheckError,
            r"not a builtin:NAME, an existing folder, nor a valid hub id",
        ),
        (
            {
                "methods": [
                    {"name": "x", "model": "builtin:smollm2-135m"},
                    {"name": "x", "model": "builtin:smollm2-135m"},
                ]
            },
            ConfigError,
            r"unique",
        ),
        (
            {
                "methods": [
                    {"name": "x", "model": "builtin:smollm2-135m", "engine": {"max_modl_len": 3}}
                ]
            },
            ConfigError,
            r"method 'x': engine.max_modl_len",
        ),
        (
            {"tasks": [], "custom_tasks": [{"name": "m", "path": "/no/file.jsonl"}]},
            TaskError,
            r"custom task 'm': file /no/file.jsonl not found",
        ),
        ({"tasks": [], "custom_tasks": [{"name": "gsm8k", "path": "x"}]}, TaskError, r"clashes"),
        ({"tasks": []}, TaskError, r"no tasks"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path, kw, exc, msg):
    cfg = _cfg(tmp_path, **kw)
    with pytest.raises(exc) as e:
        evaluate(cfg, _never)
    assert re.search(msg, str(e.value)) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_hub_id_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg(tmp_path, methods=[{"name": "x", "model": "nobody-xyz/no-such-model"}])
    with pytest.raises(ModelCheckError, match="not in the Hugging Face cache"):
        evaluate(cfg, _never)


def test_folder_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = _cfg(tmp_path, methods=[{"name": "x", "model": str(tmp_path / "empty")}])
    with pytest.raises(ModelCheckError, match="has no config.json"):
        evaluate(cfg, _never)


@pytest.mark.parametrize(
    "override,msg",
    [
        ("rounds=0", "config key 'rounds': Input should be greater than or equal to 1"),
        ("rounds=11", "config key 'rounds': Input should be less than or equal to 10"),
        ("limit=0", "config key 'limit'"),
        ("methods=[]", "config key 'methods'"),
        ("methods=[{name: bad/name, model: x}]", "config key 'methods.0.name'"),
    ],
)
def test_config_validation(override, msg):
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, None, [override])
    assert msg in str(e.value)


def test_cli_prints_one_line_error(capsys, tmp_path):
    from ptr_ray.cli import main

    assert main(["eval", "tasks=[nope]", f"output_dir={tmp_path}/o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptr-ray: error: unknown eval task 'nope'") and "\n" not in err
    assert main(["eval", "rounds=0"]) == 2
    assert "rounds" in capsys.readouterr().err


def test_job_entry_point_reports_bad_config(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "evaluate_job", Path(__file__).parents[2] / "jobs" / "evaluate.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--config", "jobs/configs/eval_local.yaml", "tasks=[nope]"]) == 2
    assert "unknown eval task 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- the real loop, HF engine


@pytest.mark.slow
def test_hf_engine_end_to_end(tmp_path, tiny_model_dir):
    """Tiny random model through the transformers engine: files written, scores in range."""
    cfg = _cfg(
        tmp_path,
        methods=[{"name": "tiny", "model": str(tiny_model_dir)}],
        tasks=["gsm8k", "arc_challenge"],
        limit=2,
        rounds=2,
        engine={"backend": "hf", "max_model_len": 1024},
        sampling={"max_tokens": 8},
    )
    report = run_eval(cfg)
    assert isinstance(report.results[0].items[0].rounds[1].answer, str)
    out = tmp_path / "out"
    for name in (
        "results.json",
        "summary.csv",
        "items.csv",
        "report.md",
        "accuracy_by_round.png",
        "config.yaml",
    ):
        assert (out / name).is_file(), name
    rows = report.summary()
    assert all(r.n == 2 and 0.0 <= r.accuracy <= 1.0 for r in rows)
    assert all(r.mean_tokens <= 8 for r in rows)


def test_every_packaged_task_has_prompt_and_metric(tmp_path):
    from ptr_ray.data.benchmarks import task_names
    from ptr_ray.eval.tasks import load_tasks

    cfg = _cfg(tmp_path, tasks=task_names(), limit=2)
    tasks = load_tasks(cfg)
    assert [t.name for t in tasks] == task_names()
    for t in tasks:
        assert len(t.items) == 2 and t.metric_names()
        for item in t.items:
            p = t.prompt(item)
            assert item.question[:40] in p
            if t.kind == "multiple_choice":
                assert item.answer in "ABCDE"[: len(item.choices)] and "The answer is" in p
    math500 = next(t for t in tasks if t.name == "math500")
    assert "\\boxed{}" in math500.prompt(math500.items[0])
    # the seeded sample is the same every time (resume and method comparisons rely on it)
    assert [i.id for i in load_tasks(cfg)[0].items] == [i.id for i in tasks[0].items]


def test_shipped_configs_load():
    from pathlib import Path

    from ptr_ray.eval.runner import preflight

    root = Path(__file__).parents[2] / "jobs" / "configs"
    gpu = load_config(EvalConfig, root / "eval_gpu.yaml")
    assert [m.name for m in gpu.methods] == ["base", "ift", "ptr"] and gpu.ray is not None
    assert gpu.engine.num_gpus == 1
    local = load_config(EvalConfig, root / "eval_local.yaml")
    assert local.rounds == 3 and local.tasks == ["gsm8k", "arc_challenge"]
    engines, tasks = preflight(local)  # builtins resolve, items load: ready to run
    assert [e.model for e in engines] == ["builtin:smollm2-135m", "builtin:qwen2.5-coder-0.5b"]
    assert [len(t.items) for t in tasks] == [20, 20]


def test_ray_task_options_take_the_most_any_method_asks():
    """The evaluation task runs every method's engine in turn, so it holds the most CPUs, GPUs
    and custom resources any of them asks (a cluster job pins it with engine.resources)."""
    from ptr_ray.eval.runner import ray_task_options

    cfg = EvalConfig.model_validate(
        {
            "engine": {"num_cpus": 2, "resources": {"pool_vllm": 1}},
            "methods": [
                {"name": "base", "model": "m1"},
                {"name": "ptr", "model": "m2", "engine": {"num_gpus": 1, "num_cpus": 4}},
                {"name": "big", "model": "m3", "engine": {"resources": {"pool_vllm": 2, "x": 1}}},
            ],
        }
    )
    opts = ray_task_options(cfg)
    assert opts == {"num_cpus": 4, "num_gpus": 1, "resources": {"pool_vllm": 2, "x": 1}}
    plain = EvalConfig.model_validate({"methods": [{"name": "base", "model": "m1"}]})
    assert "resources" not in ray_task_options(plain)  # Ray's default: no custom resources
