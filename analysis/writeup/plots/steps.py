"""Steps saved at matched loss: the baseline's final loss against its step budget, the fitted curve, and each
arm placed on that curve at the baseline steps that match its loss."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.stats.steps_saved import Shape
from analysis.writeup.plots.style import ARM_COLORS, arm_label, figure, need


def steps_saved_figure(points: pd.DataFrame, shape: Shape, summary: pd.DataFrame, rate: pd.DataFrame) -> Figure:
    """`points` (seed, steps, val_loss, curve: `stats.steps_saved.fitted_points`), the fitted `shape`, the per-arm
    `summary` and the exchange `rate`. The curve is drawn through the mean 1× baseline loss, over the budgets
    only; each run's point is moved by its seed's 1× distance from that mean (the seeds' intercepts differ), so
    the points scatter around the curve by the fit's residuals. Arms: filled, the mean over seeds of the matched
    steps with its CI; hollow, the mean loss difference converted."""
    points = need(points, "baseline budget points")
    anchored = points[points["curve"].notna()]
    ones = anchored[anchored["steps"] == shape.n0]
    anchor = float(ones["val_loss"].mean())
    fig = figure(8, 5)
    ax = fig.subplots()
    lo, hi = min(shape.budgets), max(shape.budgets)
    n = np.linspace(lo, hi, 200)
    mean_curve = lambda steps: anchor + shape.delta(np.log(np.asarray(steps, float) / shape.n0))
    ax.plot(n, mean_curve(n), color=ARM_COLORS["baseline"], lw=2,
            label=f"baseline, fitted: {shape.describe()}")
    moved = anchored["val_loss"] - anchored["curve"] + mean_curve(anchored["steps"])
    ax.scatter(anchored["steps"], moved, s=14, color=ARM_COLORS["baseline"], alpha=0.45, zorder=2,
               label=f"baseline runs ({anchored['seed'].nunique()} seeds), moved to the mean 1× loss")
    ax.axvline(shape.n0, color="#777", lw=0.8, ls=":")
    ax.annotate(f"study's budget, {shape.n0} steps", (shape.n0, 1), xycoords=("data", "axes fraction"),
                xytext=(-3, -12), textcoords="offset points", ha="right", fontsize=8, color="#555")
    beyond = []
    for r in summary.to_dict("records"):
        color = ARM_COLORS[r["arm"]]
        for pct, pl, ph, filled in ((r["pct_saved"], r["pct_ci_low"], r["pct_ci_high"], True),
                                    (r["pct_at_mean_loss"], r["pct_at_mean_ci_low"], r["pct_at_mean_ci_high"], False)):
            if not math.isfinite(pct):
                continue
            x = shape.n0 * (1 + pct / 100)
            err = [[x - shape.n0 * (1 + pl / 100)], [shape.n0 * (1 + ph / 100) - x]] if math.isfinite(pl) else None
            label = (f"{arm_label(r['arm'])}: {pct:+.2f}% [{pl:+.2f}, {ph:+.2f}]" if math.isfinite(pl) else
                     f"{arm_label(r['arm'])}: {pct:+.2f}%") + (" (mean over seeds)" if filled else " (mean loss)")
            ax.errorbar([x], [float(mean_curve(x))], xerr=err, fmt="o", ms=8, capsize=4, color=color,
                        mfc=color if filled else "white", zorder=3, label=label)
        if not math.isfinite(r["pct_saved"]):
            beyond.append(arm_label(r["arm"]))
    if beyond:
        ax.text(0.02, 0.97, f"beyond the fitted budgets: {', '.join(beyond)}", transform=ax.transAxes, fontsize=8,
                va="top")
    top = ax.secondary_xaxis("top", functions=(lambda s: 100 * (s / shape.n0 - 1), lambda p: shape.n0 * (1 + p / 100)))
    top.set_xlabel("steps relative to the study's budget (%)")
    ax.set_xlabel("baseline training steps (each a full run with its own schedule)")
    ax.set_ylabel("final validation loss (nats/token)")
    r = rate.iloc[0]
    ax.set_title(f"Steps saved at matched loss: 1% more steps lowers the loss by {r['nats_per_pct']:.4g} nats "
                 f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}]", fontsize=10)
    ax.margins(x=0.06)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")  # the curve falls from upper left to lower right
    return fig


__all__ = ["steps_saved_figure"]
