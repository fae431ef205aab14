"""Figure (o): the dose-response — each measure against the fixed dose c (log axis) and against the
measured share of token i−1's effect that goes through the smear term."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.stats import dose_response as dr
from analysis.writeup.plots.style import ARM_COLORS, ARM_LABELS, figure
from analysis.stats import t_ci

DOSE_COLOR = "#2ca02c"
FIT_COLOR = "#333333"
OPTIMUM_COLOR = "#d62728"
SEED_MARKERS = "osD^v<>p*h"


def _curve(ax, result: dr.DoseResponse, measure: str, x: str, to_axis=lambda v: v) -> None:
    """The fitted mean (quadratic for val_loss, linear otherwise) and its pointwise 95% CI band."""
    cv = result.curves
    model = "quadratic" if measure == "val_loss" else "linear"
    c = cv[(cv["measure"] == measure) & (cv["x"] == x) & (cv["model"] == model)]
    if not len(c):
        return
    at = to_axis(c["at"].to_numpy())
    ax.fill_between(at, c["lo"], c["hi"], color=FIT_COLOR, alpha=0.15, lw=0)
    ax.plot(at, c["fit"], color=FIT_COLOR, lw=1.3)


def _points(ax, runs: pd.DataFrame, x: str, measure: str, color: str, seeds: list[str]) -> None:
    """One marker per seed (its shape: the seed, while there are few) and the seed mean (large, with its t CI)."""
    for seed, g in runs.groupby(dr.units(runs)):
        marker = SEED_MARKERS[seeds.index(seed) % len(SEED_MARKERS)] if len(seeds) <= len(SEED_MARKERS) else "o"
        ax.scatter(g[x], g[measure], s=12, marker=marker, color=color, alpha=0.55, lw=0, zorder=3)
    for _, g in runs.groupby("arm"):
        v = g[measure].dropna().to_numpy(float)
        if not len(v):
            continue
        lo, hi = t_ci(v)
        xm = float(g[x].mean())
        yerr = [[v.mean() - lo], [hi - v.mean()]] if math.isfinite(lo) else None
        ax.errorbar([xm], [v.mean()], yerr=yerr, fmt="o", ms=5, color=color, mec="black", mew=0.6, capsize=2,
                    zorder=4)


def _baseline_band(ax, base: pd.DataFrame, measure: str) -> None:
    v = base[measure].dropna().to_numpy(float)
    if not len(v):
        return
    lo, hi = t_ci(v)
    if math.isfinite(lo):
        ax.axhspan(lo, hi, color=ARM_COLORS["baseline"], alpha=0.15, lw=0)
    ax.axhline(v.mean(), color=ARM_COLORS["baseline"], lw=1.2, ls="--")


def dose_response(result: dr.DoseResponse) -> Figure:
    """Rows: the measures; left: against the fixed dose c (log axis; baseline as a band, each learned arm
    at its mean coefficient on data); right: against the measured smear share (baseline at 0). Small
    markers: seeds (shape = seed), large: arm means with t 95% CI; line and band: the per-seed
    random-intercept fit and its pointwise 95% CI; red: the dose of lowest loss (fitted c* with its CI,
    and the dose of lowest mean paired loss)."""
    t = result.table
    seeds = dr.sorted_units(dr.units(t))
    base, doses, learned = (t[t["kind"] == k] for k in ("baseline", "dose", "learned"))
    learned_arms = sorted(learned["arm"].unique())
    measures = list(dr.MEASURES)
    fig = figure(10.0, 2.35 * len(measures) + 0.9)
    axes = fig.subplots(len(measures), 2, squeeze=False)
    opt = result.optimum
    for row, measure in enumerate(measures):
        label = dr.measure_label(measure, result.threshold)
        ax, bx = axes[row]
        # against c
        _baseline_band(ax, base, measure)
        _curve(ax, result, measure, "log_c", np.exp)
        _points(ax, doses, "c", measure, DOSE_COLOR, seeds)
        for arm in learned_arms:
            _points(ax, learned[learned["arm"] == arm], "coef_mean", measure, ARM_COLORS[arm], seeds)
        ax.set_xscale("log")
        ax.set_ylabel(label, fontsize=8)
        # against the measured share
        if measure == "share":
            bx.text(0.5, 0.5, "(the share is this column's x axis)", ha="center", va="center",
                    transform=bx.transAxes, color="#666", fontsize=8)
            bx.axis("off")
        else:
            _curve(bx, result, measure, "share")
            _points(bx, base, "share", measure, ARM_COLORS["baseline"], seeds)
            _points(bx, doses, "share", measure, DOSE_COLOR, seeds)
            for arm in learned_arms:
                _points(bx, learned[learned["arm"] == arm], "share", measure, ARM_COLORS[arm], seeds)
        for a in (ax, bx):
            a.grid(alpha=0.3)
            a.tick_params(labelsize=8)
        if measure == "val_loss":
            if math.isfinite(opt["c_star"]):
                ax.axvspan(opt["c_lo"], opt["c_hi"], color=OPTIMUM_COLOR, alpha=0.12, lw=0)
                ax.axvline(opt["c_star"], color=OPTIMUM_COLOR, lw=1.2)
            if opt["best_arm"]:
                best = doses[doses["arm"] == opt["best_arm"]]
                for a, x in ((ax, float(best["c"].mean())), (bx, float(best["share"].mean()))):
                    a.scatter([x], [best["val_loss"].mean()], marker="*", s=120, color=OPTIMUM_COLOR, zorder=5,
                              ec="black", lw=0.5)
    axes[-1, 0].set_xlabel("fixed dose c (log scale; learned arms at their mean coefficient on data)", fontsize=8)
    axes[-1, 1].set_xlabel("measured share of token i−1's effect through the smear term", fontsize=8)
    axes[0, 0].set_title("against the dose", fontsize=10)
    axes[0, 1].set_title("against the measured share", fontsize=10)
    opt_text = (f"fitted lowest-loss dose c* = {opt['c_star']:.2g} [{opt['c_lo']:.2g}, {opt['c_hi']:.2g}]"
                if math.isfinite(opt["c_star"]) else "no fitted lowest-loss dose")
    handles = [Patch(color=ARM_COLORS["baseline"], alpha=0.3, label=f"{ARM_LABELS['baseline']}: mean, 95% CI"),
               Line2D([], [], marker="o", ls="", color=DOSE_COLOR, mec="black", label="fixed doses (arm mean, CI)")]
    handles += [Line2D([], [], marker="o", ls="", color=ARM_COLORS[a], mec="black", label=ARM_LABELS[a])
                for a in learned_arms]
    handles += [Line2D([], [], color=FIT_COLOR, label="fit, seed random intercept (95% CI band)"),
                Line2D([], [], color=OPTIMUM_COLOR, label=opt_text),
                Line2D([], [], marker="*", ls="", color=OPTIMUM_COLOR, mec="black", ms=10,
                       label="dose of lowest mean paired loss")]
    handles += [Line2D([], [], marker=SEED_MARKERS[i % len(SEED_MARKERS)], ls="", color="#777", ms=4,
                       label=f"seed {s}") for i, s in enumerate(seeds) if len(seeds) <= len(SEED_MARKERS)]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    fig.suptitle(f"Dose-response: {t['arm'].nunique()} arms × {len(seeds)} seeds", fontsize=11)
    return fig


__all__ = ["dose_response"]
