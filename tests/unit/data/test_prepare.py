"""Benchmark and OpenR1 preparation into verl parquet files (local data only, nothing downloaded)."""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import json

import pandas as pd
import pytest

from verl_ext.data import benchmarks_cli, openr1_cli
from verl_ext.data.benchmarks import BENCHMARKS, load_questions
from verl_ext.data.openr1 import BadRowError, convert_rows
from verl_ext.data.prompts import SIMPLERL_SYSTEM, ZERO_CHAT_TEMPLATE
from verl_ext.tiny import build_char_tokenizer

REPO = TESTS_REPO
LUFFY_SYSTEM = "Your task is to follow a systematic, thorough reasoning process ..."


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_char_tokenizer(d)
    return d


# --- benchmarks ------------------------------------------------------------------------------

def test_prepare_benchmarks_parquet(tmp_path):
    prep = benchmarks_cli
    gpqa_dir = tmp_path / "own"  # GPQA is not shipped (its authors ask not to republish it): a user's folder
    gpqa_dir.mkdir()
    (gpqa_dir / "GPQA.json").write_text(json.dumps([{"prompt": "Which? A) x B) y C) z D) w", "answer": "D"}] * 3))
    written = prep.main(["--out-dir", str(tmp_path), "--benchmarks", "aime24", "math500", "--limit", "3"])
    written.update(prep.main(["--out-dir", str(tmp_path), "--benchmarks", "gpqa", "--benchmark-dir", str(gpqa_dir)]))
    assert set(written) == {"aime24", "gpqa", "math500"}

    df = pd.read_parquet(written["aime24"])
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert len(df) == 3
    row = df.iloc[0]
    assert row["data_source"] == "AIME24"
    assert [m["role"] for m in row["prompt"]] == ["user"]  # release validation: question only
    assert row["prompt"][0]["content"].startswith("Every morning Aya")
    assert row["reward_model"] == {"style": "rule", "ground_truth": "204"}  # "\boxed{204}" unwrapped
    assert row["extra_info"]["index"] == "AIME24-0" and row["extra_info"]["split"] == "test"

    g = pd.read_parquet(written["gpqa"]).iloc[0]
    assert g["data_source"] == "GPQA" and g["reward_model"]["ground_truth"] == "D"
    m = pd.read_parquet(written["math500"]).iloc[0]
    assert m["reward_model"]["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_prepare_benchmarks_simplerl_style(tmp_path):
    prep = benchmarks_cli
    written = prep.main(["--out-dir", str(tmp_path), "--benchmarks", "amc23", "--prompt-style", "simplerl"])
    df = pd.read_parquet(written["amc23"])
    assert len(df) == 40
    msgs = df.iloc[0]["prompt"]
    assert msgs[0]["role"] == "system" and msgs[0]["content"] == SIMPLERL_SYSTEM
    assert msgs[1]["role"] == "user"


def test_benchmark_registry_matches_files():
    """The six math sets ship in the repo (assets/benchmarks, with their sources); GPQA does not."""
    from verl_ext.data.benchmarks import DEFAULT_BENCHMARK_DIR

    assert DEFAULT_BENCHMARK_DIR == REPO / "assets" / "benchmarks"
    expected_sizes = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272, "olympiad": 674}
    sources = (DEFAULT_BENCHMARK_DIR / "SOURCES.md").read_text()
    for key, size in expected_sizes.items():
        assert len(load_questions(BENCHMARKS[key])) == size
        assert BENCHMARKS[key].file in sources and BENCHMARKS[key].hf_id in sources
    assert not (DEFAULT_BENCHMARK_DIR / "GPQA.json").exists() and BENCHMARKS["gpqa"].hf_id
    repeated = {k: b.default_n for k, b in BENCHMARKS.items() if b.default_n > 1}
    assert repeated == {"aime24": 32, "aime25": 32, "amc23": 32}


# --- OpenR1 ----------------------------------------------------------------------------------

