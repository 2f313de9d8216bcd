"""Summaries of a training run from verl's file-logger metrics (JSONL): tables and plots."""

from __future__ import annotations

import json
from pathlib import Path

# The training dynamics every summary plots (the CPU route's dynamics.png here, the arena's per-run
# records and dynamics.png in verl_ext.arena): short name -> (panel title, verl metric key).
DYNAMICS = {
    # Rollouts' pass rate, not critic/score/mean: the latter also averages the demonstration rows
    # (scored 1), so it falls as the SFT share falls.
    "pass_rate": ("rollout pass rate (hpt/pass_rate/mean)", "hpt/pass_rate/mean"),
    "sft_share": ("SFT share of questions", "hpt/sft_question_share"),
    "response_length": ("response length (RL rows)", "hpt/response_length/rl"),
    "entropy": ("entropy (actor/entropy)", "actor/entropy"),
}
PLOT_KEYS = {title: key for title, key in DYNAMICS.values()}


def read_metrics(path: str | Path) -> list[dict]:
    """One dict per logged step (verl's FileLogger writes {"step": s, "data": {...}} lines)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            rows.append(dict(rec["data"], step=rec["step"]))
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in rows if key in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_dynamics(runs: dict[str, list[dict]], out_png: str | Path) -> Path:
    """2x2 panels of training dynamics (reward, SFT share, response length, entropy) per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, key) in zip(axes.flat, PLOT_KEYS.items()):
        for name, rows in runs.items():
            x, y = series(rows, key)
            if x:
                ax.plot(x, y, label=name, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def accuracy_table(rows: dict[str, dict], levels: list[str]) -> str:
    """Markdown table: one row per model/run, columns all + per level (accuracy in %)."""
    cols = ["all"] + levels
    head = "| model | " + " | ".join(c.replace("_", " ") for c in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    body = []
    for name, acc in rows.items():
        body.append(f"| {name} | " + " | ".join(f"{100 * acc.get(c, float('nan')):.1f}" for c in cols) + " |")
    return "\n".join([head, sep, *body])
