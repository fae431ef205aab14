"""Figures of the mechanism tables (readout; kept apart from analysis/plots)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from trainer.errors import AnalysisError  # noqa: E402
from trainer.io import atomic_path  # noqa: E402

ARM_COLORS = {"baseline": "tab:blue", "smear": "tab:orange"}
TARGET_TITLES = {"prev": "token i−1", "curr": "token i (control)", "prev2": "token i−2 (control)"}


def plot_readout(readout: pd.DataFrame, out: str | Path | None = None, metric: str = "above_baseline") -> plt.Figure:
    """Probe accuracy above the backward-bigram baseline by layer, one panel per target: each seed a
    dot, each arm's mean a line (layer = n_layers is the final residual). Saved as PNG and SVG when
    `out` (a path without or with suffix) is given."""
    need = {"arm", "seed", "layer", "target", "metric", "value"}
    if readout is None or readout.empty or not need <= set(readout.columns):
        raise AnalysisError(f"plot_readout: needs a non-empty readout table with columns {', '.join(sorted(need))}")
    df = readout[readout["metric"] == metric]
    targets = [t for t in TARGET_TITLES if t in set(df["target"])]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.4), sharey=True, squeeze=False)
    final = int(df["layer"].max())
    for ax, target in zip(axes[0], targets):
        part = df[df["target"] == target]
        for i, (arm, g) in enumerate(sorted(part.groupby("arm"), key=lambda kv: kv[0])):
            color = ARM_COLORS.get(arm, f"C{i + 2}")
            offset = (i - 0.5) * 0.12  # arms side by side at each layer
            ax.scatter(g["layer"] + offset, g["value"], s=14, color=color, alpha=0.6, linewidths=0)
            mean = g.groupby("layer")["value"].mean()
            ax.plot(mean.index + offset, mean.values, color=color, label=f"{arm} ({g['seed'].nunique()} seeds)")
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(TARGET_TITLES[target])
        ax.set_xlabel("layer (residual input; last = final)")
        ax.set_xticks(range(final + 1), [str(l) for l in range(final)] + ["final"])
    axes[0][0].set_ylabel("probe accuracy − baseline" if metric == "above_baseline" else metric)
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    if out is not None:
        out = Path(out)
        for suffix in (".png", ".svg"):
            with atomic_path(out.with_suffix(suffix)) as tmp:
                fig.savefig(tmp, dpi=150, format=suffix[1:])
    return fig


__all__ = ["plot_readout"]