def _fake_openr1_rows(target_lengths=(10, 50, 100)):
    rows = []
    for i, n in enumerate(target_lengths):
        demo = ("<think>\n" + "x" * n)[:n]  # exactly n characters = n tokens for the char tokenizer
        rows.append({
            "data_source": "openr1",
            "prompt": [{"role": "system", "content": LUFFY_SYSTEM}, {"role": "user", "content": f"What is {i}+{i}?"}],
            "target": [{"role": "assistant", "content": demo}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
            "extra_info": {"index": 100 + i, "split": "default"},
        })
    return rows


def _write_parquet(rows, path):
    pd.DataFrame(rows).to_parquet(path, index=False)
    return str(path)


def test_prepare_openr1_filter_strips_system_and_carries_target(tmp_path, char_tokenizer):
    src = _write_parquet(_fake_openr1_rows(), tmp_path / "openr1_fake.parquet")
    out = tmp_path / "train.parquet"
    prep = openr1_cli
    rep = prep.main(["--source", src, "--out", str(out), "--tokenizer", str(char_tokenizer),
                     "--max-target-tokens", "60"])
    # lengths 10+1 and 50+1 fit in 60; 100+1 does not
    assert rep["total"] == 3 and rep["written"] == 2 and rep["filtered_long_target"] == 1
    assert rep["max_target_tokens_seen"] == 101
    assert json.loads((tmp_path / "train.parquet.report.json").read_text())["written"] == 2

    df = pd.read_parquet(out)
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    row = df.iloc[1]
    assert [m["role"] for m in row["prompt"]] == ["user"]  # LUFFY system prompt stripped
    assert row["prompt"][0]["content"] == "What is 1+1?"
    assert row["extra_info"]["target"] == ("<think>\n" + "x" * 50)[:50]
    assert row["extra_info"]["index"] == 101 and row["extra_info"]["split"] == "train"
    assert row["reward_model"] == {"style": "rule", "ground_truth": "2"}


def test_openr1_truncate_and_keep(char_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(char_tokenizer))
    rows, rep = convert_rows(_fake_openr1_rows(), tok, max_target_tokens=60, length_policy="truncate")
    assert rep.written == 3 and rep.truncated_target == 1
    assert len(rows[2]["extra_info"]["target"]) == 59  # 59 tokens + EOS = 60
    assert rows[2]["extra_info"]["target"] == ("<think>\n" + "x" * 100)[:59]

    rows, rep = convert_rows(_fake_openr1_rows(), tok, max_target_tokens=60, length_policy="keep")
    assert rep.written == 3 and rep.long_target_kept == 1 and len(rows[2]["extra_info"]["target"]) == 100


def test_openr1_zero_template(char_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(char_tokenizer))
    rows, _ = convert_rows(_fake_openr1_rows((10,)), tok, prompt_style="zero")
    content = rows[0]["prompt"][0]["content"]
    assert content == ("Question:\nWhat is 0+0?\nPlease reason step by step, and put your final answer within "
                       "\\boxed{}.\nAnswer:\nLet's think step by step.")
    # the verbatim template renders the content as is (no ChatML around it)
    tok.chat_template = ZERO_CHAT_TEMPLATE
    assert tok.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True) == content


@pytest.mark.parametrize(
    "breaker, field",
    [
        (lambda r: r.pop("target"), "'target'"),
        (lambda r: r.update(target=[]), "'target'"),
        (lambda r: r.update(reward_model={"style": "rule"}), "'reward_model.ground_truth'"),
        (lambda r: r.update(prompt=[{"role": "system", "content": "sys only"}]), "'prompt'"),
        (lambda r: r.pop("prompt"), "'prompt'"),
    ],
)
def test_openr1_bad_rows(breaker, field):
    rows = _fake_openr1_rows((5, 5, 5, 5))
    breaker(rows[2])
    with pytest.raises(BadRowError) as e:
        convert_rows(rows, max_target_tokens=None)
    assert "row 2" in str(e.value) and field in str(e.value)

    out, rep = convert_rows(rows, max_target_tokens=None, skip_bad=True)
    assert rep.skipped_bad == 1 and rep.written == 3 and len(out) == 3
    assert sum(rep.bad_reasons.values()) == 1


