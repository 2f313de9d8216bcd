"""Rule-based math/multiple-choice reward for verl (math-verify as the judge, hard timeouts).

verl config::

    reward.custom_reward_function.path=pkg://verl_ext.reward.score
    reward.custom_reward_function.name=compute_score
    # or, without verl_ext installed: path=<repo>/verl_ext/reward/verl_entry.py

Modules: ``extract`` (final box(es), choice letter), ``rewrite`` (presentation clean-up), ``canonical``
(cheap forms decided in-process), ``judge`` (math-verify, then string; run in workers),
``release`` + ``normalize`` + ``equivalence`` (the opt-in release-style grader), ``worker`` + ``pool``
(kill-on-timeout processes), ``score`` (``compute_score``), ``batch`` (``score_batch``).
See ``verl_ext/reward/README.md``.
"""

from verl_ext.reward.batch import BatchScores, score_batch
from verl_ext.reward.extract import extract_choice_letter, last_boxed_content
from verl_ext.reward.score import compute_score

__all__ = ["compute_score", "score_batch", "BatchScores", "last_boxed_content", "extract_choice_letter"]
