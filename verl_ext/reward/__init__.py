"""Rule-based math/multiple-choice reward for verl (HPT release grading, hard timeouts).

verl config::

    reward.custom_reward_function.path=pkg://verl_ext.reward.score
    reward.custom_reward_function.name=compute_score
    # or, without verl_ext installed: path=<repo>/verl_ext/reward/verl_entry.py

Modules: ``extract`` (last box, choice letter), ``normalize`` (string forms), ``equivalence``
(string/sympy/math-verify graders, run in workers), ``worker`` + ``pool`` (kill-on-timeout
processes), ``score`` (``compute_score``), ``batch`` (``score_batch``).
"""

from verl_ext.reward.batch import BatchScores, score_batch
from verl_ext.reward.extract import extract_choice_letter, last_boxed_content
from verl_ext.reward.score import compute_score

__all__ = ["compute_score", "score_batch", "BatchScores", "last_boxed_content", "extract_choice_letter"]
