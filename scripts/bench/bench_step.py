"""The HPT trainer's step against verl's own GRPO step and a plain PyTorch loop doing the same work.

    python scripts/bench/bench_step.py [--steps 8] [--warmup 2] [--runs plain,hpt,verl] [--out FILE] [overrides]

Needs the main job's data and base (data/arith, models/arith-base: `bash scripts/main_job.sh` makes
them). What each run does and what the phases are: verl_ext/tasks/step_bench.py.
"""

from verl_ext.tasks.step_bench import main

if __name__ == "__main__":
    main()
