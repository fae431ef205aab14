"""Steps saved at matched loss: the baseline's final loss against its step budget, the fitted curve, and each
arm placed on that curve at the baseline steps that match its loss; an arm with budget runs of its own also gets
its own curve (dashed), marked where it reaches the baseline's 1× loss."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.stats.steps_saved import Shape
from analysis.tables import BASELINE
from analysis.writeup.plots.style import ARM_COLORS, arm_label, figure, need


def _draw_curve(ax, points: pd.DataFrame, shape: Shape, dashed: bool):
    """One curve drawn through its mean 1× loss over its budgets, and its runs moved by their seed's 1× distance
    from that mean (the seeds' intercepts differ), so they scatter around it by the fit's residuals. Returns the
    mean curve as a function of steps."""
    anchored = points[points["fitted"].notna()]
    anchor = float(anchored.loc[anchored["steps"] == shape.n0, "val_loss"].mean())
    mean_curve = lambda steps: anchor + shape.delta(np.log(np.asarray(steps, float) / shape.n0))
    n = np.linspace(min(shape.budgets), max(shape.budgets), 200)
    color = ARM_COLORS[shape.curve]
    who = "baseline" if shape.curve == BASELINE else f"{arm_label(shape.curve)}'s own curve"
    ax.plot(n, mean_curve(n), color=color, lw=2 if not dashed else 1.5, ls="--" if dashed else "-",
            label=f"{who}, fitted: {shape.describe()}")
    moved = anchored["val_loss"] - anchored["fitted"] + mean_curve(anchored["steps"])
    ax.scatter(anchored["steps"], moved, s=14, color=color, alpha=0.45, zorder=2, marker="s" if dashed else "o",
               label=f"{arm_label(shape.curve)} runs ({anchored['seed'].nunique()} seeds), moved to the mean 1× loss")
    return mean_curve


def steps_saved_figure(points: pd.DataFrame, shapes: Mapping[str, Shape], summary: pd.DataFrame,
                       rate: pd.DataFrame) -> Figure:
    """`points` (arm, seed, steps, val_loss, fitted: `stats.steps_saved.fitted_points` of every curve), the fitted
    `shapes` by curve (the baseline's first), the per-arm `summary` and the exchange `rate`. On the baseline's
    curve, each arm: filled, the mean over seeds of the matched steps with its CI; hollow, the mean loss
    difference converted. On an arm's own curve (squares): where it reaches the baseline's 1× loss."""
    points = need(points, "budget points")
    shape = shapes[BASELINE]
    fig = figure(8, 6.5)
    ax = fig.subplots()
    curves = {arm: _draw_curve(ax, points[points["arm"] == arm], sh, dashed=arm != BASELINE)
              for arm, sh in shapes.items()}
    ax.axvline(shape.n0, color="#777", lw=0.8, ls=":")
    ax.annotate(f"study's budget, {shape.n0} steps", (shape.n0, 1), xycoords=("data", "axes fraction"),
                xytext=(-3, -12), textcoords="offset points", ha="right", fontsize=8, color="#555")
    beyond = []
    for r in summary.to_dict("records"):
        curve = r["curve"]
        color, own = ARM_COLORS[r["arm"]], curve != BASELINE
        marks = [(r["pct_saved"], r["pct_ci_low"], r["pct_ci_high"], True)]
        if not own:
            marks.append((r["pct_at_mean_loss"], r["pct_at_mean_ci_low"], r["pct_at_mean_ci_high"], False))
        sign = -1 if own else 1  # on the arm's own curve the matched steps are n0 − saved
        for pct, pl, ph, filled in marks:
            if not math.isfinite(pct):
                continue
            at = lambda p: shape.n0 * (1 + sign * p / 100)
            x = at(pct)
            ends = sorted([at(pl), at(ph)])
            err = [[x - ends[0]], [ends[1] - x]] if math.isfinite(pl) else None
            inside = f" inside the budgets, {int(r['n'])} of {int(r['n_seeds'])}" if r["n_beyond"] else ""
            what = ("its steps to the baseline's 1× loss" if own else
                    f"mean over seeds{inside}" if filled else "mean loss difference converted")
            label = (f"{arm_label(r['arm'])}: {pct:+.2f}% [{pl:+.2f}, {ph:+.2f}]" if math.isfinite(pl) else
                     f"{arm_label(r['arm'])}: {pct:+.2f}%") + f" ({what})"
            ax.errorbar([x], [float(curves[curve if own else BASELINE](x))], xerr=err, fmt="s" if own else "o",
                        ms=8, capsize=4, color=color, mfc=color if filled else "white", zorder=3, label=label)
        if not math.isfinite(r["pct_saved"]):
            beyond.append(arm_label(r["arm"]) + (" (own curve)" if own else ""))
    if beyond:
        ax.text(0.02, 0.97, f"beyond the fitted budgets: {', '.join(beyond)}", transform=ax.transAxes, fontsize=8,
                va="top")
    top = ax.secondary_xaxis("top", functions=(lambda s: 100 * (s / shape.n0 - 1), lambda p: shape.n0 * (1 + p / 100)))
    top.set_xlabel("steps relative to the study's budget (%)")
    ax.set_xlabel("training steps (each a full run with its own schedule)")
    ax.set_ylabel("final validation loss (nats/token)")
    r = rate[rate["curve"] == BASELINE].iloc[0]
    ax.set_title(f"Steps saved at matched loss\n1% more baseline steps at 1× lowers the loss by {r['nats_per_pct']:.4g} "
                 f"nats [{r['ci_low']:.3g}, {r['ci_high']:.3g}]", fontsize=10)
    ax.margins(x=0.06)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center")  # below the axes: no curve shape is assumed (one may turn)
    return fig


__all__ = ["steps_saved_figure"]
