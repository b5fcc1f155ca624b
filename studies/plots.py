"""The report's figures (matplotlib, written as PNG): one colour per group, thin lines per seed, a bold mean.

`draw_all(groups, out)` returns [(title, file name)] of the figures it wrote; a figure whose data no run has
(no evaluation, no staleness histogram, no metric of that name) is left out rather than drawn empty.
`CAPTIONS` holds what a figure's numbers are, for the figures that need saying (the report prints it below).
"""

from __future__ import annotations

import os

import numpy as np

from asyncor.studies.runs import actor_idle_fraction, by_staleness, wait_fraction

MISMATCH_PANELS = [  # (metric whose `_s<k>` forms are plotted, panel title, y label)
    ("learner/mismatch_abs_mean", "|log π − log μ|, mean", "nats / token"),
    ("learner/mismatch_abs_p99", "|log π − log μ|, p99", "nats"),
    ("learner/mismatch_kl", "KL(μ‖π) (k3 estimate)", "nats / token"),
    ("learner/correction_frac", "share masked or truncated by the correction", "share of tokens"),
    ("learner/objective_masked_frac", "share masked by the objective (M2PO)", "share of tokens"),
]
CAPTIONS = {
    "mismatch_by_staleness.png":
        "Trainer-inference mismatch against the staleness of the trained tokens (learner version − generating "
        "version; learner/mismatch.py): at staleness 0 it is numerics alone (vLLM against the learner), at k "
        "it adds k versions of policy drift. Each point is, per run, the mean over its steps of the step's "
        "figure for the tokens of that staleness weighted by their number (learner/tokens_s<k>), then the "
        "plain mean over the group's seeds that have tokens of that staleness (n in the legend: the most "
        "such seeds at any k). The p99 panel therefore shows the token-weighted mean of the per-step 99th "
        "percentiles, not a percentile over the whole run. Panels without data in any run are left out.",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean over seeds at the steps every seed has."""
    if not curves:
        return None
    common = set(curves[0][0].tolist())
    for x, _ in curves[1:]:
        common &= set(x.tolist())
    xs = np.array(sorted(common))
    if len(xs) == 0:
        return None
    ys = np.mean([np.interp(xs, x, y) for x, y in curves], axis=0)
    return xs, ys


def _curves(groups, out: str, name: str, title: str, ylabel: str, get, xlabel: str = "policy version (step)"):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for i, g in enumerate(groups):
        colour = f"C{i % 10}"
        curves = [c for c in (get(r) for r in g.runs) if c is not None and len(c[0])]
        for x, y in curves:
            ax.plot(x, y, color=colour, alpha=0.3, linewidth=0.8)
        mean = _mean_curve(curves)
        if mean is not None:
            ax.plot(*mean, color=colour, linewidth=2, label=f"{g.label} (n={len(curves)})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return title, name


def _bars(groups, out: str, name: str, title: str, ylabel: str, series: dict):
    """Grouped bars: for each series (label -> value of a run), mean +- std per group."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(series), 1)
    drawn = False
    for j, (label, get) in enumerate(series.items()):
        means, stds = [], []
        for g in groups:
            vals = [v for v in (get(r) for r in g.runs) if v is not None]
            means.append(np.mean(vals) if vals else np.nan)
            stds.append(np.std(vals) if len(vals) > 1 else 0.0)
        if not np.all(np.isnan(means)):
            drawn = True
        ax.bar(np.arange(len(groups)) + j * width, means, width, yerr=stds, label=label, capsize=3)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels([g.label for g in groups], rotation=20, ha="right", fontsize=7)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return title, name


def _staleness(groups, out: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(groups), 1)
    drawn = False
    for i, g in enumerate(groups):
        hists = [np.asarray(r.summary.get("staleness", {}).get("hist") or [], dtype=float) for r in g.runs]
        hists = [h for h in hists if h.sum() > 0]
        if not hists:
            continue
        size = max(len(h) for h in hists)
        total = sum(np.pad(h, (0, size - len(h))) for h in hists)
        ax.bar(np.arange(size) + i * width, total / total.sum(), width, label=g.label)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(title="Staleness of trained samples", xlabel="learner version − generating version",
           ylabel="share of trained groups")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "staleness.png"), dpi=110)
    plt.close(fig)
    return "Staleness of trained samples", "staleness.png"


def _by_staleness(groups, out: str, name: str = "mismatch_by_staleness.png"):
    """One panel per MISMATCH_PANELS metric some run has: per group, the mean over seeds of each run's
    token-weighted mean (runs.by_staleness) at every staleness k."""
    panels = []
    for metric, title, ylabel in MISMATCH_PANELS:
        lines = []
        for i, g in enumerate(groups):
            per_run = [v for v in (by_staleness(r, metric) for r in g.runs) if v]
            ks = sorted({k for v in per_run for k in v})
            if ks:
                means = [float(np.mean([v[k] for v in per_run if k in v])) for k in ks]
                counts = [sum(k in v for v in per_run) for k in ks]
                lines.append((i, g, ks, means, counts))
        if lines:
            panels.append((title, ylabel, lines))
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, ylabel, lines) in zip(axes.flat, panels):
        for i, g, ks, means, counts in lines:
            ax.plot(ks, means, marker="o", color=f"C{i % 10}", linewidth=1.8,
                    label=f"{g.label} (n={max(counts)})")
        ax.set(title=title, xlabel="staleness k (versions)", ylabel=ylabel)
        ax.title.set_fontsize(9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    # Group labels are long (every key the groups differ in): one legend below the panels, not over one.
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=7, ncol=1, frameon=False)
    title = "Trainer-inference mismatch by staleness"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03 + 0.022 * len(labels), 1, 1))
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return title, name


def draw_all(groups, out: str) -> list[tuple[str, str]]:

    def evals(by: int):
        def get(r):
            pts = r.eval_points()
            return (np.array([p[by] for p in pts], float), np.array([p[2] for p in pts], float)) if pts else None
        return get

    figures = [
        _curves(groups, out, "accuracy_vs_steps.png", "Held-out accuracy", "accuracy (avg@k)", evals(0)),
        _curves(groups, out, "accuracy_vs_wall.png", "Held-out accuracy against wall time", "accuracy (avg@k)",
                evals(1), xlabel="seconds since launch"),
        _curves(groups, out, "reward.png", "Training reward", "mean reward", lambda r: r.series("reward/mean")),
        _curves(groups, out, "entropy.png", "Policy entropy (before each step)", "nats / token",
                lambda r: r.series("learner/entropy")),
        # learner/mismatch_kl and _abs_mean; runs made before the rename are read under the old names.
        _curves(groups, out, "kl_behaviour.png", "KL(μ‖π) between behaviour and current policy", "nats / token",
                lambda r: r.series("learner/mismatch_kl")),
        _curves(groups, out, "logprob_gap.png", "|log π − log μ| per token", "nats",
                lambda r: r.series("learner/mismatch_abs_mean")),
        _staleness(groups, out),
        _by_staleness(groups, out),
        _bars(groups, out, "time_split.png", "Who waited", "share of wall time",
              {"learner waiting for batches": wait_fraction, "actors idle": actor_idle_fraction}),
        _bars(groups, out, "throughput.png", "Throughput", "tokens / s",
              {"learner": lambda r: r.summary.get("learner", {}).get("tokens_per_s"),
               "actors (all)": lambda r: r.summary.get("actors", {}).get("tokens_per_s")}),
    ]
    return [f for f in figures if f is not None]
