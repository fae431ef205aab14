"""Figures for the speedrun study's questions (analysis/stats/speedrun.py): the 2 × 2 of layer 0's attention and
the smear, the previous-token mass per layer, and the early-smear arms' coefficient over training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.stats import speedrun as sp
from analysis.stats.inference import t_ci
from analysis.tables import RECORD_ARM, arm_order
from analysis.writeup.plots.style import ARM_COLORS, arm_label, figure, need, seed_text
from trainer.arms import NOATTN0_SUFFIX
from trainer.errors import AnalysisError

SMOOTH = 25  # steps in the running mean of dL/dλ (one batch's gradient is noisy)


def _base_color(arm: str) -> str:
    """A -noattn0 arm in its base arm's colour (drawn dashed), so each pair reads as one."""
    return ARM_COLORS[arm.removesuffix(NOATTN0_SUFFIX)]


def _mean_ci(v: np.ndarray) -> tuple[float, float, float]:
    lo, hi = t_ci(v)
    return float(np.mean(v)), lo, hi


def _errorbar(ax, x: float, v: np.ndarray, color: str, **kw) -> None:
    m, lo, hi = _mean_ci(v)
    err = [[m - lo], [hi - m]] if math.isfinite(lo) else None
    ax.errorbar([x], [m], yerr=err, fmt="o", ms=8, capsize=5, color=color, zorder=4, **kw)


