"""Figures for why the learned gate stays low: λ and the coefficient of every arm over training, and the
pressure on λ over the first steps with the positions that make it (analysis/stats/gate_arms.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis import stats
from analysis.stats.gate_arms import EARLY_STEPS, early_pressure, fixed_dose
from analysis.measures.lambda_grad import DOC_PARTS, GATE_PARTS, SIGN_PARTS
from analysis.writeup.plots.style import ARM_COLORS, arm_label, bar_offset, figure, need, preset_text, seed_text, token_axis

SMOOTH = 10  # steps in the running mean of the per-step pressure (one batch's gradient is noisy)
PART_LABELS = {
    ("doc", "bos"): "token i is a BOS (i−1 ends the previous document)",
    ("doc", "1"): "i−1 is the BOS",
    ("doc", "2-3"): "i at 2–3 in its document",
    ("doc", "4-15"): "i at 4–15",
    ("doc", "16-63"): "i at 16–63",
    ("doc", "64+"): "i at 64 or later",
    ("doc", "no_bos"): "row starts mid-document",
    **{("gate", p): f"gate {p}" for p in GATE_PARTS},
    ("sign", "pos"): "positions with s_i > 0 (push λ down)",
    ("sign", "neg"): "positions with s_i < 0 (push λ up)",
}


def _band(ax, df: pd.DataFrame, y: str, arm: str, x: str = "tokens", **kw) -> None:
    """The arm's mean over seeds as a line and its min–max over seeds as a band."""
    agg = df.groupby("step").agg(x=(x, "mean"), mean=(y, "mean"), lo=(y, "min"), hi=(y, "max")).sort_values("x")
    n = df["seed"].nunique()
    ax.plot(agg["x"], agg["mean"], color=ARM_COLORS[arm], lw=2, marker="o" if len(agg) <= 20 else None, ms=3,
            label=f"{arm_label(arm)} ({seed_text(n)})", **kw)
    if n > 1:
        ax.fill_between(agg["x"], agg["lo"], agg["hi"], color=ARM_COLORS[arm], alpha=0.18, lw=0)


def coefficient_over_training(smear: pd.DataFrame | None, record_smear: pd.DataFrame | None = None) -> Figure:
    """λ and the mean coefficient on data over training for every arm with a coefficient: the training record
    where there is one (the checkpoints as dots), else the checkpoints; mean over seeds, band min–max; fixed
    doses as horizontal lines."""
    recorded = record_smear is not None and len(record_smear) > 0
    src = need(record_smear if recorded else smear, "smear table (λ and the coefficient of an arm with a smear)")
    src = src[np.isfinite(src["lambda"].astype(float))]
    arms = [a for a in stats.arm_order(src["arm"]) if a != stats.BASELINE]
    doses = {a: fixed_dose(a) for a in arms if fixed_dose(a) is not None}
    moving = need(src[~src["arm"].isin(list(doses))], "arm with a changing coefficient in the smear table")
    fig = figure(12, 4.4)
    ax_l, ax_c = fig.subplots(1, 2, sharex=True)
    for arm in [a for a in arms if a not in doses]:
        g = src[src["arm"] == arm]
        _band(ax_l, g, "lambda", arm)
        _band(ax_c, g, "coef_mean", arm)
        if recorded and smear is not None and len(smear):
            ck = smear[smear["arm"] == arm]
            for ax, col in ((ax_l, "lambda"), (ax_c, "coef_mean")):
                ax.scatter(ck["tokens"], ck[col], s=10, color=ARM_COLORS[arm], edgecolor="black", lw=0.4, zorder=3)
    for arm, c in doses.items():
        g = stats.final_rows(src[src["arm"] == arm])
        style = dict(color=ARM_COLORS[arm], ls="--", lw=1.4)
        ax_l.axhline(c, label=f"{arm_label(arm)} (fixed)", **style)
        ax_c.axhline(float(g["coef_mean"].mean()), label=f"{arm_label(arm)} (fixed; 0 at a BOS)", **style)
    for ax in (ax_l, ax_c):
        token_axis(ax, moving["tokens"])
        ax.axhline(0, color="#777", lw=0.8)
        ax.grid(alpha=0.3)
    ax_l.set_ylabel("λ (the learned scale; a dose's c)")
    ax_l.set_title("λ", fontsize=10)
    ax_c.set_ylabel("mean coefficient λ·gate on data")
    ax_c.set_title("mean coefficient on data", fontsize=10)
    ax_l.legend(fontsize=7, loc="best")
    source = "recorded during training; dots: checkpoints" if recorded else "at checkpoints"
    fig.suptitle(f"λ and the smear coefficient over training, every arm with one ({source}; line: mean over "
                 f"seeds, band: min–max) — preset {preset_text(src)}", fontsize=10)
    return fig


