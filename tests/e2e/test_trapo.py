"""TRAPO through verl's trainer and its agent-loop rollout (issue 16), on CPU, 2 steps.

Stages as TRAPO's, scaled to n = 4: 2 plain rollouts per question; then, if none was correct, 1 row
continuing the first half of the question's demonstration, and if at most 2 of the 3 are correct, 1 row
that is the whole demonstration (prefix rows are drawn by verl's agent loop under ``hpt_prefix_agent``,
the ``hf`` rollout). The loss is ``upge=trapo``: demonstration tokens (``hpt_prefix_mask``) get TrSFT in
the demo arm, generated tokens the policy gradient; the gate never routes to SFT, so every demo-arm
token in the step is a prefix token. The verifier fixes each question's outcome by its dataset index
(even: all correct, odd: none), so exactly the odd questions get 2 prefix rows each. The staged manager
checks that each prefix row's response starts with the prefix it was sent (it raises otherwise).

Several agent-loop workers, as on a GPU: verl gives each worker a contiguous chunk of a stage's rows.
The data are ordered (``data.shuffle=false``) so that every batch of 8 questions holds its 4 even
indices first: with 2 workers one chunk of each stage after the first holds only plain rows and the
other only prefix rows (stage 3: whole-demonstration rows, which make no server call), so the
workers' rows return different extra fields in every step, by construction. verl's default of 8
workers (one row per chunk) runs too.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import math

import pandas as pd
import pytest

from tests.e2e.utils import base_overrides, run_main

INDEX_REWARD = str(TESTS_REPO / "tests/assets/index_parity_reward.py")
STAGES = ("hpt.stages=[{rollouts:2},{rollouts:1,max_correct:0,action:continue_with_prefix,prefix:0.5},"
          "{rollouts:1,max_correct:2,action:continue_with_prefix,prefix:1.0}]")


BATCH = 8  # cpu_tiny's data.train_batch_size


def even_first_data(arith_data_dir, out):
    """The training rows reordered so that each batch of 8 holds 4 even then 4 odd dataset indices
    (``index_parity_reward``: even questions all correct, odd none)."""
    df = pd.read_parquet(arith_data_dir / "train.parquet")
    parity = df["extra_info"].map(lambda e: int(e["index"]) % 2).to_numpy()
    even, odd = df[parity == 0], df[parity == 1]
    half = BATCH // 2
    blocks = [pd.concat([even.iloc[i:i + half], odd.iloc[i:i + half]])
              for i in range(0, min(len(even), len(odd)), half)]
    out.mkdir()
    pd.concat(blocks).to_parquet(out / "train.parquet", index=False)
    (out / "test.parquet").write_bytes((arith_data_dir / "test.parquet").read_bytes())
    return out


@pytest.mark.parametrize("workers,steps", [(2, 2), (8, 1)], ids=["2-workers", "verl-default-8-workers"])
def test_trapo_prefix_rows_train_their_demonstration_tokens(tiny_model_dir, arith_data_dir, tmp_path, capsys,
                                                            workers, steps):
    ckpt = tmp_path / "trapo"
    data = even_first_data(arith_data_dir, tmp_path / "data")
    over = base_overrides(tiny_model_dir, data, ckpt, steps=steps, reward=INDEX_REWARD) + [
        "upge=trapo", "hpt.gate.strategy=never", "hpt.loss.rollout.const_len=256", "hpt.loss.demo.const_len=256",
        "trainer.save_freq=-1", "actor_rollout_ref.rollout.n=4", STAGES, "data.shuffle=false",
        f"actor_rollout_ref.rollout.agent.num_workers={workers}"]
    metrics = run_main(over, tmp_path / "trapo.jsonl", timeout=900)
    steps_logged = [m for m in metrics if "hpt/questions" in m]
    assert len(steps_logged) == steps
    for m in steps_logged:
        failing = round(m["hpt/questions"] * (1 - m["hpt/pass_rate/mean"]))  # odd indices: none correct
        assert failing == BATCH // 2 == m["hpt/questions"] - failing
        assert m["hpt/stages/prefix_rows"] == 2 * failing  # a 50 % row and a full-demonstration row each
        assert m["hpt/stages/prefix_tokens"] >= m["hpt/stages/prefix_rows"]
        assert m["hpt/gen/rows_skipped"] == 0 and m["hpt/rows/demo"] == 0  # no SFT row: the gate never
        # the demo arm trained the prefix tokens (TrSFT), the rollout arm the generated ones
        assert 0 < m["actor/hpt/demo_token_share"] < 1
        assert math.isfinite(m["actor/hpt/sft/loss"]) and math.isfinite(m["actor/grad_norm"])
    with capsys.disabled():
        print(f"\n[trapo, {workers} agent-loop workers] prefix rows "
              f"{[m['hpt/stages/prefix_rows'] for m in steps_logged]}, prefix tokens "
              f"{[m['hpt/stages/prefix_tokens'] for m in steps_logged]}, demo-arm token share "
              f"{[round(m['actor/hpt/demo_token_share'], 3) for m in steps_logged]}")
