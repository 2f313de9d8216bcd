"""The arena's report, rebuilt from the run JSONs alone (no data, no model, no training): table.md,
stats.json, lr_selection.json, base_passk.md, passk.png, tokens.png and dynamics.png.

Every method is reported at its selected lr (``verl_ext.arena.selection``), over the seeds it has:
mean ± std over seeds, a 95 % bootstrap interval over problems and seeds, and paired bootstrap
differences to the best method and to the base (``verl_ext.arena.stats``), ID and OOD apart. The
output depends only on the JSONs, so a rebuild of committed results is byte-identical. Runs of two
bases (two ``base_fingerprint`` values, ``verl_ext.arena.fingerprint``) are refused, not compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from verl_ext.arena.fingerprint import check_one_base
from verl_ext.arena.methods import accuracy, lr_tag, run_path
from verl_ext.arena.runner import DYN_KEYS
from verl_ext.arena.selection import needed_grid_methods, select_lrs
from verl_ext.arena.stats import bootstrap_ci, paired_bootstrap, seed_mean_std
from verl_ext.eval.passk import pass_at_k_curve, powers_of_two_up_to


def _matrix(runs: list[dict], block: str) -> np.ndarray:
    """(seeds, problems) 0/1 correctness of one method's runs on one block."""
    return np.array([[int(c) for c in r[block]["correct"]] for r in runs])


def _level_cols(runs: list[dict], block: str) -> list[int]:
    return sorted(set(runs[0][block]["levels"]))


def pct(x) -> str:
    return f"{100 * x:.1f}"


def _sig(v) -> str:
    """A paired comparison as 'diff [low, high]' in points, * when significant."""
    if v == "best":
        return "best"
    if v is None:
        return "-"
    return (f"{100 * v['diff']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]"
            + (" *" if v["significant"] else ""))


def report(out: Path, methods: dict, names: list[str] | None = None) -> str:
    """Rebuild table.md, passk.png, tokens.png, dynamics.png and base_passk.md from the run JSONs alone."""
    paths = sorted((out / "runs").glob("*/*.json"))
    all_runs = [json.loads(p.read_text()) for p in paths]
    if not all_runs:
        raise SystemExit(f"no run JSONs under {out / 'runs'}: run the arena (scripts/arena.py) first, "
                         f"or pass the --out folder that holds its runs/")
    # every run from one base (Arena I's runs carry no fingerprint: all "unknown", reported as one)
    check_one_base(list(zip(paths, all_runs)), out / "runs")
    planned = json.loads((out / "arena.json").read_text()).get("lrs") if (out / "arena.json").exists() else None
    # every method of methods.yaml with results, in its order (arena.json names only the last
    # invocation's methods, and several invocations may have filled runs/)
    order = [n for n in (names or list(methods)) if n in methods]
    if names is None:
        order = [n for n in order if any(r["method"] == n for r in all_runs)]
    seed0 = min(r["seed"] for r in all_runs)
    lrs = sorted({r["lr"] for r in all_runs if isinstance(r["lr"], float)})
    sel = select_lrs(out, methods, list(dict.fromkeys(needed_grid_methods(methods, order) + order)), lrs, seed0)
    (out / "lr_selection.json").write_text(json.dumps(sel, indent=2))

    final = _final_runs(order, methods, sel, all_runs)
    any_run = next(iter(final.values()))[0]
    id_levels, ood_levels = _level_cols([any_run], "test"), _level_cols([any_run], "ood")
    stats, bests = _method_stats(final)
    (out / "stats.json").write_text(json.dumps({"best": bests, "methods": stats}, indent=2))

    md = [*_results_section(final, stats, any_run, id_levels, ood_levels),
          *_selection_section(order, sel, final, planned or lrs), *_degenerate_section(out, order, sel, final, seed0)]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_samples = any_run["passk"]["samples"]
    ks = [k for k in powers_of_two_up_to(n_samples) if k <= 64]
    # one colour per method in every plot; tab20 past 10 methods, where tab10 would repeat colours
    cmap = plt.get_cmap("tab20" if len(final) > 10 else "tab10")
    colour = {name: cmap(i) for i, name in enumerate(final)}
    md += _passk_section(out, final, ood_levels, n_samples, ks, colour, plt)
    md += _base_passk_section(out, final, stats, ood_levels, n_samples, ks)
    _tokens_plot(out, stats, colour, plt)
    _dynamics_plot(out, final, colour, plt)
    md += ["Plots: passk.png, tokens.png (accuracy vs generated tokens), dynamics.png. "
           "Per-run JSONs: runs/<method>/lr<lr>_s<seed>.json.", ""]
    text = "\n".join(md)
    (out / "table.md").write_text(text)
    return text


