"""Evaluation end to end on CPU (tiny random Qwen2, HF backend), summary maths, paper table, plot."""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import csv
import json
import shutil
from pathlib import Path

import pytest

from verl_ext.eval import cli as evaluate
from verl_ext.eval import make_table
from verl_ext.eval import runner as runner_mod
from verl_ext.eval.generate import Generator
from verl_ext.eval.passk import aggregate_benchmark
from verl_ext.eval.table import build_rows, load_paper, load_run, our_values
from verl_ext.reward import compute_score

REPO = TESTS_REPO
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from verl_ext.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2")))


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# --- end to end with a real (tiny, random) model ---------------------------------------------

@pytest.fixture(scope="module")
def e2e_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_tiny")
    # The repo ships AIME24 (assets/benchmarks) but not GPQA (not to be republished): a folder of the
    # user's own, here with two made-up multiple-choice questions in the release's format.
    bench = tmp_path_factory.mktemp("bench")
    shutil.copy(TESTS_REPO / "assets/benchmarks/AIME24.json", bench)
    (bench / "GPQA.json").write_text(json.dumps([
        {"prompt": "Which is largest?\n\nA) 1\nB) 2\nC) 3\nD) 4", "answer": "D"},
        {"prompt": "Which is smallest?\n\nA) 1\nB) 2\nC) 3\nD) 4", "answer": "A"}]))
    summary = evaluate.main(["--model", tiny_model, "--out-dir", str(out), "--benchmarks", "aime24", "GPQA",
                             "--benchmark-dir", str(bench), "--backend", "hf", "--n", "2", "--limit", "2",
                             "--max-tokens", "16", "--no-progress"])
    return out, summary


def test_evaluate_tiny_model_end_to_end(e2e_run):
    out, summary = e2e_run
    assert summary["backend"] == "hf"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for key, ds in (("aime24", "AIME24"), ("gpqa", "GPQA")):
        recs = _read_jsonl(out / "samples" / f"{key}.jsonl")
        assert len(recs) == 2 * 2  # 2 questions x n=2
        assert sorted((r["question_id"], r["sample_idx"]) for r in recs) == [
            (f"{ds}-0", 0), (f"{ds}-0", 1), (f"{ds}-1", 0), (f"{ds}-1", 1)]
        for r in recs:
            # each stored score/pred is what the reward gives for the stored response
            again = compute_score(ds, r["response"], r["ground_truth"])
            assert (r["score"], r["pred"]) == (again["score"], again["pred"])
        per_q = {}
        for r in recs:
            per_q.setdefault(r["question_id"], []).append(r["score"])
        agg = summary["benchmarks"][key]
        assert agg["n"] == 2 and agg["num_questions"] == 2 and agg["timeouts"] == 0
        assert agg["avg@2"] == pytest.approx(aggregate_benchmark(per_q)["avg@2"])
        assert set(agg["pass@k"]) == {1, 2}
    assert summary["averages"]["ood_avg"] == pytest.approx(summary["benchmarks"]["gpqa"]["avg"])


def test_make_table_and_plot_from_e2e(e2e_run, tmp_path):
    out, _ = e2e_run
    written = make_table.main(["--run", f"HPT={out / 'summary.json'}", "--table", "table2", "--out-dir", str(tmp_path)])
    md = Path(written["table2.md"]).read_text()
    assert "| HPT (paper) | 33.0 |" in md
    assert "**HPT (ours)**" in md and "Δ ours − paper" in md
    assert "aime24: avg@2 over 2 questions" in md  # what was actually measured is stated
    png = Path(written["passk.png"]).read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000


# --- runner maths with a scripted generator (known answers) -----------------------------------

class _ScriptedGenerator(Generator):
    """Returns, for question i, n responses of which the first (i % (n+1)) are correct."""

    def __init__(self, answers):
        from verl_ext.tiny import build_char_tokenizer

        self.tokenizer = build_char_tokenizer()
        self.answers = answers

    def generate(self, prompts, cfg, progress=None):
        out = []
        for i, _ in enumerate(prompts):
            good = i % (cfg.n + 1)
            out.append([f"\\boxed{{{self.answers[i]}}}" if j < good else "\\boxed{-1}" for j in range(cfg.n)])
        return out


def test_runner_summary_values(monkeypatch, tmp_path):
    from verl_ext.data.benchmarks import BENCHMARKS, clean_ground_truth, load_questions

    answers = [clean_ground_truth(q["answer"]) for q in load_questions(BENCHMARKS["amc23"], limit=4)]
    monkeypatch.setattr(runner_mod, "_make_generator", lambda cfg: ("scripted", _ScriptedGenerator(answers)))
    cfg = runner_mod.EvalConfig(model="scripted", benchmarks=["amc23"], out_dir=str(tmp_path), n={"amc23": 4},
                                limit=4, progress=False)
    s = runner_mod.run_evaluation(cfg)["benchmarks"]["amc23"]
    # question i has i % 5 correct of 4: 0, 1, 2, 3 correct
    assert s["avg@4"] == pytest.approx((0 + 1 + 2 + 3) / 16)
    # pass@2 per question: 0, 1-C(3,2)/C(4,2)=0.5, 1-C(2,2)/C(4,2)=5/6, 1
    assert s["pass@k"][2] == pytest.approx((0 + 0.5 + 5 / 6 + 1) / 4)
    assert s["pass@k"][4] == pytest.approx(0.75)


