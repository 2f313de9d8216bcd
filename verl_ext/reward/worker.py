"""Grading worker process: ``python -m verl_ext.reward.worker [--max-memory-mb N]``.

Protocol (JSON lines): it writes ``{"ready": true}`` once imports are done, then for each
request line ``{"pred": str, "gts": [str, ...], "budget": seconds, "mode": "default"|"release"}``
it writes ``{"correct": bool, "stage": str, "timed_out": bool, "error": str|null}``; ``error``
names the exceptions of judges that fell through to the next one (the verdict still stands).
It exits on end of input (the parent closed the pipe or died).

Self-protection, so that a worker can never outlive a hang even if the parent is gone:
* per request, RLIMIT_CPU is set to (CPU used so far + 2*budget + 1 s); the kernel kills the
  process with SIGXCPU if one request burns more, even inside C code holding the GIL;
* optional RLIMIT_AS (``--max-memory-mb``) turns runaway big-integer arithmetic into a
  MemoryError instead of swapping the machine.
The parent (``verl_ext.reward.pool``) additionally kills the worker at the hard budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys


def _cpu_seconds_used() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _arm_cpu_limit(budget: float) -> None:
    soft = int(math.ceil(_cpu_seconds_used() + 2 * budget + 1))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-memory-mb", type=int, default=0)
    args = ap.parse_args(argv)
    if args.max_memory_mb > 0:
        lim = args.max_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    # The worker talks only through stdout; keep library chatter off it.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr

    import logging

    logging.disable(logging.WARNING)
    from verl_ext.reward import equivalence, judge  # heavy imports (sympy) happen here, once
    import math_verify  # noqa: F401  (warm the import before reporting ready)

    # The first parse builds math-verify's LaTeX grammar and sympy caches (about a second): do it
    # before reporting ready, so that it is not charged to the first answer's time limit.
    judge.grade("x^2+2x+1", "(x+1)^2")

    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            budget = float(req.get("budget", 5.0))
            _arm_cpu_limit(budget)
            result = {"correct": False, "stage": "none", "timed_out": False, "error": None}
            errors: list[str] = []
            for gt in req["gts"]:
                if req.get("mode") == "release":
                    # soft stage limits leave headroom under the parent's hard kill at `budget`
                    v = equivalence.grade(req["pred"], gt, sympy_timeout=0.45 * budget,
                                          math_verify_timeout=0.45 * budget)
                else:
                    v = judge.grade(req["pred"], gt, time_limit=0.9 * budget)
                    errors += v.errors
                result["timed_out"] = result["timed_out"] or v.timed_out
                if v.correct:
                    result.update(correct=True, stage=v.stage, timed_out=False)
                    break
            result["error"] = "; ".join(errors)[:300] or None
        except MemoryError:
            result = {"correct": False, "stage": "none", "timed_out": False, "error": "MemoryError"}
        except Exception as e:  # a grader bug must not kill the worker; report it
            result = {"correct": False, "stage": "none", "timed_out": False, "error": f"{type(e).__name__}: {e}"[:300]}
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
