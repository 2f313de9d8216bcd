"""scripts/run_default.py (verl_ext.tasks.main_job) on a user's files, without training: options, names,
evaluation groups."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from verl_ext.tasks import main_job


def test_train_and_test_go_together():
    with pytest.raises(SystemExit):
        main_job.main(["--train", "x.parquet"])


def test_names_overrides_and_grader():
    assert main_job._data_name(Path("data/my-gsm8k/test.parquet")) == "my-gsm8k"
    assert main_job._data_name(Path("data/heldout_v2.parquet")) == "heldout_v2"
    assert main_job._override(["a=1", "+data.max_response_length=256"], "data.max_response_length") == "256"
    assert "default_compute_score" in main_job._score_fn(["reward.custom_reward_function.path=null"])[1]
    assert "math reward" in main_job._score_fn([])[1]
    assert main_job.VAL_KEY.match("val-core/gsm8k_boxed/acc/mean@1")
    assert main_job.VAL_KEY.match("val-core/openai/gsm8k/reward/mean@1")


def test_a_file_smaller_than_one_batch_is_refused_with_the_key(tmp_path, tiny_model_dir):
    from tests.e2e.test_own_data import raw_gsm8k_rows
    from verl_ext.data.convert import convert_rows

    rows, _ = convert_rows(raw_gsm8k_rows(4, "train", 0), "verl_gsm8k")
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(SystemExit, match=r"4 rows, fewer than one batch \(data.train_batch_size=32\)"):
        main_job.main(["--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"),
                       "--base", str(tiny_model_dir), "--out", str(tmp_path / "out")])


def test_evaluation_groups_by_level_or_data_source(tiny_model_dir):
    """Before: the evaluation read extra_info.level of every row (KeyError 'level' on a user's file)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_ext.tasks.evaluate import group_accuracy

    rows = pd.DataFrame([
        {"data_source": "a", "prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2"},
         "extra_info": {"index": 0}},
        {"data_source": "b", "prompt": [{"role": "user", "content": "2+2?"}], "reward_model": {"ground_truth": "4"},
         "extra_info": {"index": "q-1"}}])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    acc = group_accuracy(model, tok, rows, max_new_tokens=4,
                         score_fn=lambda ds, text, gt: {"score": 1.0 if ds == "a" else 0.0})
    assert acc == {"all": 0.5, "a": 1.0, "b": 0.0}
    rows["extra_info"] = [{"level": 2}, {"level": 1}]
    assert set(group_accuracy(model, tok, rows, max_new_tokens=4)) == {"all", "level_1", "level_2"}
