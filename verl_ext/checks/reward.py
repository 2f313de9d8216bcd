"""The run's reward function on the driver: which one it is, and demonstrations scored with it.

The release scores its demonstration rows too (their reward is logged and, with ``placement=add``
as in LUFFY/SRFT, it enters the group's advantage statistics). verl computes rollout rewards in
its reward-loop workers; a demonstration never passes through them, so it is scored here with the
same function: ``reward.custom_reward_function`` if set, else verl's ``default_compute_score``.

Start-up (``main_hpt`` → :func:`verl_ext.checks.data.validate_data` with
:func:`resolve_reward`):

* :meth:`RunReward.describe` says which function grades the run and why (printed at start-up):
  a custom function (``reward.custom_reward_function.path`` set; ``data_source`` is only passed to
  it) or verl's dispatch on ``data_source`` (``path`` null: ``openai/gsm8k`` reads ``#### N``,
  ``lighteval/MATH``-style names the last ``\\boxed{}``, and any other name raises
  ``NotImplementedError`` inside a reward worker at step 1).
* :func:`check_data_sources` scores one row of every ``data_source`` and stops the start when the
  function raises, naming file, row and field (that step-1 crash, moved to start-up).
* :func:`check_demonstrations` scores sampled demonstrations against their ground truths and stops
  the start when fewer than ``hpt.data.demo_check_min_rate`` pass, naming failing rows and the
  likely cause (:func:`diagnose`): otherwise HPT would silently become SFT on answers the reward
  never credits (e.g. verl-gsm8k ``#### 72`` demonstrations under a ``\\boxed{}`` reward). A row
  with a list of demonstrations has *every* entry scored, whatever ``hpt.demo_choice``: each one
  counts as a demonstration in the rate and a failing one is named with its index
  (``extra_info.target[2]``). ``uniform`` and ``all`` train on every entry, and a teacher whose
  answers the reward does not read is a data problem under ``first``/``shortest`` too.

A reward model (``reward.reward_model.enable``) or a custom reward manager loaded by file
(``reward.reward_manager.source=importlib``) decide the score themselves: the run is described,
its data and demonstrations are not scored at start-up.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


from verl_ext.data.contract import demo_path
from verl_ext.checks.rows import DataValidationError
from verl_ext.hpt.demo_scorer import call_sync

logger = logging.getLogger(__name__)

# verl 0.9.1's default_compute_score dispatch (verl/utils/reward_score/__init__.py), for messages.
VERL_DISPATCH = {
    "openai/gsm8k": "gsm8k: the number after the last '#### '",
    "lighteval/MATH, DigitalLearningGmbH/MATH-lighteval, HuggingFaceH4/MATH-500": "the last \\boxed{}",
    "math_dapo, math, math_dapo_reasoning, aime*": "math_dapo: 'Answer: X' / the last \\boxed{}",
    "numina_*": "prime_math", "codecontests, apps, codeforces, taco": "code (sandbox)",
    "hiyouga/geometry3k": "geo3k", "searchR1_*": "exact match",
}
PROJECT_REWARD_FIX = ("reward.custom_reward_function.path=verl_ext/reward/verl_entry.py "
                      "reward.custom_reward_function.name=compute_score (this project's math reward: the last "
                      "\\boxed{} of the response, any data_source)")
KINDS = ("custom", "verl_dispatch", "reward_model", "custom_manager")


class RewardCheckError(DataValidationError):
    """The data cannot be graded as configured (message: file, row, field, cause and fix)."""


@dataclass(frozen=True)
class RunReward:
    """The function that grades this run's rollouts, as verl's reward loop will call it."""

    kind: str  # one of KINDS
    fn: Optional[Callable[..., Any]]  # None: the score is not a function of (data_source, text, truth)
    source: str  # where it comes from (path:name, or verl's function)

    @property
    def checkable(self) -> bool:
        return self.fn is not None

    def describe(self) -> str:
        if self.kind == "custom":
            return (f"HPT reward: custom function {self.source} (reward.custom_reward_function.path is set); "
                    f"data_source is passed to it, it does not select it")
        if self.kind == "verl_dispatch":
            return ("HPT reward: verl's default_compute_score, chosen per row by data_source "
                    "(reward.custom_reward_function.path is null): openai/gsm8k reads '#### N', "
                    "lighteval/MATH-style names read the last \\boxed{}, unknown names are refused at start-up")
        if self.kind == "reward_model":
            return ("HPT reward: a reward model (reward.reward_model.enable=true); data_sources and "
                    "demonstrations are not scored at start-up")
        return (f"HPT reward: custom reward manager {self.source} (reward.reward_manager.source=importlib); "
                f"data_sources and demonstrations are not scored at start-up")

    def score(self, data_source, text: str, ground_truth, extra_info=None) -> dict:
        """One score as verl's naive reward manager computes it (a dict with at least ``score``)."""
        res = call_sync(self.fn, data_source=data_source, solution_str=text, ground_truth=ground_truth,
                        extra_info=dict(extra_info) if isinstance(extra_info, dict) else extra_info)
        return dict(res) if isinstance(res, dict) else {"score": float(res)}


