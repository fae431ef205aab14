"""The summary figure at the top of a report: per arm, previous-token mass and previous-token heads against how
much of the previous token the arm's smear term carries. Seeds are points; up to 8 seeds, a line joins each arm's
seed to the baseline of the same seed, its pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import stats
from analysis.stats.headline import SHARE
from analysis.writeup.plots.style import ARM_COLORS, ARM_LABELS, MAX_SEED_LEGEND, figure, need, seed_text
from trainer.errors import AnalysisError

HEADS_JITTER = 0.08  # head counts are integers: seeds are spread this far up and down so none hides another


def summary_figure(per_seed: pd.DataFrame, shares: pd.DataFrame, threshold: float = stats.DEFAULT_THRESHOLD) -> Figure:
    """`per_seed`: stats.summarize's per-seed claims; `shares`: headline.smear_shares (arm, seed, smear_share)."""
    need(per_seed, "per-seed claims")
    need(shares, "paths table, so the smear term's share cannot be placed (run `smearlens analyze` with paths)")
    df = per_seed.merge(shares, on=["arm", "seed"], how="inner")
    if df.empty:
        raise AnalysisError("no run has both its previous-token scores and its smear share")
    arms = stats.arm_order(df["arm"].astype(str))
    fig = figure(10.5, 4.2)
    axes = fig.subplots(1, 2)
    measures = [("prev_mass", "total previous-token mass (sum over heads)"),
                ("n_prev_heads", f"previous-token heads (score ≥ {threshold:g})")]
    # a fixed jitter per seed: the same figure every time, and a seed keeps its offset across arms
    jitter = {s: HEADS_JITTER * np.sin(2.4 * s) for s in sorted(df["seed"].unique())}
    for ax, (column, label) in zip(axes, measures):
        y_of = (lambda g: g[column] + g["seed"].map(jitter)) if column == "n_prev_heads" else (lambda g: g[column])
        if df["seed"].nunique() <= MAX_SEED_LEGEND:  # past that the lines hide the points
            for _, pair in df.groupby("seed"):
                base = pair[pair["arm"] == stats.BASELINE]
                for _, arm_row in pair[pair["arm"] != stats.BASELINE].iterrows() if len(base) else ():
                    ends = pd.concat([base, arm_row.to_frame().T])
                    ax.plot(ends[SHARE].astype(float), y_of(ends).astype(float), color="#bbbbbb", lw=0.6, zorder=1)
        for arm in arms:
            g = df[df["arm"] == arm]
            ax.scatter(g[SHARE], y_of(g), s=14, color=ARM_COLORS[arm], alpha=0.55, lw=0, zorder=2)
            x_low, x_high = stats.t_ci(g[SHARE].to_numpy(float)) if len(g) > 1 else (np.nan, np.nan)
            y_low, y_high = stats.t_ci(g[column].to_numpy(float)) if len(g) > 1 else (np.nan, np.nan)
            x, y = g[SHARE].mean(), g[column].mean()
            ax.errorbar(x, y, xerr=[[x - x_low], [x_high - x]] if np.isfinite(x_low) else None,
                        yerr=[[y - y_low], [y_high - y]] if np.isfinite(y_low) else None,
                        fmt="o", ms=8, color=ARM_COLORS[arm], mec="black", mew=0.8, capsize=3, zorder=3,
                        label=f"{ARM_LABELS[arm]} ({seed_text(len(g))})")
        ax.set_xlabel("smear term's share of token i−1's effect on the prediction at i")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Per arm: previous-token attention against how much of the previous token the smear carries "
                 f"({', '.join(sorted(set(df['preset'].astype(str))))})", fontsize=10)
    return fig
