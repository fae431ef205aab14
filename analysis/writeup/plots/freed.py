"""Figures (h)–(i): what the freed heads do — each metric at the baseline's previous-token places in both
arms, and how much the loss rises when each head is ablated."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis import stats
from analysis.writeup.plots.style import (ABSENT_COLOR, ARM_COLORS, ARM_LABELS, METRIC_LABELS, PROFILE_METRICS, arms_in,
                                  bar_offset, figure, grid_size, head_grid, layout, need, no_runs, outline_handle, preset_text)
from analysis.stats import DEFAULT_THRESHOLD
from trainer.errors import AnalysisError

MAX_BAR_HEADS = 24  # past this many heads the ablation bars get too thin: draw layer × head grids instead
SHADE = "#fff0b3"  # behind the baseline's previous-token places


def _freed_places(heads: pd.DataFrame, threshold: float) -> tuple[list[tuple[int, int, int]], str]:
    """Baseline previous-token places (layer, head, seeds where ≥ t), or the best two when none reach t."""
    base = heads[heads["arm"] == "baseline"]
    if base.empty:
        raise AnalysisError("no baseline runs: the freed heads are the baseline's previous-token heads")
    pos = stats.baseline_prev_positions(heads, threshold)
    if len(pos):
        counts = pos.groupby(["layer", "head"]).size()
        return [(int(l), int(h), int(n)) for (l, h), n in counts.items()], ""
    best = stats.head_scores(base).groupby(["layer", "head"])["score"].mean().nlargest(2)
    note = f" — no baseline head reaches {threshold:g}: showing its best {len(best)} instead"
    return [(int(l), int(h), 0) for (l, h) in best.index], note


def _arm_bars(ax, a: pd.DataFrame, places: list[tuple[int, int]], x: np.ndarray, i: int, arm: str,
              means: list[float], dot_size: float, n_arms: int) -> None:
    """Arm `i`'s bars (seed means) beside the other arms', one dot per seed on each bar."""
    off, width = bar_offset(i, n_arms)
    ax.bar(x + off, means, width=width, color=ARM_COLORS[arm], alpha=0.85)
    for j, (l, h) in enumerate(places):
        v = a.loc[(a["layer"] == l) & (a["head"] == h), "value"].to_numpy()
        ax.scatter(np.full(len(v), x[j] + off), v, s=dot_size, color="black", zorder=3, lw=0)


def _seed_handles() -> list[Line2D]:
    return [Line2D([], [], marker="o", ls="", color="black", ms=3, label="one seed")]


def freed_head_profiles(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """At the baseline's previous-token places: each metric in both arms (bars: seed mean, dots: seeds)."""
    need(heads, "heads table")
    places, note = _freed_places(heads, threshold)
    metrics = [m for m in PROFILE_METRICS if (heads["metric"] == m).any()]
    final = stats.final_rows(heads[heads["metric"].isin(metrics)])
    n_base = heads.loc[heads["arm"] == "baseline", "seed"].nunique()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = figure(max(3.2, 0.9 * len(places) + 1.6) * cols, 3.0 * rows + 1.0)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    x = np.arange(len(places))
    spots = [(l, h) for l, h, _ in places]
    keys = set(spots)
    arms = arms_in(final)
    for ax, metric in zip(axes, metrics):
        m = final[final["metric"] == metric]
        for i, arm in enumerate(arms):
            a = m[m["arm"] == arm]
            if a.empty:
                continue
            means = [a.loc[(a["layer"] == l) & (a["head"] == h), "value"].mean() for l, h in spots]
            _arm_bars(ax, a, spots, x, i, arm, means, 10, len(arms))
            rest = a[[(int(l), int(h)) not in keys for l, h in zip(a["layer"], a["head"])]]
            if len(rest):
                ax.axhline(rest["value"].mean(), color=ARM_COLORS[arm], ls=":", lw=1.5)
        name, unit = METRIC_LABELS.get(metric, (metric, ""))
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_xticks(x, [f"L{l}H{h}\n{n}/{n_base} seeds" if n else f"L{l}H{h}" for l, h, n in places], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles = [Patch(color=ARM_COLORS[a], label=ARM_LABELS[a]) for a in arms] + _seed_handles()
    handles += [Line2D([], [], ls=":", color="#555", label="mean of all other heads (arm colour)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    fig.suptitle(f"What the baseline's previous-token heads (score ≥ {threshold:g}) do in each arm, final step"
                 f"{note}\nx: layer/head, and in how many baseline seeds it is a previous-token head", fontsize=10)
    return fig


def ablation_by_head(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """Per-head loss increase when the head is ablated, both arms; baseline previous-token places marked."""
    need(heads, "heads table")
    metrics = [m for m in ("ablation_mean", "ablation_zero") if (heads["metric"] == m).any()]
    if not metrics:
        raise AnalysisError("no ablation rows (ablation_mean / ablation_zero) in the heads table")
    final = stats.final_rows(heads[heads["metric"].isin(metrics)])
    places = sorted({(int(l), int(h)) for l, h in zip(final["layer"], final["head"])})
    prev = set()
    if (heads["arm"] == "baseline").any():
        pos = stats.baseline_prev_positions(heads, threshold)
        prev = set(zip(pos["layer"].astype(int), pos["head"].astype(int)))
    if len(places) > MAX_BAR_HEADS:
        return _ablation_grids(final, metrics, prev, threshold)
    x = np.arange(len(places))
    arms = arms_in(final)
    fig = figure(max(6.0, 0.5 * len(places) + 2), 2.8 * len(metrics) + 1.0)
    axes = np.atleast_1d(fig.subplots(len(metrics), 1, sharex=True, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics):
        m = final[final["metric"] == metric]
        for j, p in enumerate(places):
            if p in prev:
                ax.axvspan(j - 0.5, j + 0.5, color=SHADE, zorder=0)
        for i, arm in enumerate(arms):
            a = m[m["arm"] == arm]
            if a.empty:
                continue
            means = a.groupby(["layer", "head"])["value"].mean()
            _arm_bars(ax, a, places, x, i, arm, [means.get(p, np.nan) for p in places], 9, len(arms))
        ax.axhline(0, color="#555", lw=0.8)
        name, unit = METRIC_LABELS[metric]
        ax.set_ylabel(f"{name}\n({unit})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [f"L{l}H{h}" for l, h in places], rotation=90 if len(places) > 16 else 0, fontsize=8)
    axes[-1].set_xlabel("layer / head")
    handles = [Patch(color=ARM_COLORS[a], label=f"{ARM_LABELS[a]} (bar: seed mean)") for a in arms] + _seed_handles()
    handles += [Patch(color=SHADE, label=f"previous-token head in a baseline seed (≥ {threshold:g})")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(f"Loss increase when one head is ablated, final step — preset {preset_text(final)}", fontsize=11)
    return fig


def _ablation_grids(final: pd.DataFrame, metrics: list[str], prev: set[tuple[int, int]], threshold: float) -> Figure:
    """Many heads: one layer × head grid per arm and ablation kind, one colour scale per kind."""
    n_l, n_h = layout(final)
    present = set(final["layer"].astype(int))
    arms = arms_in(final)
    fig = figure(*grid_size(n_l, n_h, len(arms), len(metrics)))
    axes = fig.subplots(len(metrics), len(arms), squeeze=False)
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad=ABSENT_COLOR)  # red outlines stay visible on blue
    for row, metric in zip(axes, metrics):
        m = final[final["metric"] == metric]
        means = {arm: m[m["arm"] == arm].groupby(["layer", "head"])["value"].mean() for arm in arms}
        top = max([float(v.max()) for v in means.values() if len(v)] + [1e-9])
        norm = Normalize(min(0.0, min(float(v.min()) for v in means.values() if len(v))), top)
        name, unit = METRIC_LABELS[metric]
        for ax, arm in zip(row, arms):
            if means[arm].empty:
                head_grid(ax, pd.Series(dtype=float), n_l, n_h, set(), cmap, norm, "")
                no_runs(ax, arm)
                continue
            head_grid(ax, means[arm], n_l, n_h, present, cmap, norm, "{:.3f}", prev)
            ax.set_title(f"{ARM_LABELS[arm]}: {name}", fontsize=10)
            ax.set_ylabel("layer")
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(row), label=f"{name}\n({unit})", shrink=0.9)
    fig.legend(handles=[outline_handle(f"previous-token head in a baseline seed (≥ {threshold:g})")],
               loc="outside lower center", fontsize=8, frameon=False)
    fig.suptitle(f"Loss increase when one head is ablated (seed mean), final step — preset {preset_text(final)}",
                 fontsize=11)
    return fig