def resolve_reward(config) -> RunReward:
    """Which reward function verl's reward loop will use for this config (see the module docstring)."""
    reward = config.get("reward", None) or {}
    rm = reward.get("reward_model", None) or {}
    if rm.get("enable", False):
        return RunReward("reward_model", None, str(rm.get("model_path", "")))
    manager = reward.get("reward_manager", None) or {}
    if manager.get("source", "register") == "importlib":
        module = manager.get("module", None) or {}
        return RunReward("custom_manager", None, f"{module.get('path')}:{manager.get('name')}")
    custom = reward.get("custom_reward_function", None) or {}
    if custom.get("path"):
        from verl.trainer.ppo.reward import get_custom_reward_fn

        return RunReward("custom", get_custom_reward_fn(config), f"{custom.get('path')}:{custom.get('name')}")
    from verl.utils.reward_score import default_compute_score

    return RunReward("verl_dispatch", default_compute_score, "verl.utils.reward_score.default_compute_score")


def check_data_sources(reward: RunReward, path: str, source_rows: dict) -> None:
    """Score one row of each data_source of ``path``; raise :class:`RewardCheckError` when the reward
    function cannot score it. ``source_rows``: data_source -> (row, ground truth, demo or None, extra_info)."""
    if not reward.checkable:
        return
    for ds, (row, gt, demo, info) in source_rows.items():
        try:
            reward.score(ds, demo if demo is not None else str(gt), gt, info)
        except NotImplementedError as exc:
            known = "; ".join(f"{k} ({v})" for k, v in VERL_DISPATCH.items())
            raise RewardCheckError(
                f"{path}: row {row}: field 'data_source': {ds!r} cannot be scored: {exc}. "
                + (f"With reward.custom_reward_function.path null, verl picks the scorer by data_source and knows "
                   f"only: {known}. Fix: use the math reward for any data_source with {PROJECT_REWARD_FIX}, or "
                   f"rename data_source to a name verl scores in your answer format."
                   if reward.kind == "verl_dispatch" else
                   f"The custom reward function {reward.source} does not handle it: extend it or rename "
                   f"data_source.")) from exc
        except Exception as exc:  # noqa: BLE001  any crash here would crash a reward worker at step 1
            raise RewardCheckError(
                f"{path}: row {row}: field 'data_source': the reward function {reward.source} crashed scoring a "
                f"row with data_source={ds!r}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class DemoFailure:
    row: int
    data_source: str
    ground_truth: Any
    demo: str
    score: float
    entry: Optional[int] = None  # the entry's index when the row holds a list of demonstrations


_HASH_ANSWER = re.compile(r"####\s*\S")


def diagnose(failures: Sequence[DemoFailure], reward_kind: str) -> list[str]:
    """Likely causes of demonstrations failing the reward, most likely first (plain sentences)."""
    if not failures:
        return []
    n = len(failures)
    has_hash = sum(bool(_HASH_ANSWER.search(f.demo)) and "\\boxed" not in f.demo for f in failures)
    has_box = sum("\\boxed" in f.demo and not _HASH_ANSWER.search(f.demo) for f in failures)
    sources = Counter(f.data_source for f in failures)
    gt_hash = sum("####" in str(f.ground_truth) or "\\boxed" in str(f.ground_truth) for f in failures)
    causes = []
    if gt_hash:
        causes.append(f"{gt_hash}/{n} ground truths still carry '####' or '\\boxed{{}}': reward_model.ground_truth "
                      f"must be the bare answer (e.g. '72')")
    if has_hash * 2 >= n:
        if reward_kind == "verl_dispatch" and sources.get("openai/gsm8k", 0) * 2 >= n:
            causes.append("the demonstrations end in '#### N' and verl's gsm8k scorer reads it, yet the number "
                          "differs from reward_model.ground_truth: check the ground truth (no commas, no units)")
        else:
            causes.append(
                f"{has_hash}/{n} failing demonstrations end in '#### N' (verl's gsm8k answer format) but the reward "
                f"in use does not read '####' (this project's math reward reads the last \\boxed{{}}). Fix: "
                f"python scripts/data/convert.py --format verl_gsm8k --answer-format boxed (rewrites '#### N' to "
                f"'\\boxed{{N}}', keeps the original), or grade '####' with verl's gsm8k scorer: "
                f"data_source=openai/gsm8k and reward.custom_reward_function.path=null")
    if has_box * 2 >= n:
        if reward_kind == "verl_dispatch" and sources.get("openai/gsm8k", 0) * 2 >= n:
            causes.append(
                f"data_source 'openai/gsm8k' makes verl grade with its gsm8k scorer, which reads only '#### N', "
                f"while {has_box}/{n} failing demonstrations answer in \\boxed{{}}: a wrong data_source for this "
                f"answer format. Fix: {PROJECT_REWARD_FIX}")
        else:
            causes.append(f"{has_box}/{n} failing demonstrations do box an answer, but it does not match "
                          f"reward_model.ground_truth: check that the ground truth is the final answer in the "
                          f"same form (e.g. '72', not 'The answer is 72')")
    if not has_hash and not has_box:
        causes.append("the failing demonstrations carry no final answer in a format the reward reads "
                      "(\\boxed{...} for this project's math reward, '#### N' for verl's gsm8k scorer)")
    if len(sources) and reward_kind == "verl_dispatch" and not causes:
        causes.append(f"verl's dispatch graded data_source(s) {sorted(sources)}: check that this scorer reads the "
                      f"demonstrations' answer format")
    return causes or ["the demonstrations' final answers differ from reward_model.ground_truth"]


def check_demonstrations(reward: RunReward, path: str, sample: Sequence[tuple], demo_field: str,
                         min_rate: float, correct_threshold: float = 1.0, shown: int = 5) -> Optional[dict]:
    """Score ``sample`` [(row, data_source, ground truth, demo, extra_info)] with the run's reward;
    ``demo`` is a string or a list of strings, whose every entry is scored (see the module docstring).

    Returns ``{"scored", "passed", "rate", "min_rate", "failed_rows"}`` (None when the reward is not a
    function; ``scored`` counts demonstrations, list entries included); prints the rate; raises
    :class:`RewardCheckError` when ``rate < min_rate``."""
    if not reward.checkable or not sample:
        return None
    failures = []
    scored = 0
    for row, ds, gt, demo, info in sample:
        entries = [(None, demo)] if isinstance(demo, str) else list(enumerate(demo))
        for j, text in entries:
            scored += 1
            s = float(reward.score(ds, text, gt, info).get("score", 0.0))
            if not s >= correct_threshold:
                failures.append(DemoFailure(int(row), ds, gt, text, s, entry=j))
    passed = scored - len(failures)
    rate = passed / scored
    result = {"scored": scored, "passed": passed, "rate": rate, "min_rate": float(min_rate),
              "failed_rows": list(dict.fromkeys(f.row for f in failures))[:20]}
    print(f"HPT data: {path}: demonstrations passing the run's reward: {passed}/{scored} ({100 * rate:.1f}%; "
          f"start-up minimum hpt.data.demo_check_min_rate={min_rate})")
    if rate < min_rate:
        lines = [f"HPT data: {path}: only {passed}/{scored} demonstrations (extra_info.{demo_field}) score >= "
                 f"{correct_threshold} under the run's reward ({100 * rate:.1f}% < "
                 f"hpt.data.demo_check_min_rate={min_rate}). HPT would train SFT on answers its reward never "
                 f"credits. {reward.describe()}.", "Failing rows:"]
        for f in failures[:shown]:
            tail = f.demo.strip()[-80:].replace("\n", " ")
            lines.append(f"  {path}: row {f.row}: field '{demo_path(demo_field, f.entry)}': score {f.score:g} "
                         f"(data_source={f.data_source!r}, ground_truth={str(f.ground_truth)[:40]!r}, "
                         f"demonstration ends: ...{tail!r})")
        lines.append("Likely cause:")
        lines += [f"  - {c}" for c in diagnose(failures, reward.kind)]
        lines.append("To start anyway, lower hpt.data.demo_check_min_rate (0: report only) or set "
                     "hpt.data.demo_check_rows=0.")
        raise RewardCheckError("\n".join(lines))
    return result
