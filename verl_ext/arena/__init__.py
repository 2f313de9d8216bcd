"""The arena: every post-training method from one base, through one trainer, each at its best lr,
over seeds, with uncertainty. ``scripts/arena.py`` is its command line.

Methods are data: configs/arena/methods.yaml (Hydra overrides per method). The CPU arena's task,
base, budget and evaluation: configs/arena/cpu.yaml. For every method:

1. lr grid at seed 0 (``--lrs``), each point scored on the validation split (val.parquet, disjoint
   from the test split); the best validation score picks the lr (results/arena/lr_selection.json
   records every grid point). Chains (SFT->GRPO) and ``lr_from`` entries reuse selected lrs.
2. ``--seeds`` runs at the selected lr (seed 0 is the grid run itself).
3. Each (method, lr, seed) run writes one JSON (runs/<method>/lr<lr>_s<seed>.json): per-problem
   greedy correctness on the ID test and the OOD test, per-problem correct counts of ``samples``
   temperature-1 samples on a fixed pass@k subset, validation accuracy, generated / trained tokens,
   wall time, per-step dynamics, sample outputs. Finished JSONs are skipped on a rerun.
4. ``--report`` (also run at the end): table.md (mean ± std over seeds, 95 % bootstrap interval over
   problems and seeds, paired bootstrap vs the best method, ID and OOD apart), passk.png,
   tokens.png (accuracy against generated tokens per method), dynamics.png (mean over seeds with a
   min-max band), base_passk.md — from the JSONs alone.

``--scale configs/arena/scale_<model>.yaml --dry-run`` composes the same methods as GPU launches of
``recipe.hpt.main_hpt`` (one per method, lr, seed; chains as consecutive stages), prints them and
validates each with Hydra's compose API and verl's config checks.

Modules: ``methods`` (methods.yaml, names of runs and their files), ``runner`` (data, base, training
subprocesses, locks, resume), ``evaluate`` (per-problem evaluation), ``selection`` (lr on
validation), ``stats`` (intervals, paired tests), ``report`` (table.md, plots), ``scale`` (GPU
launches); ``probe`` (``scripts/bench/arena_probe.py``: a candidate base probed outside the arena).
"""

from pathlib import Path

import verl_ext

# The checkout the arena reads configs/ and the task's scripts from and writes results/, data/,
# models/ and outputs/ into (verl_ext is installed editable, so this is the repository root).
REPO = Path(verl_ext.__file__).resolve().parents[1]
