"""scripts/data/convert.py: the formats users have -> the HPT row contract, with a drop report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from verl_ext.data import convert_cli
from verl_ext.data.contract import check_data_source, check_demo, check_ground_truth, check_index, check_prompt
from verl_ext.data.convert import BOXED_INSTRUCTION, GSM8K_HASH_INSTRUCTION, convert_rows, gsm8k_to_boxed

GSM8K_ANSWER = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def verl_gsm8k_rows(n=3):
    """As verl's examples/data_preprocess/gsm8k.py writes them (no demonstration field of its own)."""
    return [{"data_source": "openai/gsm8k",
             "prompt": [{"role": "user",
                         "content": f"Natalia sold clips to {48 + i} friends. " + GSM8K_HASH_INSTRUCTION}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": "72"},
             "extra_info": {"split": "train", "index": i, "answer": GSM8K_ANSWER, "question": "Natalia ..."}}
            for i in range(n)]


def assert_contract(row, demo=True):
    assert check_prompt(row["prompt"]) is None and check_data_source(row) is None
    assert check_ground_truth(row) is None and check_index(row) is None
    if demo:
        assert check_demo(row, "target") is None


def test_gsm8k_to_boxed_rewrites_the_answer_line_and_drops_calculator_notes():
    out = gsm8k_to_boxed(GSM8K_ANSWER)
    assert out.endswith("The answer is \\boxed{72}.") and "<<" not in out and "####" not in out
    assert gsm8k_to_boxed("#### 1,234") == "The answer is \\boxed{1234}."
    assert gsm8k_to_boxed("no answer line") is None


def test_verl_gsm8k_boxed_keeps_the_original_and_renames_the_data_source():
    out, rep = convert_rows(verl_gsm8k_rows(), "verl_gsm8k")
    assert rep.kept == 3 and rep.demos_rewritten == 3 and rep.demos_passing_reward == 3
    r = out[0]
    assert_contract(r)
    assert r["data_source"] == "gsm8k_boxed"  # verl's gsm8k scorer would read only '####'
    assert r["extra_info"]["target_original"] == GSM8K_ANSWER
    assert BOXED_INSTRUCTION in r["prompt"][0]["content"] and "####" not in r["prompt"][0]["content"]
    assert r["extra_info"]["index"] == 0 and r["reward_model"]["ground_truth"] == "72"


def test_verl_gsm8k_hash_keeps_verls_format_for_verls_scorer():
    out, rep = convert_rows(verl_gsm8k_rows(), "verl_gsm8k", answer_format="hash")
    assert out[0]["data_source"] == "openai/gsm8k" and out[0]["extra_info"]["target"] == GSM8K_ANSWER
    assert rep.demos_passing_reward == 3 and "default_compute_score" in rep.scored_with


def test_drop_reasons_are_counted():
    rows = verl_gsm8k_rows(5)
    rows[1]["reward_model"] = {"style": "rule", "ground_truth": None}
    rows[1]["extra_info"]["answer"] = "no answer line"
    rows[2]["prompt"] = []
    rows[3]["extra_info"] = {"index": 3}  # no demonstration: kept
    rows[4]["reward_model"]["ground_truth"] = 72  # an int ground truth becomes "72"
    out, rep = convert_rows(rows, "verl_gsm8k")
    assert rep.total == 5 and rep.kept == 3
    assert rep.dropped == {"ground truth missing": 1, "no question": 1}
    assert rep.no_demonstration == 1 and out[1]["extra_info"]["target"] is None
    assert out[2]["reward_model"]["ground_truth"] == "72"
    _, rep = convert_rows(rows, "verl_gsm8k", drop_missing_demo=True)
    assert rep.kept == 2 and rep.dropped["no demonstration (--drop-missing-demo)"] == 1


def test_verl_math_takes_the_solution_as_demonstration():
    rows = [{"data_source": "DigitalLearningGmbH/MATH-lighteval",
             "prompt": [{"role": "user", "content": "What is 1/2+1/2? " + BOXED_INSTRUCTION}], "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": "1"},
             "extra_info": {"split": "train", "index": 0, "solution": "1/2+1/2 = \\boxed{1}"}}]
    out, rep = convert_rows(rows, "verl_math")
    assert_contract(out[0])
    assert out[0]["extra_info"]["target"] == "1/2+1/2 = \\boxed{1}" and rep.demos_passing_reward == 1


