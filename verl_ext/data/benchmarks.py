"""The evaluation benchmarks: names, files, data sources, default sample counts, loading.

Benchmark files are JSON lists of ``{"prompt": question, "answer": ground truth, ...}`` (the
release's ``data/*/test.json``), by default in ``/work/shared/data/benchmarks`` (override with
``HPT_BENCHMARK_DIR``). ``data_source`` is the release's name for each set; the reward grades
GPQA as multiple choice because its data source contains "gpqa".

Default samples per question follow the paper's protocol: n=32 (avg@32) on AIME24, AIME25 and
AMC, n=1 elsewhere. Note: our AMC23 file is the 40-problem AMC 2023 set used for in-training
validation; the paper's AMC column is the 83-problem AI-MO ``aimo-validation-amc``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from verl_ext.data.prompts import build_messages

DEFAULT_BENCHMARK_DIR = "/work/shared/data/benchmarks"


@dataclass(frozen=True)
class Benchmark:
    key: str  # short CLI name
    file: str  # JSON file name in the benchmark folder
    data_source: str  # verl data_source (the release's folder name)
    default_n: int  # samples per question in the paper's protocol
    ability: str = "math"
    paper_column: str = ""  # column name in the paper's tables


BENCHMARKS: dict[str, Benchmark] = {
    b.key: b
    for b in (
        Benchmark("aime24", "AIME24.json", "AIME24", 32, paper_column="AIME24"),
        Benchmark("aime25", "AIME25.json", "AIME25", 32, paper_column="AIME25"),
        Benchmark("amc23", "AMC23.json", "AMC23", 32, paper_column="AMC"),
        Benchmark("math500", "MATH-500.json", "MATH-500", 1, paper_column="MATH-500"),
        Benchmark("minerva", "Minerva.json", "Minerva", 1, paper_column="Minerva"),
        Benchmark("olympiad", "Olympiad-Bench.json", "Olympiad-Bench", 1, paper_column="Olympiad"),
        Benchmark("gpqa", "GPQA.json", "GPQA", 1, paper_column="GPQA"),
    )
}
IN_DISTRIBUTION = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiad")


def benchmark_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("HPT_BENCHMARK_DIR", DEFAULT_BENCHMARK_DIR))


# Project-made evaluation sets, selectable by name but not in the default list (their JSON lives in
# the run's --benchmark-dir, not in ../shared): CHAMP's held-out slice from prepare_champ.py.
EXTRA_BENCHMARKS: dict[str, Benchmark] = {"champ": Benchmark("champ", "CHAMP.json", "CHAMP", 1)}


def get_benchmark(key: str) -> Benchmark:
    k = key.lower().replace("-", "").replace("_", "")
    for b in (*BENCHMARKS.values(), *EXTRA_BENCHMARKS.values()):
        if k in (b.key, b.data_source.lower().replace("-", "").replace("_", "")):
            return b
    raise KeyError(f"unknown benchmark {key!r}; known: {', '.join(BENCHMARKS)}")


def load_questions(bench: Benchmark, folder: str | os.PathLike | None = None, limit: int | None = None) -> list[dict]:
    """``[{"id", "question", "answer"}]`` for a benchmark (first ``limit`` questions if given)."""
    path = benchmark_dir(folder) / bench.file
    with open(path) as f:
        rows = json.load(f)
    out = []
    for i, row in enumerate(rows):
        for field in ("prompt", "answer"):
            if field not in row or row[field] is None:
                raise ValueError(f"{path}: row {i} has no {field!r}")
        out.append({"id": f"{bench.data_source}-{i}", "question": row["prompt"], "answer": str(row["answer"])})
    return out[:limit] if limit is not None else out


def clean_ground_truth(answer: str) -> str:
    """Unwrap a ground truth written as ``\\boxed{...}`` (AIME24's file does this)."""
    from verl_ext.reward.extract import last_boxed_content

    if "\\boxed" in answer:
        inner = last_boxed_content(answer)
        if inner is not None:
            return inner
    return answer.strip()


def to_verl_rows(bench: Benchmark, questions: list[dict], prompt_style: str = "user", split: str = "test") -> list[dict]:
    """verl RL-dataset rows (``data_source``, ``prompt``, ``ability``, ``reward_model``, ``extra_info``)."""
    return [
        {
            "data_source": bench.data_source,
            "prompt": build_messages(q["question"], prompt_style),
            "ability": bench.ability,
            "reward_model": {"style": "rule", "ground_truth": clean_ground_truth(q["answer"])},
            "extra_info": {"index": q["id"], "split": split},
        }
        for q in questions
    ]