def _final_runs(order: list[str], methods: dict, sel: dict, all_runs: list[dict]) -> dict[str, list[dict]]:
    """Per reported method, its runs at the selected lr (the base: all its runs), by seed."""
    final = {}
    for name in order:
        if methods[name].get("train", True) is False:
            runs = [r for r in all_runs if r["method"] == name]
        elif name in sel:
            want = sel[name]["selected"]
            runs = [r for r in all_runs if r["method"] == name and r["lr"] == want]
        else:
            runs = []
        if runs:
            final[name] = sorted(runs, key=lambda r: r["seed"])
    if not final:
        raise SystemExit("no finished method to report: no method has a run at its selected lr yet; "
                         "let the arena finish a grid (scripts/arena.py) and report again")
    return final


def _method_stats(final: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Per method and block (test = ID, ood): mean, std, interval, per-level accuracy, paired
    differences to the best method and to the base; and the best method per block."""
    stats = {}
    for name, runs in final.items():
        s = {"seeds": [r["seed"] for r in runs], "lr": runs[0]["lr"]}
        for block in ("test", "ood"):
            mat = _matrix(runs, block)
            levels = np.array(runs[0][block]["levels"])
            mean, std = seed_mean_std(mat)
            _, lo, hi = bootstrap_ci(mat)
            s[block] = {"mean": mean, "std": std, "low": lo, "high": hi,
                        "levels": {int(lv): float(mat[:, levels == lv].mean()) for lv in sorted(set(levels))}}
        s["generated_tokens_est"] = float(np.mean([r["generated_tokens_est"] for r in runs]))
        s["trained_tokens"] = float(np.mean([r["trained_tokens"] for r in runs]))
        s["wall_s"] = float(np.mean([r["wall_s"] for r in runs]))
        stats[name] = s
    bests = {}
    for block in ("test", "ood"):
        best = bests[block] = max(stats, key=lambda n: stats[n][block]["mean"])
        for name in stats:
            if name == best:
                stats[name][block]["vs_best"] = "best"
                continue
            cmp = paired_bootstrap(_matrix(final[name], block), _matrix(final[best], block))
            stats[name][block]["vs_best"] = cmp
        # the gain over the untrained base, paired on the same problems: what the issue's "the best
        # method gains on the base by many times the interval" is read from
        for name in stats:
            if "base" in final and name != "base":
                stats[name][block]["vs_base"] = paired_bootstrap(_matrix(final[name], block),
                                                                 _matrix(final["base"], block))
    return stats, bests


def _results_section(final: dict, stats: dict, any_run: dict, id_levels: list[int], ood_levels: list[int]) -> list[str]:
    """The title, the legend and the results table (one row per method)."""
    n_test, n_ood = len(any_run["test"]["correct"]), len(any_run["ood"]["correct"])
    head = ("| method | lr | seeds | ID mean ± std | ID 95% CI | " + " | ".join(f"L{lv}" for lv in id_levels)
            + " | ID vs best | ID vs base | OOD mean ± std | OOD 95% CI | " + " | ".join(f"L{lv}" for lv in ood_levels)
            + " | OOD vs best | OOD vs base | gen. tokens | trained tokens | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in ((n, stats[n]) for n in final):
        t, o = s["test"], s["ood"]
        lines.append(
            f"| {name} | {lr_tag(s['lr']) if s['lr'] is not None else '-'} | {len(s['seeds'])} | "
            f"{pct(t['mean'])} ± {pct(t['std'])} | [{pct(t['low'])}, {pct(t['high'])}] | "
            + " | ".join(pct(t["levels"][lv]) for lv in id_levels)
            + f" | {_sig(t['vs_best'])} | {_sig(t.get('vs_base'))} | {pct(o['mean'])} ± {pct(o['std'])} | "
            + f"[{pct(o['low'])}, {pct(o['high'])}] | " + " | ".join(pct(o["levels"][lv]) for lv in ood_levels)
            + f" | {_sig(o['vs_best'])} | {_sig(o.get('vs_base'))} | {s['generated_tokens_est']:.0f}"
            + f" | {s['trained_tokens']:.0f}"
            + f" | {s['wall_s']:.0f} |")
    return [f"# Arena: held-out accuracy (%), greedy; ID = {n_test} test problems of levels {id_levels}, "
            f"OOD = {n_ood} problems of levels {ood_levels} (never trained on)", "",
            f"Steps per method: {any_run['steps']} × {any_run['questions_per_step']} questions; "
            "mean ± std over seeds; 95% CI: bootstrap over problems and seeds; 'vs best' / 'vs base': paired "
            "bootstrap difference to the best method / to the base, with its 95% CI, * = significant (CI excludes 0).",
            "", *lines, ""]


def _selection_section(order: list[str], sel: dict, final: dict, grid_lrs: list) -> list[str]:
    """Every method's lr grid on validation (test in brackets) and the selected lr."""
    sel_lines = ["| method | grid: validation accuracy % (test %) | selected lr |", "|---|---|---|"]
    for name in order:
        if name not in sel or not (sel[name].get("grid") or name in final):  # a reused lr: listed once run
            continue
        g = sel[name].get("grid")
        grid = ", ".join(f"{k}: {pct(v['val'])} ({pct(v['test'])})" for k, v in g.items()) if g else \
            f"reuses {', '.join(sel[name]['reused_from'])}"
        n_grid = len(grid_lrs)
        partial = f" (grid: {len(g)} of {n_grid} points so far)" if g and len(g) < n_grid else ""
        sel_lines.append(f"| {name} | {grid} | {lr_tag(sel[name]['selected'])}{partial} |")
    return ["## Learning-rate selection (validation split, disjoint from test)", "", *sel_lines, ""]


def _degenerate_section(out: Path, order: list[str], sel: dict, final: dict, seed0: int) -> list[str]:
    """Methods whose every grid point scores below half the base's validation accuracy, with a
    few of their greedy answers (what a collapse looks like)."""
    if "base" not in final:
        return []
    base_val = float(np.mean([accuracy(r["val"]) for r in final["base"]]))
    degenerate = [name for name in order if (g := (sel.get(name) or {}).get("grid"))
                  and all(v["val"] < 0.5 * base_val for v in g.values())]
    if not degenerate:
        return []
    md = ["## Degenerate at every grid point (validation < half the base's)", ""]
    for name in degenerate:
        r = json.loads(run_path(out, name, sel[name]["selected"], seed0).read_text())
        md += [f"- {name}: " + "; ".join(f"`{s['question']}` -> `{s['response'][:60]}`"
                                        for s in r.get("samples", [])[:3])]
    md.append("")
    return md


def _passk_section(out: Path, final: dict, ood_levels: list[int], n_samples: int, ks: list[int], colour: dict,
                   plt) -> list[str]:
    """passk.png (mean over seeds, ID and OOD subsets) and its table."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    passk = {}
    for name, runs in final.items():
        for ax, (label, is_ood) in zip(axes, (("ID", False), ("OOD", True))):
            curves = []
            for r in runs:
                lv = np.array(r["passk"]["levels"])
                sel_rows = np.isin(lv, ood_levels) if is_ood else ~np.isin(lv, ood_levels)
                counts = np.array(r["passk"]["counts"])[sel_rows]
                c = pass_at_k_curve(counts, n_samples, ks)
                curves.append([c[k] for k in ks])
            m = np.mean(curves, axis=0)
            passk.setdefault(name, {})[label] = {int(k): float(v) for k, v in zip(ks, m)}
            ax.plot(ks, 100 * m, marker="o", label=name, color=colour[name])
            ax.set_title(f"pass@k at temperature 1 ({label} subset)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "passk.png", dpi=110)
    plt.close(fig)
    md = ["## pass@k at temperature 1 (fixed subset; mean over seeds; passk.png)", "",
          "| method | " + " | ".join(f"ID@{k}" for k in ks) + " | " + " | ".join(f"OOD@{k}" for k in ks) + " |",
          "|---|" + "---|" * (2 * len(ks))]
    for name, pk in passk.items():
        md.append(f"| {name} | " + " | ".join(pct(pk["ID"][k]) for k in ks) + " | "
                  + " | ".join(pct(pk["OOD"][k]) for k in ks) + " |")
    md.append("")
    return md


def _base_passk_section(out: Path, final: dict, stats: dict, ood_levels: list[int], n_samples: int,
                        ks: list[int]) -> list[str]:
    """The base's pass@k per level (which regime each level is in); also written to base_passk.md."""
    if "base" not in final:
        return []
    r = final["base"][0]
    lv = np.array(r["passk"]["levels"])
    counts = np.array(r["passk"]["counts"])
    bl = ["## Base model: pass@k per level (temperature 1)", "",
          "| level | problems | greedy (test) | " + " | ".join(f"pass@{k}" for k in ks) + " |",
          "|---|---|---|" + "---|" * len(ks)]
    for level in sorted(set(lv)):
        c = pass_at_k_curve(counts[lv == level], n_samples, ks)
        block = "ood" if level in ood_levels else "test"
        greedy = stats["base"][block]["levels"].get(int(level), float("nan"))
        bl.append(f"| {level} | {int((lv == level).sum())} | {pct(greedy)} | "
                  + " | ".join(pct(c[k]) for k in ks) + " |")
    (out / "base_passk.md").write_text("\n".join(bl) + "\n")
    return bl + [""]


def _tokens_plot(out: Path, stats: dict, colour: dict, plt) -> None:
    """tokens.png: accuracy against generation cost, one point per method (what
    staged generation and the prefix hybrids save)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (block, label) in zip(axes, (("test", "ID"), ("ood", "OOD"))):
        for name, s in stats.items():
            b = s[block]
            x = s["generated_tokens_est"] / 1e3
            ax.errorbar([x], [100 * b["mean"]], yerr=[[100 * (b["mean"] - b["low"])], [100 * (b["high"] - b["mean"])]],
                        fmt="o", capsize=3, label=name, color=colour[name])
            ax.annotate(name, (x, 100 * b["mean"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_title(f"{label} accuracy vs generated tokens (95 % CI)")
        ax.set_xlabel("generated tokens per run (thousands; mean over seeds)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "tokens.png", dpi=110)
    plt.close(fig)


def _dynamics_plot(out: Path, final: dict, colour: dict, plt) -> None:
    """dynamics.png: per-step dynamics, mean over seeds with a min-max band."""
    # the same colours in all four panels: a method without a series in one panel (SFT has no rollout
    # pass rate) must not shift the colour cycle of the methods after it
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    handles = {}
    for ax, key in zip(axes.flat, DYN_KEYS):
        for name, runs in final.items():
            series = [r["dynamics"] for r in runs if r.get("dynamics")]
            if not series:
                continue
            steps = series[0]["step"]
            vals = np.array([[np.nan if v is None else v for v in s[key]][: len(steps)] for s in series
                             if len(s[key]) >= len(steps)], dtype=float)
            if vals.size == 0 or np.all(np.isnan(vals)):
                continue
            mean = np.nanmean(vals, axis=0)
            handles[name], = ax.plot(steps, mean, label=name, linewidth=1.2, color=colour[name])
            ax.fill_between(steps, np.nanmin(vals, axis=0), np.nanmax(vals, axis=0), alpha=0.2, color=colour[name])
        ax.set_title(f"{key} (mean over seeds, band = min..max)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    # the legend names every method drawn in any panel, in methods.yaml's order
    axes.flat[0].legend([handles[n] for n in final if n in handles], [n for n in final if n in handles], fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dynamics.png", dpi=110)
    plt.close(fig)