def test_evaluator_grades_each_sample_against_its_own_question():
    """The one evaluator (template -> sample -> grade) keeps every sample with its question: the
    grader sees each response next to that question's ground truth and data source."""
    from verl_ext.eval.evaluator import Question, evaluate, grade_in_process
    from verl_ext.eval.generate import SamplingConfig

    qs = [Question([{"role": "user", "content": f"q{i}"}], str(i), "mc" if i == 2 else "math") for i in range(4)]
    seen = []

    def score(source, text, gt):
        seen.append((source, gt))
        return {"score": float(text == f"\\boxed{{{gt}}}"), "timeout": gt == "3"}

    ev = evaluate(_ScriptedGenerator([str(i) for i in range(4)]), qs, SamplingConfig(n=4),
                  grader=lambda r, g, d: grade_in_process(r, g, d, score_fn=score))
    assert [sum(c) for c in ev.correct()] == [0, 1, 2, 3]  # question i: first i % 5 of 4 correct
    assert seen == [(q.data_source, q.ground_truth) for q in qs for _ in range(4)]
    assert ev.grading.num_timeouts == 4 and [len(t) for t in ev.texts] == [4] * 4

    class _Short(_ScriptedGenerator):
        def generate(self, prompts, cfg, progress=None):
            return super().generate(prompts, cfg)[:-1]

    with pytest.raises(RuntimeError, match="_Short.generate returned completions for 3 prompts, not 4"):
        evaluate(_Short(["0"] * 4), qs, SamplingConfig(n=1))


def test_default_n_follows_paper(monkeypatch, tmp_path):
    seen = {}

    class _Gen(_ScriptedGenerator):
        def generate(self, prompts, cfg, progress=None):
            seen[len(seen)] = cfg.n
            assert (cfg.temperature, cfg.top_p, cfg.max_tokens) == (0.6, 0.95, 8192)
            return [["\\boxed{0}"] * cfg.n for _ in prompts]

    monkeypatch.setattr(runner_mod, "_make_generator", lambda cfg: ("scripted", _Gen([])))
    cfg = runner_mod.EvalConfig(model="x", benchmarks=["aime25", "minerva"], out_dir=str(tmp_path), limit=1,
                                progress=False)
    runner_mod.run_evaluation(cfg)
    assert seen == {0: 32, 1: 1}


# --- table rendering -------------------------------------------------------------------------

def _summary(values: dict, n=32):
    return {"model": "m", "backend": "hf", "settings": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 8192},
            "benchmarks": {k: {"avg": v, "n": n, "num_questions": 30, "timeouts": 0,
                               "pass@k": {"1": v, "2": min(1, 2 * v)}}
                           for k, v in values.items()}}


def test_table_diff_and_partial_averages(tmp_path):
    paper = load_paper()
    full = {"aime24": 0.30, "aime25": 0.20, "amc23": 0.70, "math500": 0.90, "minerva": 0.45, "olympiad": 0.55,
            "gpqa": 0.40}
    p_full = tmp_path / "full.json"
    p_full.write_text(json.dumps(_summary(full)))
    p_part = tmp_path / "part.json"
    p_part.write_text(json.dumps(_summary({"aime24": 0.10, "math500": 0.50})))

    runs = [load_run(f"HPT={p_full}"), load_run(f"MyAblation={p_part}")]
    table = paper["tables"]["table2"]
    rows = build_rows(table, runs, paper)
    ours = next(r for r in rows if r.kind == "ours" and r.method == "HPT")
    diff = next(r for r in rows if r.kind == "diff")
    assert ours.values["AIME24"] == pytest.approx(30.0)
    assert diff.values["AIME24"] == pytest.approx(30.0 - 33.0)
    assert ours.values["ID Avg"] == pytest.approx(100 * sum(list(full.values())[:6]) / 6)
    assert diff.values["ID Avg"] == pytest.approx(ours.values["ID Avg"] - 52.7)
    assert ours.values["OOD Avg"] is None  # ARC-c not evaluated: no mean from half the columns
    # the paper-row/ours/diff triple sits where the paper's HPT row is
    idx = [i for i, r in enumerate(rows) if r.method == "HPT"]
    assert [rows[i].kind for i in idx] == ["paper", "ours", "diff"]
    part = our_values(runs[1], paper, table["columns"])
    assert part["ID Avg"] is None and part["AIME24"] == pytest.approx(10.0)
    assert rows[-1].method == "MyAblation" and rows[-1].kind == "ours"  # unmatched label appended

    written = make_table.main(["--run", f"HPT={p_full}", "--run", f"MyAblation={p_part}", "--table", "all",
                               "--out-dir", str(tmp_path / "out")])
    with open(written["table2.csv"]) as f:
        recs = list(csv.DictReader(f))
    d = next(r for r in recs if r["kind"] == "diff")
    assert float(d["AIME24"]) == pytest.approx(-3.0) and float(d["MATH-500"]) == pytest.approx(0.8)
    assert d["OOD Avg"] == ""
    assert "table6.md" in written and "gamma=1/8" in Path(written["table6.md"]).read_text()
    assert Path(written["passk.png"]).read_bytes()[:8] == PNG_MAGIC


def test_paper_results_are_consistent():
    """The transcribed ID averages equal the mean of the six benchmark columns (to rounding)."""
    paper = load_paper()
    ids = paper["average_columns"]["ID Avg"]
    for key in ("table2", "table3_llama", "table3_qwen1.5b"):
        for row in paper["tables"][key]["rows"]:
            v = row["values"]
            assert sum(v[c] for c in ids) / 6 == pytest.approx(v["ID Avg"], abs=0.06), (key, row["method"])
    hpt = next(r for r in paper["tables"]["table2"]["rows"] if r["method"] == "HPT")["values"]
    assert (hpt["AIME24"], hpt["ID Avg"], hpt["OOD Avg"]) == (33.0, 52.7, 62.3)