def _part_bars(ax, early: pd.DataFrame, parts: list[tuple[str, str]], arms: list[str]) -> None:
    """Horizontal bars per part (rows) and arm (offset within a row): mean over seeds, dots: the seeds' min
    and max."""
    y = np.arange(len(parts))
    for i, arm in enumerate(arms):
        g = early[early["arm"] == arm].set_index(["by", "part"])
        vals = np.array([g["value"].get(p, np.nan) for p in parts], float)
        off, w = bar_offset(i, len(arms))
        ax.barh(y + off, vals, height=w, color=ARM_COLORS[arm], alpha=0.85, label=arm_label(arm))
        for lim in ("lo", "hi"):
            ax.scatter([g[lim].get(p, np.nan) for p in parts], y + off, s=6, color="black", zorder=3)
    ax.set_yticks(y, [PART_LABELS.get(p, f"{p[0]} {p[1]}") for p in parts], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#555", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("dL/dλ from these positions (> 0 pushes λ down)")


def lambda_gradient(record_lambda: pd.DataFrame | None, steps: int = EARLY_STEPS) -> Figure:
    """Over the first `steps` steps, per arm: the pressure on λ (dL/dλ, running mean, band min–max over
    seeds), λ itself, and the mean pressure split by where token i sits in its document, by gate value and
    by sign."""
    df = need(record_lambda, "record_lambda table (λ and dL/dλ every step: train with recording on)")
    total = df[(df["by"] == "total") & (df["step"] < steps) & np.isfinite(df["pressure"].astype(float))]
    total = need(total, f"finite dL/dλ in the first {steps} steps of record_lambda")
    arms = [a for a in stats.arm_order(total["arm"]) if a != stats.BASELINE]
    early = early_pressure(df, steps)
    fig = figure(13, 8.5)
    (ax_p, ax_l), (ax_d, ax_g) = fig.subplots(2, 2)
    for arm in arms:
        g = total[total["arm"] == arm].sort_values("step")
        smooth = g.assign(pressure=g.groupby("seed")["pressure"].transform(
            lambda s: s.rolling(SMOOTH, min_periods=1).mean()))
        _band(ax_p, smooth, "pressure", arm, x="step")
        _band(ax_l, g, "lambda", arm, x="step")
    ax_p.axhline(0, color="#555", lw=0.8)
    ax_p.set_ylabel(f"dL/dλ, running mean of {SMOOTH} steps\n(> 0: descent lowers λ)")
    ax_p.set_title("the pressure on λ (every learned-λ arm; a dose: on its c)", fontsize=10)
    ax_l.set_ylabel("λ")
    ax_l.set_title("λ over the same steps", fontsize=10)
    for ax in (ax_p, ax_l):
        ax.set_xlabel("optimiser steps taken")
        ax.grid(alpha=0.3)
    ax_l.legend(fontsize=7, loc="best")
    if len(early):
        bar_arms = [a for a in arms if (early["arm"] == a).any()]
        _part_bars(ax_d, early, [("doc", p) for p in DOC_PARTS], bar_arms)
        _part_bars(ax_g, early, [("gate", p) for p in GATE_PARTS] + [("sign", p) for p in SIGN_PARTS], bar_arms)
        n = int(early["steps"].max())
        ax_d.set_title(f"first {n} steps: by where token i sits in its document", fontsize=10)
        ax_g.set_title(f"first {n} steps: by the gate value at i, and by sign", fontsize=10)
        ax_d.legend(fontsize=7, loc="best")
    else:
        for ax in (ax_d, ax_g):
            ax.text(0.5, 0.5, "no split of dL/dλ recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"What drives λ early in training (record_lambda; bands and dots: min–max over seeds) — preset "
                 f"{preset_text(total)}", fontsize=11)
    return fig


__all__ = ["coefficient_over_training", "lambda_gradient", "PART_LABELS"]
