"""The size sweep's figure: the learned coefficient and the smear − baseline differences against model size."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, NullFormatter

from analysis.writeup.plots.style import ARM_COLORS, figure, need
from analysis.stats.sizes import MEASURE_LABELS, SweepTables, record_reference

WHEN_STYLE = {"end": dict(color="#444444", marker="o", dx=0.95),
              "end (recorder)": dict(color="#9467bd", marker="D", dx=1.0),
              "matched loss": dict(color="#2ca02c", marker="s", dx=1.05)}
X = "params_nonembed"
X_LABEL = "parameters without embeddings and head (log)"


def _errorbars(ax, df: pd.DataFrame, y: str, lo: str, hi: str, dx: float = 1.0, **kw) -> None:
    """Points at (parameters × dx, y) with CI bars; a bar is left out where its CI is NaN (under 2 seeds)."""
    x = df[X].to_numpy(float) * dx
    v = df[y].to_numpy(float)
    err = np.vstack([v - df[lo].to_numpy(float), df[hi].to_numpy(float) - v])
    ax.errorbar(x, v, yerr=np.where(np.isfinite(err), err, 0), capsize=4, lw=1.5, ms=6, **kw)


def _size_ticks(ax, sizes: pd.DataFrame) -> None:
    for _, r in sizes.iterrows():
        ax.annotate(f"d={r['d_model']}", (r[X], 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=7, color="#777")


def size_sweep(t: SweepTables) -> Figure:
    """(a) the learned λ·gate against parameters, per seed and mean with CI, with the record's 124M ≈ 0.07;
    (b) smear − baseline previous-token mass and (c) validation loss, at the end and at matched loss."""
    sizes = need(t.sizes, "sizes in the sweep")
    fig = figure(14, 4.2)
    ax_c, ax_p, ax_l = fig.subplots(1, 3)

    coef = t.with_sizes("coefficients")
    coef = coef[coef["measure"] == "coef_mean"]
    seeds = t.with_sizes("per_seed")
    seeds = seeds[(seeds["arm"] == "smear") & seeds["coef_mean"].notna()] if "coef_mean" in seeds else seeds.iloc[:0]
    ax_c.scatter(seeds[X], seeds["coef_mean"], s=14, color=ARM_COLORS["smear"], alpha=0.5, label="one seed")
    if len(coef):
        _errorbars(ax_c, coef, "mean", "ci_low", "ci_high", color=ARM_COLORS["smear"], marker="o",
                   label="mean, 95% t CI")
    ref = record_reference()
    ax_c.scatter([ref[X]], [ref["coef_mean"]], marker="*", s=160, color="black", zorder=3,
                 label="record's 124M (≈ 0.07)")
    ax_c.annotate(f"record 124M ≈ {ref['coef_mean']:g}", (ref[X], ref["coef_mean"]), xytext=(-8, 8),
                  textcoords="offset points", ha="right", fontsize=8)
    ax_c.set_ylabel(MEASURE_LABELS["coef_mean"] + " at the end")
    ax_c.set_title("(a) the learned smear coefficient")
    ax_c.axhline(0, color="#999", lw=0.8)

    comp = t.with_sizes("comparisons")
    for ax, measure, title in ((ax_p, "prev_mass", "(b) previous-token mass, smear − baseline"),
                               (ax_l, "val_loss", "(c) validation loss, smear − baseline")):
        for when, style in WHEN_STYLE.items():
            d = comp[(comp["measure"] == measure) & (comp["when"] == when)] if len(comp) else comp
            if len(d) and d["diff"].notna().any():
                _errorbars(ax, d, "diff", "ci_low", "ci_high", dx=style["dx"], color=style["color"],
                           marker=style["marker"], linestyle="none", label=f"at {when}, paired 95% t CI")
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_title(title)
        ax.set_ylabel("paired difference" + (" (nats/token)" if measure == "val_loss" else ""))
    lo, hi = float(sizes[X].min()), float(sizes[X].max())
    for ax in (ax_p, ax_l):  # a decade or more around the sizes, so a narrow sweep still reads on a log axis
        mid = (lo * hi) ** 0.5
        span = max(hi / lo, 10.0) ** 0.5 * 1.3
        ax.set_xlim(mid / span, mid * span)
    for ax in (ax_c, ax_p, ax_l):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(X_LABEL)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
        _size_ticks(ax, sizes)
    return fig


__all__ = ["size_sweep"]