def attn0_grid(per_seed: pd.DataFrame) -> Figure:
    """One panel per arm run with and without layer 0's attention (baseline, smear, dose-0.8, …): each seed's
    final validation loss with and without it as a thin line, the means with their t 95% CIs; a last panel
    with the costs of the removal per seed side by side (P1 and P2 are their differences from the baseline's)."""
    need(per_seed, "per-seed table")
    if sp.LOSS not in per_seed or not per_seed[sp.LOSS].notna().any():
        raise AnalysisError("no validation loss per run (the runs' loss.csv): the 2 × 2 has nothing to show")
    costs = sp.claims_per_seed(per_seed)
    costs = costs[costs[sp.COST].notna()] if sp.COST in costs else costs.iloc[:0]
    bases = [a for a in arm_order(costs["arm"])]
    if not bases:
        raise AnalysisError(f"no arm with runs both with and without layer 0's attention (`<arm>{NOATTN0_SUFFIX}`) "
                            "for one seed")
    wide = per_seed.dropna(subset=[sp.LOSS]).drop_duplicates(["arm", "seed"]).pivot(index="seed", columns="arm",
                                                                                     values=sp.LOSS)
    fig = figure(3.1 * (len(bases) + 1) + 0.6, 4.6)
    axes = fig.subplots(1, len(bases) + 1)
    loss_axes = list(axes[:-1])
    for ax, base in zip(loss_axes, bases):
        pair = wide[[base, f"{base}{NOATTN0_SUFFIX}"]].dropna()
        color = _base_color(base)
        for _, (a, b) in pair.iterrows():
            ax.plot([0, 1], [a, b], color=color, alpha=0.35, lw=0.8)
        for x, col in enumerate(pair.columns):
            _errorbar(ax, x, pair[col].to_numpy(float), color, mfc=color if x == 0 else "white")
        ax.set_xticks([0, 1], ["with", "without"])
        ax.set_xlim(-0.4, 1.4)
        ax.set_xlabel("layer 0's attention")
        ax.set_title(f"{arm_label(base)} ({seed_text(len(pair))})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    loss_axes[0].set_ylabel("final validation loss (nats/token)")
    lows = [ax.get_ylim()[0] for ax in loss_axes]
    highs = [ax.get_ylim()[1] for ax in loss_axes]
    for ax in loss_axes:  # one scale, so the slopes compare across panels
        ax.set_ylim(min(lows), max(highs))
    ax = axes[-1]
    jitter = np.random.default_rng(0)
    for x, base in enumerate(bases):
        v = costs.loc[costs["arm"] == base, sp.COST].to_numpy(float)
        color = _base_color(base)
        ax.scatter(x + jitter.uniform(-0.12, 0.12, len(v)), v, s=12, color=color, alpha=0.5, zorder=3)
        _errorbar(ax, x, v, color)
    ax.axhline(0, color="#555", lw=0.8)
    if "baseline" in bases:
        base_cost = float(costs.loc[costs["arm"] == "baseline", sp.COST].mean())
        ax.axhline(base_cost, color=ARM_COLORS["baseline"], lw=1, ls="--", label="the baseline's mean cost")
        ax.legend(fontsize=7, loc="best")
    ax.set_xticks(range(len(bases)), [arm_label(b) for b in bases], rotation=20, ha="right")
    ax.set_ylabel("cost of the removal, nats (without − with)")
    ax.set_title("cost of removing layer 0's attention", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Layer 0's attention with and without a smear (thin lines: seeds; points: means with t 95% CIs; "
                 "P1, P2: the costs' differences from the baseline's)", fontsize=10)
    return fig


def prev_mass_layers(by_layer: pd.DataFrame) -> Figure:
    """Previous-token mass per layer, one line per arm (mean over seeds with its t 95% CI); a `-noattn0` arm
    dashed in its base arm's colour, with no point where its layer has no attention."""
    by_layer = need(by_layer, "previous-token mass per layer")
    fig = figure(8.5, 4.8)
    ax = fig.subplots()
    arms = arm_order(by_layer["arm"])
    offsets = np.linspace(-0.18, 0.18, len(arms)) if len(arms) > 1 else [0.0]
    for off, arm in zip(offsets, arms):
        g = by_layer[by_layer["arm"] == arm].sort_values("layer")
        color = _base_color(arm) if sp.is_noattn0(arm) else ARM_COLORS[arm]
        x = g["layer"].to_numpy(float) + off
        err = np.vstack([g["mass"] - g["ci_low"], g["ci_high"] - g["mass"]])
        err = None if not np.isfinite(err).all() else err
        ax.errorbar(x, g["mass"], yerr=err, color=color, ls="--" if sp.is_noattn0(arm) else "-", marker="o", ms=4,
                    capsize=3, lw=1.5, label=f"{arm_label(arm)} ({seed_text(int(g['n_seeds'].max()))})")
    layers = sorted(by_layer["layer"].unique())
    ax.set_xticks(layers)
    ax.set_xlabel("layer (a dashed line without a point there: no attention in that layer)")
    ax.set_ylabel("previous-token mass (sum of the layer's heads' scores)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncols=2)
    ax.set_title("Where the previous-token heads are, per arm (final step; mean with t 95% CI)", fontsize=10)
    return fig


def _running(g: pd.DataFrame, col: str, window: int) -> pd.DataFrame:
    return g.assign(**{col: g.groupby("seed")[col].transform(lambda s: s.rolling(window, min_periods=1).mean())})


def early_coefficient(curves: pd.DataFrame) -> Figure:
    """The early-smear arms' mean coefficient λ·gate over training (mean over seeds, band min–max) against the
    learned smear's and the fixed dose 0.8's; dotted: each early arm's release step. Right: dL/dλ (running
    mean), > 0 pushing λ down, where recorded."""
    curves = need(curves, "coefficient recorded during training (record_lambda or record_smear)")
    early = [a for a in arm_order(curves["arm"]) if sp.is_early_smear(a)]
    if not early:
        raise AnalysisError("no early-smear arm (smear-hold-<c>-<k> or dose-<c>-anneal-<k>) in the recorded "
                            "coefficients")
    shown = early + [a for a in (RECORD_ARM, sp.DOSE) if (curves["arm"] == a).any()]
    has_pressure = curves.loc[curves["arm"].isin(shown), "pressure"].notna().any()
    fig = figure(13 if has_pressure else 7.5, 4.6)
    axes = fig.subplots(1, 2 if has_pressure else 1)
    ax_c = axes[0] if has_pressure else axes
    for arm in shown:
        g = curves[curves["arm"] == arm]
        agg = g.groupby("step")["coef_mean"].agg(["mean", "min", "max"])
        color, n = ARM_COLORS[arm], g["seed"].nunique()
        ls = "--" if arm == sp.DOSE else "-"
        ax_c.plot(agg.index, agg["mean"], color=color, lw=1.8, ls=ls, label=f"{arm_label(arm)} ({seed_text(n)})")
        if n > 1:
            ax_c.fill_between(agg.index, agg["min"], agg["max"], color=color, alpha=0.15, lw=0)
        if has_pressure and arm != sp.DOSE and g["pressure"].notna().any():
            p = _running(g.dropna(subset=["pressure"]).sort_values("step"), "pressure", SMOOTH)
            pa = p.groupby("step")["pressure"].mean()
            axes[1].plot(pa.index, pa, color=color, lw=1.4, label=arm_label(arm))
    for arm in early:
        k = sp.release_step(arm)
        for ax in np.atleast_1d(axes):
            ax.axvline(k, color=ARM_COLORS[arm], ls=":", lw=1)
        ax_c.annotate(f"release, step {k}", (k, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                      textcoords="offset points", fontsize=7, color=ARM_COLORS[arm])
    ax_c.axhline(0, color="#777", lw=0.8)
    ax_c.set_xlabel("optimiser steps taken")
    ax_c.set_ylabel("mean coefficient λ·gate on the training batch")
    ax_c.set_title("the coefficient over training", fontsize=10)
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=7, loc="best")
    if has_pressure:
        ax = axes[1]
        ax.axhline(0, color="#555", lw=0.8)
        ax.set_xlabel("optimiser steps taken")
        ax.set_ylabel(f"dL/dλ, running mean of {SMOOTH} steps (> 0: descent lowers λ)")
        ax.set_title("the pressure on λ (on a dose's c: the loss's pull)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("The early smear: its coefficient against the fixed dose 0.8 and the learned smear (line: mean over "
                 "seeds, band: min–max)", fontsize=10)
    return fig


__all__ = ["attn0_grid", "prev_mass_layers", "early_coefficient"]