def test_prepare_openr1_cli_bad_row_exit_code(tmp_path, char_tokenizer, capsys):
    rows = _fake_openr1_rows((5, 5))
    rows[1]["target"] = None
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(rows))
    prep = openr1_cli
    with pytest.raises(SystemExit) as e:
        prep.main(["--source", str(src), "--out", str(tmp_path / "o.parquet"), "--tokenizer", str(char_tokenizer)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "row 1: missing field 'target'" in err and "--no-demonstrations" in err
    rep = prep.main(["--source", str(src), "--out", str(tmp_path / "o.parquet"), "--tokenizer", str(char_tokenizer),
                     "--skip-bad"])
    assert rep["skipped_bad"] == 1 and rep["written"] == 1


def test_prepare_openr1_no_demonstrations_reads_no_target_and_needs_no_tokenizer(tmp_path, capsys):
    """RL-only data (stage 2 of SFT -> GRPO): rows without a usable ``target`` are written, none gets
    extra_info.target, and the default demonstration-length limit does not ask for a tokenizer."""
    rows = _fake_openr1_rows((5, 5, 5, 5))
    rows[0].pop("target")
    rows[1]["target"] = None
    rows[2]["target"] = []  # what a demonstration run rejects as a bad row
    src = _write_parquet(rows, tmp_path / "complement.parquet")
    out = tmp_path / "openr1_complement.parquet"
    prep = openr1_cli
    rep = prep.main(["--source", src, "--out", str(out), "--no-demonstrations"])
    assert rep["written"] == 4 and rep["skipped_bad"] == 0 and rep["demonstrations"] is False
    df = pd.read_parquet(out)
    assert all(set(e) == {"index", "split"} for e in df["extra_info"])
    assert [m["role"] for m in df.iloc[3]["prompt"]] == ["user"]
    assert df.iloc[3]["reward_model"] == {"style": "rule", "ground_truth": "6"}
    # a bad row is still one when the field it lacks is one RL reads
    rows[3]["reward_model"] = {"style": "rule"}
    with pytest.raises(BadRowError, match="row 3: missing field 'reward_model.ground_truth'"):
        convert_rows(rows, max_target_tokens=None, demonstrations=False)
    # a prompt limit still needs a tokenizer; a demonstration limit contradicts the flag
    for extra, msg in ((["--max-prompt-tokens", "100"], "--tokenizer is required"),
                       (["--max-target-tokens", "100"], "--max-target-tokens limits demonstrations")):
        with pytest.raises(SystemExit) as e:
            prep.main(["--source", src, "--out", str(out), "--no-demonstrations", *extra])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_target_tokens"):
        convert_rows(rows, max_target_tokens=8192, demonstrations=False)


def test_prepare_openr1_demonstration_data_still_needs_the_tokenizer(tmp_path, capsys):
    """Without --no-demonstrations the 8192-token default stays, and so does the tokenizer it needs."""
    src = _write_parquet(_fake_openr1_rows((5,)), tmp_path / "s.parquet")
    prep = openr1_cli
    with pytest.raises(SystemExit) as e:
        prep.main(["--source", src, "--out", str(tmp_path / "o.parquet")])
    assert e.value.code == 2 and "--no-demonstrations" in capsys.readouterr().err
    rep = prep.main(["--source", src, "--out", str(tmp_path / "o.parquet"), "--max-target-tokens", "0"])
    assert rep["written"] == 1 and pd.read_parquet(tmp_path / "o.parquet").iloc[0]["extra_info"]["target"]


def test_prompt_token_filter(char_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(char_tokenizer))
    rows = _fake_openr1_rows((5, 5))
    rows[1]["prompt"][1]["content"] = "y" * 500
    out, rep = convert_rows(rows, tok, max_target_tokens=None, max_prompt_tokens=100)
    assert rep.filtered_long_prompt == 1 and len(out) == 1
