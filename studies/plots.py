"""The report's figures (matplotlib, written as PNG): one colour per group, thin lines per seed, a bold mean.

`draw_all(groups, out)` returns [(title, file name)] of the figures it wrote; a figure whose data no run has
(no evaluation, no staleness histogram, no metric of that name) is left out rather than drawn empty.
"""

from __future__ import annotations

import os

import numpy as np

from asyncor.studies.runs import actor_idle_fraction, wait_fraction


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
        _curves(groups, out, "kl_behaviour.png", "KL(μ‖π) between behaviour and current policy", "nats / token",
                lambda r: r.series("learner/kl_behaviour")),
        _curves(groups, out, "logprob_gap.png", "|log π − log μ| per token", "nats",
                lambda r: r.series("learner/behaviour_logprob_abs_diff")),
        _staleness(groups, out),
        _bars(groups, out, "time_split.png", "Who waited", "share of wall time",
              {"learner waiting for batches": wait_fraction, "actors idle": actor_idle_fraction}),
        _bars(groups, out, "throughput.png", "Throughput", "tokens / s",
              {"learner": lambda r: r.summary.get("learner", {}).get("tokens_per_s"),
               "actors (all)": lambda r: r.summary.get("actors", {}).get("tokens_per_s")}),
    ]
    return [f for f in figures if f is not None]
