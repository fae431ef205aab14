"""Figures (d)–(g): the smear gate — λ over training, the coefficient on data, which tokens smear, and by
token class."""

from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import stats
from analysis.writeup.plots.style import (ARM_COLORS, MAX_SEED_LEGEND, display_token, figure, need, preset_text, seed_text,
                                  token_axis)
from trainer.errors import AnalysisError


def _seed_colors(seeds: Sequence[int]) -> dict[int, tuple]:
    """Shades of the smear arm's orange, one per seed."""
    cmap = matplotlib.colormaps["Oranges"]
    return {s: cmap(0.45 + 0.5 * i / max(1, len(seeds) - 1)) for i, s in enumerate(sorted(seeds))}


def _smear_final(df: pd.DataFrame) -> pd.DataFrame:
    """The smear arm's rows at each run's last step."""
    return stats.final_rows(df[df["arm"] == "smear"])


def _boxplot(ax, data: list[np.ndarray], labels: list[str], color: str) -> None:
    """Horizontal boxes, across matplotlib versions (`vert` was replaced by `orientation`)."""
    kw = {"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10) \
        else {"vert": False}
    bp = ax.boxplot(data, positions=range(len(data)), widths=0.6, patch_artist=True, showfliers=True,
                    flierprops=dict(ms=2, alpha=0.4), medianprops=dict(color="black"), **kw)
    for box in bp["boxes"]:
        box.set(facecolor=color, alpha=0.6)
    ax.set_yticks(range(len(data)), labels)


def smear_lambda(smear: pd.DataFrame, record_smear: pd.DataFrame | None = None) -> Figure:
    """λ over training (one line per seed) and the effective coefficient on data (mean, 5–95% band); past
    MAX_SEED_LEGEND seeds, thin lines per seed under their mean, without bands."""
    recorded = record_smear is not None and len(record_smear) > 0  # the finer record when there is one
    src = need(record_smear if recorded else smear, "smear table (the smear arm's λ and coefficients)")
    src = need(src[src["arm"] == "smear"], "smear-arm rows in the smear table")
    fig = figure(11, 4.0)
    ax_l, ax_c = fig.subplots(1, 2, sharex=True)
    colors = _seed_colors(src["seed"].unique())
    few = src["seed"].nunique() <= MAX_SEED_LEGEND
    for i, (seed, g) in enumerate(src.sort_values("step").groupby("seed")):
        c, lw = colors[seed], 2 if few else 0.8
        marker = "o" if len(g) <= 20 and few else None  # few checkpoints: show where the values are
        label = f"seed {seed}" if few else f"each of {src['seed'].nunique()} seeds" if i == 0 else None
        ax_l.plot(g["tokens"], g["lambda"], color=c, lw=lw, marker=marker, ms=4, label=label)
        ax_c.plot(g["tokens"], g["coef_mean"], color=c, lw=lw, marker=marker, ms=4,
                  label=f"{label}: mean" if few else label)
        if few:
            ax_c.fill_between(g["tokens"], g["coef_p05"], g["coef_p95"], color=c, alpha=0.15, lw=0)
    if not few:
        mean = src.groupby("tokens")[["lambda", "coef_mean"]].mean().reset_index()
        ax_l.plot(mean["tokens"], mean["lambda"], color="black", lw=2, label="mean over seeds")
        ax_c.plot(mean["tokens"], mean["coef_mean"], color="black", lw=2, label="mean over seeds")
    if recorded and smear is not None and len(smear):
        ck = smear[smear["arm"] == "smear"]
        ax_l.scatter(ck["tokens"], ck["lambda"], s=14, color="black", zorder=3, label="checkpoints")
    for ax in (ax_l, ax_c):
        token_axis(ax, src["tokens"])
        ax.grid(alpha=0.3)
    ax_l.axhline(0, color="#777", lw=0.8)
    ax_l.set_ylabel("smear λ (learned scalar)")
    ax_l.set_title("λ over training", fontsize=10)
    ax_l.legend(fontsize=8)
    ax_c.set_ylabel("effective coefficient λ·σ(w·e) on data")
    ax_c.set_title("effective coefficient on data: mean" + (", band 5th–95th percentile" if few else ""), fontsize=10)
    ax_c.legend(fontsize=8)
    source = "recorded during training" if recorded else "at checkpoints"
    fig.suptitle(f"Smear gate over training ({source}) — preset {preset_text(src)}", fontsize=11)
    return fig


def coefficient_histogram(smear_tokens: pd.DataFrame) -> Figure:
    """Distribution of the effective smear coefficient over token positions of data, per seed."""
    df = need(smear_tokens, "smear_tokens table (coefficients on data)")
    df = need(_smear_final(df), "smear-arm rows in the smear_tokens table")
    df = need(df[np.isfinite(df["coefficient"].astype(float))], "finite coefficients in the smear_tokens table")
    vals = df["coefficient"].to_numpy(float)
    lo, hi = float(vals.min()), float(vals.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    fig = figure(6.4, 4.0)
    ax = fig.subplots()
    ax.hist(vals, bins=bins, weights=np.full(len(vals), 1 / len(vals)), color=ARM_COLORS["smear"], alpha=0.35,
            label=f"all seeds ({len(vals):,} positions)")
    colors = _seed_colors(df["seed"].unique())
    medians = df.groupby("seed")["coefficient"].median()
    if len(medians) <= MAX_SEED_LEGEND:
        for seed, g in df.groupby("seed"):
            v = g["coefficient"].to_numpy(float)
            ax.hist(v, bins=bins, weights=np.full(len(v), 1 / len(v)), histtype="step", lw=1.6, color=colors[seed],
                    label=f"seed {seed} (median {np.median(v):.3f})")
    else:  # many seeds: their medians as ticks, not one outline each
        ax.plot(medians, np.full(len(medians), 0.96), "|", ms=12, mew=1.5, color=ARM_COLORS["smear"],
                transform=ax.get_xaxis_transform(),
                label=f"each seed's median ({len(medians)} seeds: {medians.min():.3f}–{medians.max():.3f})")
    ax.set_xlabel("effective smear coefficient λ·σ(w·e) of a token")
    ax.set_ylabel("fraction of token positions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Smear coefficient on data, last checkpoint — preset {preset_text(df)}", fontsize=11)
    return fig


def vocab_extremes(smear_vocab: pd.DataFrame, k: int = 15) -> Figure:
    """The vocabulary's k lowest and k highest tokens by effective coefficient (mean over seeds)."""
    df = need(smear_vocab, "smear_vocab table (the coefficient of every vocabulary token)")
    df = need(_smear_final(df), "smear-arm rows in the smear_vocab table")
    k = min(k, max(1, df["token_id"].nunique() // 2))
    top, bottom = stats.vocab_extremes(df, k)
    n_seeds = df["seed"].nunique()
    fig = figure(9.5, 1.4 + 0.26 * k)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, part, title in ((axes[0], bottom, f"lowest {k}"), (axes[1], top, f"highest {k}")):
        y = np.arange(len(part))
        err = np.vstack([part["coefficient"] - part["lo"], part["hi"] - part["coefficient"]]) if n_seeds > 1 else None
        bars = ax.barh(y, part["coefficient"], xerr=err, color=ARM_COLORS["smear"], alpha=0.85,
                       error_kw=dict(lw=0.8, capsize=2))
        # the value beside each bar: a gate shut to 0 draws no bar at all
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in part["coefficient"]], padding=3, fontsize=7, color="0.3")
        ax.margins(x=0.12)  # room for the labels
        ax.set_yticks(y, [display_token(t) for t in part["text"]], family="monospace", fontsize=9)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("effective coefficient λ·σ(w·e)")
    spread = "; whiskers: min–max over seeds" if n_seeds > 1 else ""
    fig.suptitle(f"Vocabulary tokens by smear coefficient (mean of {seed_text(n_seeds)}{spread}); "
                 "␣ = leading space, ⏎ = newline", fontsize=10)
    return fig


def coefficient_by_class(smear_vocab: pd.DataFrame | None = None, smear_tokens: pd.DataFrame | None = None) -> Figure:
    """Effective coefficient by token class (word start, continuation, punctuation, digits, …)."""
    sources = [(t, _smear_final(d)) for t, d in
               (("over the vocabulary (each token once, all seeds)", smear_vocab),
                ("over data (token occurrences, all seeds)", smear_tokens)) if d is not None and len(d)]
    sources = [(t, d) for t, d in sources if len(d)]
    if not sources:
        raise AnalysisError("no smear_vocab or smear_tokens table (coefficients by token)")
    fig = figure(5.2 * len(sources) + 0.8, 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(sources)))
    for ax, (title, df) in zip(axes, sources):
        df = stats.with_token_class(df)
        classes = [c for c in stats.TOKEN_CLASSES if (df["token_class"] == c).any()]
        data = [df.loc[df["token_class"] == c, "coefficient"].to_numpy(float) for c in classes]
        _boxplot(ax, data, [f"{c}\n(n={len(d):,})" for c, d in zip(classes, data)], ARM_COLORS["smear"])
        ax.invert_yaxis()
        ax.set_xlabel("effective coefficient λ·σ(w·e)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Smear coefficient by token class — preset {preset_text(sources[0][1])}", fontsize=11)
    return fig
