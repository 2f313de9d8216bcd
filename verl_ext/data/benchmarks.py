"""The evaluation benchmarks: names, files, data sources, default sample counts, loading.

Benchmark files are JSON lists of ``{"prompt": question, "answer": ground truth, ...}`` (the
release's ``data/*/test.json``). Where a set is read from (:func:`load_questions`): the folder given
(``--benchmark-dir``), else ``$HPT_BENCHMARK_DIR``, else the repository's own ``assets/benchmarks``
(the six math sets, shipped for offline use with their sources and licences in its SOURCES.md), else
its public dataset id (:attr:`Benchmark.hf_id`, downloaded with ``datasets``; GPQA is never shipped).
``data_source`` is the release's name for each set; the reward grades GPQA as multiple choice because
its data source contains "gpqa".

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

# The repository's own copy of the small math sets (assets/benchmarks/SOURCES.md).
DEFAULT_BENCHMARK_DIR = Path(__file__).resolve().parents[2] / "assets" / "benchmarks"


@dataclass(frozen=True)
class Benchmark:
    key: str  # short CLI name
    file: str  # JSON file name in the benchmark folder
    data_source: str  # verl data_source (the release's folder name)
    default_n: int  # samples per question in the paper's protocol
    ability: str = "math"
    paper_column: str = ""  # column name in the paper's tables
    hf_id: str = ""  # public dataset id, loaded when no local file exists
    hf_split: str = "test"


BENCHMARKS: dict[str, Benchmark] = {
    b.key: b
    for b in (
        Benchmark("aime24", "AIME24.json", "AIME24", 32, paper_column="AIME24", hf_id="HuggingFaceH4/aime_2024",
                  hf_split="train"),
        Benchmark("aime25", "AIME25.json", "AIME25", 32, paper_column="AIME25", hf_id="math-ai/aime25"),
        Benchmark("amc23", "AMC23.json", "AMC23", 32, paper_column="AMC", hf_id="math-ai/amc23"),
        Benchmark("math500", "MATH-500.json", "MATH-500", 1, paper_column="MATH-500", hf_id="HuggingFaceH4/MATH-500"),
        Benchmark("minerva", "Minerva.json", "Minerva", 1, paper_column="Minerva", hf_id="math-ai/minervamath"),
        Benchmark("olympiad", "Olympiad-Bench.json", "Olympiad-Bench", 1, paper_column="Olympiad",
                  hf_id="math-ai/olympiadbench"),
        Benchmark("gpqa", "GPQA.json", "GPQA", 1, paper_column="GPQA", hf_id="math-ai/gpqa"),
    )
}
IN_DISTRIBUTION = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiad")


def benchmark_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("HPT_BENCHMARK_DIR") or DEFAULT_BENCHMARK_DIR)


# Project-made evaluation sets, selectable by name but not in the default list (their JSON lives in
# the run's --benchmark-dir): CHAMP's held-out slice from prepare_champ.py.
EXTRA_BENCHMARKS: dict[str, Benchmark] = {"champ": Benchmark("champ", "CHAMP.json", "CHAMP", 1)}


def get_benchmark(key: str) -> Benchmark:
    k = key.lower().replace("-", "").replace("_", "")
    for b in (*BENCHMARKS.values(), *EXTRA_BENCHMARKS.values()):
        if k in (b.key, b.data_source.lower().replace("-", "").replace("_", "")):
            return b
    raise KeyError(f"unknown benchmark {key!r}; known: {', '.join(BENCHMARKS)}")


def load_questions(bench: Benchmark, folder: str | os.PathLike | None = None, limit: int | None = None) -> list[dict]:
    """``[{"id", "question", "answer"}]`` for a benchmark (first ``limit`` questions if given); from
    the local file (see the module docstring), else by the set's public dataset id."""
    path = benchmark_dir(folder) / bench.file
    if path.exists():
        with open(path) as f:
            rows = json.load(f)
    elif bench.hf_id:
        rows = _load_hub(bench)
        path = Path(bench.hf_id)
    else:
        raise FileNotFoundError(f"{path}: no such benchmark file, and {bench.key} has no public dataset id; "
                                f"pass --benchmark-dir (or $HPT_BENCHMARK_DIR) with {bench.file}")
    out = []
    for i, row in enumerate(rows):
        for field in ("prompt", "answer"):
            if field not in row or row[field] is None:
                raise ValueError(f"{path}: row {i} has no {field!r}")
        out.append({"id": f"{bench.data_source}-{i}", "question": row["prompt"], "answer": str(row["answer"])})
    return out[:limit] if limit is not None else out


def _load_hub(bench: Benchmark) -> list[dict]:
    """The set from the Hugging Face Hub, as ``{"prompt", "answer"}`` rows (network: evaluation set-up only)."""
    import datasets

    out = []
    for row in datasets.load_dataset(bench.hf_id, split=bench.hf_split):
        q = next((row[k] for k in ("prompt", "problem", "question", "Question") if row.get(k) is not None), None)
        a = next((row[k] for k in ("answer", "Answer", "solution") if row.get(k) is not None), None)
        out.append({"prompt": q, "answer": a})
    return out


def clean_ground_truth(answer: str) -> str:
    """Unwrap a ground truth written as ``\\boxed{...}`` (AIME24's file does this)."""
    from verl_ext.reward.extract import last_boxed_content

    if "\\boxed" in answer:
        inner = last_boxed_content(answer)
        if inner is not None:
            return inner
    return answer.strip()


def to_verl_rows(bench: Benchmark, questions: list[dict], prompt_style: str = "user",
                 split: str = "test") -> list[dict]:
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
