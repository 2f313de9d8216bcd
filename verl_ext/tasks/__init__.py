"""Synthetic tasks the project generates itself (no downloads)."""

from verl_ext.tasks import arithmetic, chains

# name -> task module (LEVELS, OOD_LEVELS, LEVEL_NAMES, make_problem, generate_rows, DATA_SOURCE)
TASKS = {"arith": arithmetic, "chains": chains}
