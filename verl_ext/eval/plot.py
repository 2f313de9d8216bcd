"""Pass@k curves in the style of the paper's Fig. 2: one panel per benchmark, k on a log2 axis,
one line per run. The paper's own curves are not available as numbers, so only our runs are
drawn. Uses matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math


def plot_passk(runs, out_path: str, benchmarks: list[str] | None = None, title: str | None = None) -> str:
    """Write the figure to ``out_path`` (PNG); ``runs`` are :class:`verl_ext.eval.table.Run`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if benchmarks is None:
        benchmarks = []
        for run in runs:
            for b in run.summary.get("benchmarks", {}):
                if b not in benchmarks:
                    benchmarks.append(b)
    if not benchmarks:
        raise ValueError("no benchmarks to plot")
    ncols = min(3, len(benchmarks))
    nrows = math.ceil(len(benchmarks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, bench in zip(axes.flat, benchmarks):
        for run in runs:
            agg = run.summary.get("benchmarks", {}).get(bench)
            if not agg:
                continue
            curve = {int(k): 100.0 * v for k, v in agg["pass@k"].items()}  # JSON keys are strings
            ks = sorted(curve)
            ys = [curve[k] for k in ks]
            ax.plot(ks, ys, marker="o", markersize=3, label=run.label)
        ax.set_xscale("log", base=2)
        ax.set_title(bench)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(benchmarks):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
