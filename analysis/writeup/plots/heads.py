"""Figures (a)–(c): where the previous-token heads are, how many at any threshold, and when they form."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis import stats
from analysis.writeup.plots.style import (ABSENT_COLOR, ABSENT_EDGE, ARM_COLORS, ARM_LABELS, SCORE_CMAP, arms_in, figure,
                                  grid_size, head_grid, layout, need, no_runs, outline_handle, preset_text, seed_text, token_axis)
from analysis.stats import DEFAULT_THRESHOLD, THRESHOLDS


def _band(ax, df: pd.DataFrame, y: str, arm: str, x: str = "tokens", label_extra: str = "") -> None:
    """Mean over seeds as a line, min–max over seeds as a band."""
    g = df[df["arm"] == arm]
    if g.empty:
        return
    agg = g.groupby("step").agg(x=(x, "mean"), mean=(y, "mean"), lo=(y, "min"), hi=(y, "max")).sort_values("x")
    n = g["seed"].nunique()
    ax.plot(agg["x"], agg["mean"], color=ARM_COLORS[arm], marker="o" if len(agg) <= 20 else None, ms=4, lw=2,
            label=f"{ARM_LABELS[arm]} — mean of {seed_text(n)}{label_extra}")
    if n > 1:
        ax.fill_between(agg["x"], agg["lo"], agg["hi"], color=ARM_COLORS[arm], alpha=0.2, lw=0)


def _band_legend(ax, n_arms_with_seeds: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if n_arms_with_seeds:
        handles.append(Patch(color="grey", alpha=0.25))
        labels.append("band: min–max over seeds")
    ax.legend(handles, labels, fontsize=8, loc="best")


def _n_attention_heads(heads: pd.DataFrame) -> int:
    """Heads with attention in the largest run: the most previous-token heads a run can have."""
    return int(stats.head_scores(heads).groupby("run").size().max())


def prev_token_heatmaps(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
                        n_layers: int | None = None) -> Figure:
    """Layer × head previous-token score at the final step, seed-averaged, both arms on one 0–1 scale."""
    scores = need(stats.head_scores(heads), "prev_token rows in the heads table")
    n_l, n_h = layout(scores, n_layers)
    present = set(scores["layer"].astype(int))
    arms = arms_in(scores)
    fig = figure(*grid_size(n_l, n_h, len(arms)))
    axes = fig.subplots(1, len(arms), sharey=True)
    norm = Normalize(0, 1)
    for ax, arm in zip(axes, arms):
        g = scores[scores["arm"] == arm]
        if g.empty:
            head_grid(ax, pd.Series(dtype=float), n_l, n_h, set(), SCORE_CMAP, norm, "")
            no_runs(ax, arm)
            continue
        mean = g.groupby(["layer", "head"])["score"].mean()
        head_grid(ax, mean, n_l, n_h, present, SCORE_CMAP, norm, "{:.2f}",
                  {(int(l), int(h)) for (l, h), v in mean.items() if v >= threshold})
        per_seed = g.groupby("seed")["score"].apply(lambda s: int((s >= threshold).sum())).mean()
        ax.set_title(f"{ARM_LABELS[arm]}\nmean of {seed_text(g['seed'].nunique())}; "
                     f"{per_seed:.1f} head(s) ≥ {threshold:g} per seed", fontsize=10)
    axes[0].set_ylabel("layer")
    fig.colorbar(ScalarMappable(norm=norm, cmap=SCORE_CMAP), ax=list(axes),
                 label="previous-token score\n(mean attention on token i−1)", shrink=0.9)
    fig.legend(handles=[outline_handle(f"previous-token head (seed-mean score ≥ {threshold:g})"),
                        Patch(facecolor=ABSENT_COLOR, hatch="///", edgecolor=ABSENT_EDGE, label="layer without attention")],
               loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    step = int(stats.final_rows(scores)["step"].max())
    fig.suptitle(f"Previous-token score per head, final step ({step}) — preset {preset_text(scores)}", fontsize=11)
    return fig


def prev_heads_vs_threshold(heads: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS,
                            threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """Number of previous-token heads per run against the threshold, mean and min–max over seeds."""
    sweep = need(stats.threshold_sweep(heads, thresholds), "prev_token rows in the heads table")
    n_total = _n_attention_heads(heads)
    fig = figure(6.4, 4.0)
    ax = fig.subplots()
    arms = arms_in(sweep)
    for i, arm in enumerate(arms):
        g = sweep[sweep["arm"] == arm]
        if g.empty:
            continue
        agg = g.groupby("threshold")["n_prev_heads"].agg(["mean", "min", "max"])
        x = agg.index.to_numpy() + (i - (len(arms) - 1) / 2) * 0.006  # a hair apart so equal counts stay visible
        ax.plot(x, agg["mean"], marker="o", ms=4, lw=2, color=ARM_COLORS[arm],
                label=f"{ARM_LABELS[arm]} — mean of {seed_text(g['seed'].nunique())}")
        if g["seed"].nunique() > 1:
            ax.fill_between(x, agg["min"], agg["max"], color=ARM_COLORS[arm], alpha=0.2, lw=0)
    ax.axvline(threshold, color="#555", ls="--", lw=1)
    ax.text(threshold, 1.0, f" default {threshold:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
            color="#555")
    ax.set_xlabel("threshold on the previous-token score")
    ax.set_ylabel(f"previous-token heads per run\n(of {n_total} attention heads)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=-0.1)
    ax.grid(alpha=0.3)
    _band_legend(ax, sweep.groupby("arm")["seed"].nunique().max() > 1)
    ax.set_title(f"Previous-token heads by threshold, final step — preset {preset_text(sweep)}", fontsize=11)
    return fig


def prev_mass_over_training(heads: pd.DataFrame, record_heads: pd.DataFrame | None = None,
                            window_growth: Sequence[int] = ()) -> Figure:
    """Total previous-token mass over training per arm (band over seeds): checkpoints, and recorded steps
    if any; dotted verticals at `window_growth` (tokens), where the attention windows grow."""
    need(heads[heads["metric"] == "prev_token"] if heads is not None else None, "prev_token rows in the heads table")
    sources = [("at checkpoints (analysis)", heads)]
    if record_heads is not None and len(record_heads):
        sources.append(("during training (recorded)", record_heads))
    fig = figure(5.2 * len(sources) + 0.6, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(sources), sharey=True))
    n_total = _n_attention_heads(heads)
    for ax, (title, df) in zip(axes, sources):
        mass = stats.prev_mass_over_steps(df)
        for arm in arms_in(mass):
            _band(ax, mass, "prev_mass", arm)
        lo, hi = mass["tokens"].min(), mass["tokens"].max()
        for i, x in enumerate(t for t in window_growth if lo < t < hi):
            ax.axvline(x, color="0.45", ls=":", lw=1, label="attention windows grow" if i == 0 else None)
        token_axis(ax, mass["tokens"])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        _band_legend(ax, mass.groupby("arm")["seed"].nunique().max() > 1)
    axes[0].set_ylabel(f"total previous-token mass\n(sum of scores over {n_total} heads)")
    fig.suptitle(f"Previous-token mass over training — preset {preset_text(heads)}", fontsize=11)
    return fig