def test_luffy_top_level_target_list_becomes_the_demonstration_string():
    rows = [{"data_source": "openr1", "prompt": [{"role": "system", "content": "LUFFY system"},
                                                 {"role": "user", "content": "Solve x+1=3."}],
             "target": [{"role": "assistant", "content": "<think>x=2</think> \\boxed{2}"}],
             "reward_model": {"ground_truth": "2"}, "extra_info": {"index": 7}},
            {"data_source": "openr1", "prompt": [{"role": "user", "content": "Q"}], "target": None,
             "reward_model": {"ground_truth": "1"}}]
    out, rep = convert_rows(rows, "luffy")
    assert rep.kept == 1 and rep.dropped == {"missing field 'target'": 1}
    assert_contract(out[0])
    assert out[0]["extra_info"] == {"index": 7, "split": "train", "target": "<think>x=2</think> \\boxed{2}"}
    assert [m["role"] for m in out[0]["prompt"]] == ["user"]


def test_jsonl_question_answer_demonstration(tmp_path):
    src = tmp_path / "mine.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"id": "q-0", "question": "2+3?", "answer": "5", "demonstration": "2+3=5. \\boxed{5}"},
        {"question": "4+4?", "answer": 8},
        {"question": "", "answer": "1"}]))
    out_path = tmp_path / "out" / "train.parquet"
    rep = convert_cli.main(
        ["--format", "jsonl", "--input", str(src), "--out", str(out_path), "--data-source", "my_math"])
    assert rep["kept"] == 2 and rep["dropped"] == {"no question (question/problem)": 1}
    assert rep["no_demonstration"] == 1 and rep["demos_passing_reward"] == 1
    df = pd.read_parquet(out_path)
    assert list(df["data_source"]) == ["my_math", "my_math"]
    assert [i["index"] for i in df["extra_info"]] == ["q-0", "1"]  # mixed ids become strings
    assert df.iloc[1]["reward_model"]["ground_truth"] == "8"
    assert json.loads((tmp_path / "out" / "train.parquet.report.json").read_text())["kept"] == 2


def test_cli_refuses_an_input_with_nothing_convertible(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"question": "", "answer": "1"}))
    with pytest.raises(SystemExit, match="no row of .* could be converted"):
        convert_cli.main(["--format", "jsonl", "--input", str(src),
                                                     "--out", str(tmp_path / "o.parquet")])


def test_jsonl_demonstration_lists_are_kept_and_every_row_becomes_a_list(tmp_path):
    """Several teachers per question: a list stays a list (empty entries dropped and counted), a
    one-entry list becomes that entry, and once any row has a list every row's demonstration is a
    list (one parquet type per column); each entry is graded; the training side accepts the rows."""
    src = tmp_path / "teachers.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"question": "2+3?", "answer": "5", "demonstration": ["2+3=5. \\boxed{5}", "", "3+2=5. \\boxed{5}", 7]},
        {"question": "4+4?", "answer": "8", "demonstration": "4+4=9. \\boxed{9}"},
        {"question": "1+1?", "answer": "2", "demonstration": ["", "1+1=2. \\boxed{2}"]},
        {"question": "0+0?", "answer": "0", "demonstration": [""]}]))
    out_path = tmp_path / "train.parquet"
    rep = convert_cli.main(
        ["--format", "jsonl", "--input", str(src), "--out", str(out_path)])
    assert rep["kept"] == 4 and rep["demo_lists"] == 1 and rep["demo_entries_dropped"] == 4
    assert rep["no_demonstration"] == 1 and rep["demos_scored"] == 4 and rep["demos_passing_reward"] == 3
    demos = [None if d is None else list(d) for d in (i["target"] for i in pd.read_parquet(out_path)["extra_info"])]
    assert demos == [["2+3=5. \\boxed{5}", "3+2=5. \\boxed{5}"], ["4+4=9. \\boxed{9}"], ["1+1=2. \\boxed{2}"], None]
    rows = pd.read_parquet(out_path).to_dict("records")
    for row in rows[:3]:
        assert_contract(row)

