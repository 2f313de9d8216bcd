"""The arena: every post-training method from one base, through one trainer, each at its best lr,
over seeds, with uncertainty. What it does and writes: ``verl_ext/arena/__init__.py``.

Methods: configs/arena/methods.yaml. The CPU arena's task, base, budget and evaluation:
configs/arena/cpu.yaml. GPU launches: configs/arena/scale_<model>.yaml.

Usage:
  python scripts/arena.py                          # the full CPU arena (see README "Arena")
  python scripts/arena.py --quick --out /tmp/q     # CI: 2 methods, 1 seed, 2 steps, tiny sets
  python scripts/arena.py --report                 # rebuild table and plots from the JSONs
  python scripts/arena.py --methods "GRPO,HPT g=0" --seeds 0,1 --steps 20 --lrs 3e-4,1e-3
  python scripts/arena.py --scale configs/arena/scale_qwen2.5-math-7b.yaml --dry-run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from verl_ext.arena import REPO
from verl_ext.arena.methods import CPU_FILE, METHODS_FILE, load_config, load_methods


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None, help="comma-separated method names (configs/arena/methods.yaml)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: configs/arena/cpu.yaml)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer-step budget per method (chains split it)")
    ap.add_argument("--lrs", default=None, help="comma-separated lr grid")
    ap.add_argument("--quick", action="store_true", help="CI: 2 methods, 1 seed, 2 steps, tiny evaluation sets")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once (each its own process; 2 on 2 cores: a run keeps about one busy)")
    ap.add_argument("--report", action="store_true", help="rebuild table and plots from the result JSONs only")
    ap.add_argument("--out", default="results/arena", help="results folder (relative: to the repository root)")
    ap.add_argument("--work", default=None, help="checkpoints and logs (default outputs/arena_work/<out name>)")
    ap.add_argument("--methods-file", default=str(METHODS_FILE))
    ap.add_argument("--config", default=str(CPU_FILE))
    ap.add_argument("--scale", default=None, help="GPU scale config (configs/arena/scale_*.yaml): compose launches")
    ap.add_argument("--dry-run", action="store_true", help="with --scale: print and validate every command")
    args = ap.parse_args(argv)

    common, methods = load_methods(Path(args.methods_file))
    cfg = load_config(Path(args.config))
    names = [n.strip() for n in args.methods.split(",")] if args.methods else None
    if args.quick and names is None:
        names = list(cfg["quick"]["methods"])
    names = names or list(methods)
    unknown = [n for n in names if n not in methods]
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {list(methods)} ({args.methods_file})")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else None
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out

    if args.scale:
        from verl_ext.arena.scale import scale_commands, validate_overrides

        cmds = scale_commands(Path(args.scale), common, methods, names, lrs, seeds, args.steps)
        for c in cmds:
            print(c["command"])
            if args.dry_run:
                validate_overrides(c["overrides"])
        print(f"# {len(cmds)} commands" + (", each composed and validated" if args.dry_run else ""), flush=True)
        if not args.dry_run:
            print("# run them on the cluster in order (chain stages after their predecessor)")
        return cmds

    if args.report:
        from verl_ext.arena.report import report

        text = report(out, methods, names if args.methods else None)
        print(text)
        return text

    from verl_ext.arena.runner import run_arena

    return run_arena(cfg, common, methods, names, out, seeds=seeds, lrs=lrs, steps=args.steps, quick=args.quick,
                     jobs=args.jobs, work=args.work)


if __name__ == "__main__":
    main()
