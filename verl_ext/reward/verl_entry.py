"""File-path entry point for verl's ``reward.custom_reward_function.path``.

verl loads a file path as a standalone module (no package context), so this file makes the repo
importable and re-exports :func:`verl_ext.reward.score.compute_score`. With ``verl_ext``
installed, ``path=pkg://verl_ext.reward.score`` is equivalent.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from verl_ext.reward.score import compute_score  # noqa: E402

__all__ = ["compute_score"]
