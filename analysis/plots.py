"""Figures for "does the smear free up heads?": each function takes tables and returns a Figure.

Figures are built with `matplotlib.figure.Figure` (no pyplot): no global state, no GUI backend,
safe in notebooks, tests and the report alike. Arms always have the same colours and names;
scores on 0–1 share one colour scale. Missing input raises AnalysisError saying what is missing;
`show` (for notebooks) and `draw_all` (for the report) turn that into a message instead of a figure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import EngFormatter, MaxNLocator

from analysis import stats
from analysis.stats import ARMS, DEFAULT_THRESHOLD, THRESHOLDS, Tables
from trainer.errors import AnalysisError, SmearlensError
from trainer.io import atomic_path



class _ArmStyle(dict):
    """Per-arm style; an arm not listed (e.g. "dose-0.8") gets the next free colour, or its own name."""

    def __init__(self, known: dict, spare: Sequence[str] | None = None):
        super().__init__(known)
        self._spare = list(spare) if spare is not None else None

    def __missing__(self, arm: str) -> str:
        if self._spare is None:
            return arm
        free = [c for c in self._spare if c not in self.values()] or self._spare
        self[arm] = free[0]
        return free[0]


ARM_COLORS = _ArmStyle({"baseline": "#3b6fb6", "smear": "#e07b28"},
                       ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728"])
ARM_LABELS = _ArmStyle({"baseline": "baseline (no smear)", "smear": "smear"})


def _arms(df: pd.DataFrame) -> list[str]:
    """baseline and smear (panels say when they have no runs), then every other arm in `df`."""
    return stats.arm_order(set(ARMS) | set(df["arm"].astype(str)))
# (name, unit) per head metric; units as the analysis defines them (SPEC, Metrics).
METRIC_LABELS = {
    "prev_token": ("previous-token score", "attention on token i−1, 0–1"),
    "induction": ("induction score", "0–1"),
    "duplicate_token": ("duplicate-token score", "0–1"),
    "entropy": ("attention entropy", "nats"),
    "distance": ("mean attention distance", "tokens"),
    "bos": ("attention to BOS", "fraction, 0–1"),
    "ablation_zero": ("loss increase, head zero-ablated", "nats/token"),
    "ablation_mean": ("loss increase, head mean-ablated", "nats/token"),
}
PROFILE_METRICS = ("prev_token", "induction", "duplicate_token", "entropy", "distance", "bos")
ABSENT_COLOR = "#d9d9d9"
SCORE_CMAP = matplotlib.colormaps["viridis"].with_extremes(bad=ABSENT_COLOR)
DPI = 110


# ---------------------------------------------------------------------------------------------
# Helpers


def _need(df: pd.DataFrame | None, what: str) -> pd.DataFrame:
    if df is None or not len(df):
        raise AnalysisError(f"no {what}")
    return df


def _first(*dfs: pd.DataFrame | None) -> pd.DataFrame | None:
    return next((d for d in dfs if d is not None and len(d)), None)


def _preset(df: pd.DataFrame) -> str:
    return ", ".join(sorted(set(df["preset"].astype(str))))


def _seed_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def display_token(text: str, limit: int = 18) -> str:
    """A decoded token made visible: spaces as ␣, newlines as ⏎, tabs as →."""
    if not isinstance(text, str) or text == "":
        return "∅"
    shown = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "→").replace("\r", "␍")
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _layout(scores: pd.DataFrame, n_layers: int | None = None) -> tuple[int, int]:
    """(layers, heads) of the grid; layers without attention rows show as gaps."""
    layers = int(scores["layer"].max()) + 1
    return max(layers, n_layers or 0), int(scores["head"].max()) + 1


def _token_axis(ax, x: np.ndarray) -> None:
    ax.set_xlabel("tokens seen")
    x = np.asarray(x, float)
    if len(x) and x.min() > 0 and x.max() / x.min() >= 20:
        ax.set_xscale("log")  # checkpoints are log-spaced
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def _band(ax, df: pd.DataFrame, y: str, arm: str, x: str = "tokens", label_extra: str = "") -> None:
    """Mean over seeds as a line, min–max over seeds as a band."""
    g = df[df["arm"] == arm]
    if g.empty:
        return
    agg = g.groupby("step").agg(x=(x, "mean"), mean=(y, "mean"), lo=(y, "min"), hi=(y, "max")).sort_values("x")
    n = g["seed"].nunique()
    ax.plot(agg["x"], agg["mean"], color=ARM_COLORS[arm], marker="o" if len(agg) <= 20 else None, ms=4, lw=2,
            label=f"{ARM_LABELS[arm]} — mean of {_seed_text(n)}{label_extra}")
    if n > 1:
        ax.fill_between(agg["x"], agg["lo"], agg["hi"], color=ARM_COLORS[arm], alpha=0.2, lw=0)


def _band_legend(ax, n_arms_with_seeds: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if n_arms_with_seeds:
        handles.append(Patch(color="grey", alpha=0.25))
        labels.append("band: min–max over seeds")
    ax.legend(handles, labels, fontsize=8, loc="best")


def _boxplot(ax, data: list[np.ndarray], labels: list[str], color: str) -> None:
    """Horizontal boxes, across matplotlib versions (`vert` was replaced by `orientation`)."""
    kw = {"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10) \
        else {"vert": False}
    bp = ax.boxplot(data, positions=range(len(data)), widths=0.6, patch_artist=True, showfliers=True,
                    flierprops=dict(ms=2, alpha=0.4), medianprops=dict(color="black"), **kw)
    for box in bp["boxes"]:
        box.set(facecolor=color, alpha=0.6)
    ax.set_yticks(range(len(data)), labels)


# ---------------------------------------------------------------------------------------------
# (a)–(c) previous-token heads


def _head_grid(ax, values: pd.Series, n_l: int, n_h: int, present: set[int], cmap, norm: Normalize,
               fmt: str, outline: set[tuple[int, int]] = frozenset()) -> None:
    """One layer × head heatmap: values written in the cells, outlined cells, absent layers hatched."""
    ax.set_xticks(range(n_h))
    ax.set_yticks(range(n_l))
    ax.set_xlabel("head")
    ax.set_xlim(-0.5, n_h - 0.5)
    ax.set_ylim(n_l - 0.5, -0.5)
    grid = np.full((n_l, n_h), np.nan)
    for (layer, head), v in values.items():
        grid[int(layer), int(head)] = v
    ax.imshow(grid, norm=norm, cmap=cmap, aspect="auto")
    small = n_h > 8  # past 8 heads two decimals no longer fit a cell
    for layer in range(n_l):
        if layer not in present:
            ax.add_patch(Rectangle((-0.5, layer - 0.5), n_h, 1, facecolor=ABSENT_COLOR, hatch="///",
                                   edgecolor="#8c8c8c", lw=0))
            ax.text((n_h - 1) / 2, layer, "no attention", ha="center", va="center", fontsize=8, color="#333",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
            continue
        for head in range(n_h):
            v = grid[layer, head]
            if np.isnan(v):
                continue
            if not small:
                r, g, b, _ = cmap(norm(v))
                ax.text(head, layer, fmt.format(v), ha="center", va="center", fontsize=8,
                        color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
            if (layer, head) in outline:
                ax.add_patch(Rectangle((head - 0.46, layer - 0.46), 0.92, 0.92, fill=False, edgecolor="#d62728",
                                       lw=2.2))


def _grid_size(n_l: int, n_h: int, panels: int, rows: int = 1) -> tuple[float, float]:
    return 2.4 + panels * max(3.2, 0.62 * n_h + 0.8), rows * (0.9 + 0.42 * n_l) + 1.0


def _no_runs(ax, arm: str) -> None:
    ax.set_title(f"{ARM_LABELS[arm]}\n(no runs)", fontsize=10)
    ax.text(0.5, 0.5, f"no {arm} runs in these tables", ha="center", va="center", transform=ax.transAxes)


def prev_token_heatmaps(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
                        n_layers: int | None = None) -> Figure:
    """Layer × head previous-token score at the final step, seed-averaged, both arms on one 0–1 scale."""
    scores = _need(stats.head_scores(heads), "prev_token rows in the heads table")
    n_l, n_h = _layout(scores, n_layers)
    present = set(scores["layer"].astype(int))
    arms = _arms(scores)
    fig = Figure(figsize=_grid_size(n_l, n_h, len(arms)), layout="constrained", dpi=DPI)
    axes = fig.subplots(1, len(arms), sharey=True)
    norm = Normalize(0, 1)
    for ax, arm in zip(axes, arms):
        g = scores[scores["arm"] == arm]
        if g.empty:
            _head_grid(ax, pd.Series(dtype=float), n_l, n_h, set(), SCORE_CMAP, norm, "")
            _no_runs(ax, arm)
            continue
        mean = g.groupby(["layer", "head"])["score"].mean()
        _head_grid(ax, mean, n_l, n_h, present, SCORE_CMAP, norm, "{:.2f}",
                   {(int(l), int(h)) for (l, h), v in mean.items() if v >= threshold})
        per_seed = g.groupby("seed")["score"].apply(lambda s: int((s >= threshold).sum())).mean()
        ax.set_title(f"{ARM_LABELS[arm]}\nmean of {_seed_text(g['seed'].nunique())}; "
                     f"{per_seed:.1f} head(s) ≥ {threshold:g} per seed", fontsize=10)
    axes[0].set_ylabel("layer")
    fig.colorbar(ScalarMappable(norm=norm, cmap=SCORE_CMAP), ax=list(axes),
                 label="previous-token score\n(mean attention on token i−1)", shrink=0.9)
    fig.legend(handles=[Patch(facecolor="none", edgecolor="#d62728", lw=2,
                              label=f"previous-token head (seed-mean score ≥ {threshold:g})"),
                        Patch(facecolor=ABSENT_COLOR, hatch="///", edgecolor="#8c8c8c", label="layer without attention")],
               loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    step = int(stats.final_rows(scores)["step"].max())
    fig.suptitle(f"Previous-token score per head, final step ({step}) — preset {_preset(scores)}", fontsize=11)
    return fig


def prev_heads_vs_threshold(heads: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS,
                            threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """Number of previous-token heads per run against the threshold, mean and min–max over seeds."""
    sweep = _need(stats.threshold_sweep(heads, thresholds), "prev_token rows in the heads table")
    n_total = int(stats.head_scores(heads).groupby("run").size().max())
    fig = Figure(figsize=(6.4, 4.0), layout="constrained", dpi=DPI)
    ax = fig.subplots()
    arms = _arms(sweep)
    for i, arm in enumerate(arms):
        g = sweep[sweep["arm"] == arm]
        if g.empty:
            continue
        agg = g.groupby("threshold")["n_prev_heads"].agg(["mean", "min", "max"])
        x = agg.index.to_numpy() + (i - (len(arms) - 1) / 2) * 0.006  # a hair apart so equal counts stay visible
        ax.plot(x, agg["mean"], marker="o", ms=4, lw=2, color=ARM_COLORS[arm],
                label=f"{ARM_LABELS[arm]} — mean of {_seed_text(g['seed'].nunique())}")
        if g["seed"].nunique() > 1:
            ax.fill_between(x, agg["min"], agg["max"], color=ARM_COLORS[arm], alpha=0.2, lw=0)
    ax.axvline(threshold, color="#555", ls="--", lw=1)
    ax.text(threshold, 1.0, f" default {threshold:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
            color="#555")
    ax.set_xlabel("threshold on the previous-token score")
    ax.set_ylabel(f"previous-token heads per run\n(of {n_total} attention heads)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=-0.1)
    ax.grid(alpha=0.3)
    _band_legend(ax, sweep.groupby("arm")["seed"].nunique().max() > 1)
    ax.set_title(f"Previous-token heads by threshold, final step — preset {_preset(sweep)}", fontsize=11)
    return fig


def prev_mass_over_training(heads: pd.DataFrame, record_heads: pd.DataFrame | None = None,
                            window_growth: Sequence[int] = ()) -> Figure:
    """Total previous-token mass over training per arm (band over seeds): checkpoints, and recorded steps
    if any; dotted verticals at `window_growth` (tokens), where the attention windows grow."""
    _need(heads[heads["metric"] == "prev_token"] if heads is not None else None, "prev_token rows in the heads table")
    sources = [("at checkpoints (analysis)", heads)]
    if record_heads is not None and len(record_heads):
        sources.append(("during training (recorded)", record_heads))
    fig = Figure(figsize=(5.2 * len(sources) + 0.6, 4.2), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(sources), sharey=True))
    n_total = int(stats.head_scores(heads).groupby("run").size().max())
    for ax, (title, df) in zip(axes, sources):
        mass = stats.prev_mass_over_steps(df)
        for arm in _arms(mass):
            _band(ax, mass, "prev_mass", arm)
        lo, hi = mass["tokens"].min(), mass["tokens"].max()
        for i, x in enumerate(t for t in window_growth if lo < t < hi):
            ax.axvline(x, color="0.45", ls=":", lw=1, label="attention windows grow" if i == 0 else None)
        _token_axis(ax, mass["tokens"])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        _band_legend(ax, mass.groupby("arm")["seed"].nunique().max() > 1)
    axes[0].set_ylabel(f"total previous-token mass\n(sum of scores over {n_total} heads)")
    fig.suptitle(f"Previous-token mass over training — preset {_preset(heads)}", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# (d)–(g) smear gate


def _seed_colors(seeds: Sequence[int]) -> dict[int, tuple]:
    cmap = matplotlib.colormaps["Oranges"]
    return {s: cmap(0.45 + 0.5 * i / max(1, len(seeds) - 1)) for i, s in enumerate(sorted(seeds))}


def smear_lambda(smear: pd.DataFrame, record_smear: pd.DataFrame | None = None) -> Figure:
    """λ over training (one line per seed) and the effective coefficient on data (mean, 5–95% band)."""
    src = _need(_first(record_smear, smear), "smear table (the smear arm's λ and coefficients)")
    src = _need(src[src["arm"] == "smear"], "smear-arm rows in the smear table")
    fig = Figure(figsize=(11, 4.0), layout="constrained", dpi=DPI)
    ax_l, ax_c = fig.subplots(1, 2, sharex=True)
    colors = _seed_colors(src["seed"].unique())
    for seed, g in src.sort_values("step").groupby("seed"):
        c = colors[seed]
        marker = "o" if len(g) <= 20 else None  # few checkpoints: show where the values are
        ax_l.plot(g["tokens"], g["lambda"], color=c, lw=2, marker=marker, ms=4, label=f"seed {seed}")
        ax_c.plot(g["tokens"], g["coef_mean"], color=c, lw=2, marker=marker, ms=4, label=f"seed {seed}: mean")
        ax_c.fill_between(g["tokens"], g["coef_p05"], g["coef_p95"], color=c, alpha=0.15, lw=0)
    if record_smear is not None and len(record_smear) and smear is not None and len(smear):
        ck = smear[smear["arm"] == "smear"]
        ax_l.scatter(ck["tokens"], ck["lambda"], s=14, color="black", zorder=3, label="checkpoints")
    for ax in (ax_l, ax_c):
        _token_axis(ax, src["tokens"])
        ax.grid(alpha=0.3)
    ax_l.axhline(0, color="#777", lw=0.8)
    ax_l.set_ylabel("smear λ (learned scalar)")
    ax_l.set_title("λ over training", fontsize=10)
    ax_l.legend(fontsize=8)
    ax_c.set_ylabel("effective coefficient λ·σ(w·e) on data")
    ax_c.set_title("effective coefficient on data: mean, band 5th–95th percentile", fontsize=10)
    ax_c.legend(fontsize=8)
    source = "recorded during training" if src is record_smear else "at checkpoints"
    fig.suptitle(f"Smear gate over training ({source}) — preset {_preset(src)}", fontsize=11)
    return fig


def coefficient_histogram(smear_tokens: pd.DataFrame) -> Figure:
    """Distribution of the effective smear coefficient over token positions of data, per seed."""
    df = _need(smear_tokens, "smear_tokens table (coefficients on data)")
    df = _need(stats.final_rows(df[df["arm"] == "smear"]), "smear-arm rows in the smear_tokens table")
    df = _need(df[np.isfinite(df["coefficient"].astype(float))], "finite coefficients in the smear_tokens table")
    vals = df["coefficient"].to_numpy(float)
    lo, hi = float(vals.min()), float(vals.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained", dpi=DPI)
    ax = fig.subplots()
    ax.hist(vals, bins=bins, weights=np.full(len(vals), 1 / len(vals)), color=ARM_COLORS["smear"], alpha=0.35,
            label=f"all seeds ({len(vals):,} positions)")
    colors = _seed_colors(df["seed"].unique())
    for seed, g in df.groupby("seed"):
        v = g["coefficient"].to_numpy(float)
        ax.hist(v, bins=bins, weights=np.full(len(v), 1 / len(v)), histtype="step", lw=1.6, color=colors[seed],
                label=f"seed {seed} (median {np.median(v):.3f})")
    ax.set_xlabel("effective smear coefficient λ·σ(w·e) of a token")
    ax.set_ylabel("fraction of token positions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Smear coefficient on data, last checkpoint — preset {_preset(df)}", fontsize=11)
    return fig


def vocab_extremes(smear_vocab: pd.DataFrame, k: int = 15) -> Figure:
    """The vocabulary's k lowest and k highest tokens by effective coefficient (mean over seeds)."""
    df = _need(smear_vocab, "smear_vocab table (the coefficient of every vocabulary token)")
    df = _need(stats.final_rows(df[df["arm"] == "smear"]), "smear-arm rows in the smear_vocab table")
    k = min(k, max(1, df["token_id"].nunique() // 2))
    top, bottom = stats.vocab_extremes(df, k)
    n_seeds = df["seed"].nunique()
    fig = Figure(figsize=(9.5, 1.4 + 0.26 * k), layout="constrained", dpi=DPI)
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
    fig.suptitle(f"Vocabulary tokens by smear coefficient (mean of {_seed_text(n_seeds)}{spread}); "
                 "␣ = leading space, ⏎ = newline", fontsize=10)
    return fig


def coefficient_by_class(smear_vocab: pd.DataFrame | None = None, smear_tokens: pd.DataFrame | None = None) -> Figure:
    """Effective coefficient by token class (word start, continuation, punctuation, digits, …)."""
    sources = [(t, stats.final_rows(d[d["arm"] == "smear"])) for t, d in
               (("over the vocabulary (each token once, all seeds)", smear_vocab),
                ("over data (token occurrences, all seeds)", smear_tokens)) if d is not None and len(d)]
    sources = [(t, d) for t, d in sources if len(d)]
    if not sources:
        raise AnalysisError("no smear_vocab or smear_tokens table (coefficients by token)")
    fig = Figure(figsize=(5.2 * len(sources) + 0.8, 4.0), layout="constrained", dpi=DPI)
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
    fig.suptitle(f"Smear coefficient by token class — preset {_preset(sources[0][1])}", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# (h)–(i) freed heads


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


def freed_head_profiles(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """At the baseline's previous-token places: each metric in both arms (bars: seed mean, dots: seeds)."""
    _need(heads, "heads table")
    places, note = _freed_places(heads, threshold)
    metrics = [m for m in PROFILE_METRICS if (heads["metric"] == m).any()]
    final = stats.final_rows(heads[heads["metric"].isin(metrics)])
    n_base = heads.loc[heads["arm"] == "baseline", "seed"].nunique()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(max(3.2, 0.9 * len(places) + 1.6) * cols, 3.0 * rows + 1.0), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    x = np.arange(len(places))
    keys = {(l, h) for l, h, _ in places}
    arms = _arms(final)
    w = 0.76 / len(arms)  # two arms: bars 0.36 wide, 0.38 apart
    for ax, metric in zip(axes, metrics):
        m = final[final["metric"] == metric]
        for i, arm in enumerate(arms):
            a = m[m["arm"] == arm]
            if a.empty:
                continue
            off = (i - (len(arms) - 1) / 2) * w
            means = [a.loc[(a["layer"] == l) & (a["head"] == h), "value"].mean() for l, h, _ in places]
            ax.bar(x + off, means, width=w - 0.02, color=ARM_COLORS[arm], alpha=0.85, label=ARM_LABELS[arm])
            for j, (l, h, _) in enumerate(places):
                v = a.loc[(a["layer"] == l) & (a["head"] == h), "value"].to_numpy()
                ax.scatter(np.full(len(v), x[j] + off), v, s=10, color="black", zorder=3, lw=0)
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
    handles = [Patch(color=ARM_COLORS[a], label=ARM_LABELS[a]) for a in arms]
    handles += [Line2D([], [], marker="o", ls="", color="black", ms=3, label="one seed"),
                Line2D([], [], ls=":", color="#555", label="mean of all other heads (arm colour)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    fig.suptitle(f"What the baseline's previous-token heads (score ≥ {threshold:g}) do in each arm, final step"
                 f"{note}\nx: layer/head, and in how many baseline seeds it is a previous-token head", fontsize=10)
    return fig


MAX_BAR_HEADS = 24  # past this many heads the ablation bars get too thin: draw layer × head grids instead


def ablation_by_head(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """Per-head loss increase when the head is ablated, both arms; baseline previous-token places marked."""
    _need(heads, "heads table")
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
    arms = _arms(final)
    w = 0.76 / len(arms)
    fig = Figure(figsize=(max(6.0, 0.5 * len(places) + 2), 2.8 * len(metrics) + 1.0), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(len(metrics), 1, sharex=True, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics):
        m = final[final["metric"] == metric]
        for j, p in enumerate(places):
            if p in prev:
                ax.axvspan(j - 0.5, j + 0.5, color="#fff0b3", zorder=0)
        for i, arm in enumerate(arms):
            a = m[m["arm"] == arm]
            if a.empty:
                continue
            off = (i - (len(arms) - 1) / 2) * w
            means = a.groupby(["layer", "head"])["value"].mean()
            ax.bar(x + off, [means.get(p, np.nan) for p in places], width=w - 0.02, color=ARM_COLORS[arm], alpha=0.85)
            for j, p in enumerate(places):
                v = a.loc[(a["layer"] == p[0]) & (a["head"] == p[1]), "value"].to_numpy()
                ax.scatter(np.full(len(v), x[j] + off), v, s=9, color="black", zorder=3, lw=0)
        ax.axhline(0, color="#555", lw=0.8)
        name, unit = METRIC_LABELS[metric]
        ax.set_ylabel(f"{name}\n({unit})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [f"L{l}H{h}" for l, h in places], rotation=90 if len(places) > 16 else 0, fontsize=8)
    axes[-1].set_xlabel("layer / head")
    handles = [Patch(color=ARM_COLORS[a], label=f"{ARM_LABELS[a]} (bar: seed mean)") for a in arms]
    handles += [Line2D([], [], marker="o", ls="", color="black", ms=3, label="one seed"),
                Patch(color="#fff0b3", label=f"previous-token head in a baseline seed (≥ {threshold:g})")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(f"Loss increase when one head is ablated, final step — preset {_preset(final)}", fontsize=11)
    return fig


def _ablation_grids(final: pd.DataFrame, metrics: list[str], prev: set[tuple[int, int]], threshold: float) -> Figure:
    """Many heads: one layer × head grid per arm and ablation kind, one colour scale per kind."""
    n_l, n_h = _layout(final)
    present = set(final["layer"].astype(int))
    arms = _arms(final)
    fig = Figure(figsize=_grid_size(n_l, n_h, len(arms), len(metrics)), layout="constrained", dpi=DPI)
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
                _head_grid(ax, pd.Series(dtype=float), n_l, n_h, set(), cmap, norm, "")
                _no_runs(ax, arm)
                continue
            _head_grid(ax, means[arm], n_l, n_h, present, cmap, norm, "{:.3f}", prev)
            ax.set_title(f"{ARM_LABELS[arm]}: {name}", fontsize=10)
            ax.set_ylabel("layer")
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(row), label=f"{name}\n({unit})", shrink=0.9)
    fig.legend(handles=[Patch(facecolor="none", edgecolor="#d62728", lw=2,
                              label=f"previous-token head in a baseline seed (≥ {threshold:g})")],
               loc="outside lower center", fontsize=8, frameon=False)
    fig.suptitle(f"Loss increase when one head is ablated (seed mean), final step — preset {_preset(final)}",
                 fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# (j) inspect: precomputed patterns and coefficients for one text


def _check_patterns(patterns: Sequence[np.ndarray | None], tokens: Sequence[str]) -> tuple[int, int, int]:
    present = [np.asarray(p) for p in patterns if p is not None]
    if not present:
        raise AnalysisError("no attention patterns (every layer is None)")
    n_h, t1, t2 = present[0].shape
    if t1 != t2 or t1 != len(tokens) or any(p.shape != (n_h, t1, t2) for p in present):
        raise AnalysisError(f"attention patterns must be (heads, T, T) per layer with T = {len(tokens)} tokens; "
                            f"got {[tuple(p.shape) for p in present][:3]}")
    return len(patterns), n_h, t1


def _token_ticks(ax, tokens: Sequence[str], axis: str) -> None:
    n = len(tokens)
    step = max(1, math.ceil(n / 48))  # past ~48 labels they overlap: label every k-th
    idx = list(range(0, n, step))
    labels = [display_token(tokens[i], 10) for i in idx]
    if axis == "x":
        ax.set_xticks(idx, labels, rotation=90, fontsize=7, family="monospace")
    else:
        ax.set_yticks(idx, labels, fontsize=7, family="monospace")


def attention_grid(patterns: Sequence[np.ndarray | None], tokens: Sequence[str], title: str = "") -> Figure:
    """Every head's attention pattern on one text: rows layers, columns heads; no-attention layers marked."""
    n_l, n_h, n_t = _check_patterns(patterns, tokens)
    fig = Figure(figsize=(1.9 * n_h + 1.4, 1.75 * n_l + 0.9), layout="constrained", dpi=DPI)
    axes = fig.subplots(n_l, n_h, squeeze=False)
    for layer, p in enumerate(patterns):
        for head in range(n_h):
            ax = axes[layer, head]
            ax.set_xticks([])
            ax.set_yticks([])
            if p is None:
                ax.set_facecolor(ABSENT_COLOR)
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="///",
                                       edgecolor="#8c8c8c", lw=0))
                ax.text(0.5, 0.5, "no attention", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            else:
                a = np.asarray(p)[head]
                ax.imshow(a, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
                prev = float(np.mean(np.diagonal(a, offset=-1))) if n_t > 1 else float("nan")
                ax.text(0.98, 0.04, f"prev {prev:.2f}", ha="right", va="bottom", fontsize=7, color="white",
                        transform=ax.transAxes)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    sm = ScalarMappable(norm=Normalize(0, 1), cmap="viridis")
    fig.colorbar(sm, ax=axes, label="attention weight (rows: query, columns: key)", shrink=0.6)
    fig.suptitle(title or f"Attention patterns on {n_t} tokens", fontsize=11)
    return fig


def attention_head(patterns_by_arm: Mapping[str, Sequence[np.ndarray | None]], tokens: Sequence[str],
                   layer: int, head: int) -> Figure:
    """One head's attention pattern on one text, for each arm side by side, on one 0–1 scale."""
    if not patterns_by_arm:
        raise AnalysisError("no attention patterns to draw")
    arms = [a for a in ARMS if a in patterns_by_arm] + [a for a in patterns_by_arm if a not in ARMS]
    n_t = len(tokens)
    side = min(7.0, 2.5 + 0.13 * n_t)
    fig = Figure(figsize=(side * len(arms) + 1.2, side + 0.6), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(arms), squeeze=False)).ravel()
    for ax, arm in zip(axes, arms):
        patterns = patterns_by_arm[arm]
        n_l, n_h, _ = _check_patterns(patterns, tokens)
        if not (0 <= layer < n_l and 0 <= head < n_h):
            raise AnalysisError(f"layer {layer}, head {head} is outside the model ({n_l} layers × {n_h} heads)")
        label = ARM_LABELS.get(arm, arm)
        if patterns[layer] is None:
            ax.set_facecolor(ABSENT_COLOR)
            ax.text(0.5, 0.5, f"layer {layer} has no attention", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label, fontsize=10)
            continue
        a = np.asarray(patterns[layer])[head]
        ax.imshow(a, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        prev = float(np.mean(np.diagonal(a, offset=-1))) if n_t > 1 else float("nan")
        ax.set_title(f"{label}: layer {layer}, head {head}\nprevious-token score on this text {prev:.2f}", fontsize=10)
        _token_ticks(ax, tokens, "x")
        _token_ticks(ax, tokens, "y")
        ax.set_xlabel("key (attended-to) token")
        ax.set_ylabel("query token")
    sm = ScalarMappable(norm=Normalize(0, 1), cmap="viridis")
    fig.colorbar(sm, ax=list(axes), label="attention weight", shrink=0.8)
    return fig


def coefficients_over_text(tokens: Sequence[str], coefficients_by_arm: Mapping[str, np.ndarray | None],
                           width: int = 72) -> Figure:
    """The text itself, each token boxed and shaded by its smear coefficient; one block per smear arm.

    Arms given None (no smear) are named in the title instead of drawing an uncoloured copy of the text.
    """
    if not len(tokens):
        raise AnalysisError("no tokens to draw")
    drawn = {a: np.asarray(c, float) for a, c in coefficients_by_arm.items() if c is not None}
    if not drawn:
        raise AnalysisError("no smear coefficients: none of these models has a smear")
    for c in drawn.values():
        if c.shape != (len(tokens),):
            raise AnalysisError(f"coefficients must have one value per token ({len(tokens)}); got shape {c.shape}")
    vmax = max([float(np.nanmax(c)) for c in drawn.values() if np.isfinite(c).any()] + [1e-6])
    norm = Normalize(0, vmax)
    cmap = matplotlib.colormaps["Oranges"]

    # Lay the tokens out as text in character cells: wrap at `width`, break after newlines.
    cells, x, line = [], 0, 0
    for i, tok in enumerate(tokens):
        shown = tok.replace("\n", "⏎").replace("\t", "→") or "∅"
        if x + len(shown) > width and x > 0:
            x, line = 0, line + 1
        cells.append((i, x, line, shown))
        x += len(shown)
        if "\n" in tok:
            x, line = 0, line + 1
    n_lines = line + 1
    font = 9.5
    char_in = 0.6 * font / 72  # DejaVu Sans Mono advances 0.6 em per character
    fig_w = max(7.5, char_in * width + 0.4)  # titles need ~7.5 in; the text keeps its character grid
    fig = Figure(figsize=(fig_w, len(drawn) * (0.2 * n_lines + 0.45) + 1.4), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(len(drawn), 1, squeeze=False)).ravel()
    for ax, (arm, coef) in zip(axes, drawn.items()):
        ax.set_xlim(0, (fig_w - 0.4) / char_in)
        ax.set_ylim(n_lines, 0)
        ax.axis("off")
        ax.set_title(f"{ARM_LABELS.get(arm, arm)}: mean coefficient {np.nanmean(coef):.3f}, "
                     f"max {np.nanmax(coef):.3f}", fontsize=9, loc="left")
        for i, cx, cy, shown in cells:
            c = coef[i]
            level = norm(c) if np.isfinite(c) else 0.0
            face = cmap(level) if np.isfinite(c) else "#f2f2f2"
            ax.add_patch(Rectangle((cx, cy + 0.06), len(shown), 0.88, facecolor=face, edgecolor="white", lw=0.8))
            ax.text(cx + len(shown) / 2, cy + 0.5, shown, ha="center", va="center", family="monospace",
                    fontsize=font, color="white" if level > 0.6 else "black")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), location="bottom", shrink=0.6, aspect=40,
                 label="smear coefficient λ·σ(w·e): share of the previous token's embedding added")
    absent = [ARM_LABELS.get(a, a) for a, c in coefficients_by_arm.items() if c is None]
    fig.suptitle("Smear coefficient of each token, over the text"
                 + (f"\n({', '.join(absent)}: no smear, coefficient 0)" if absent else ""), fontsize=10)
    return fig


def inspect_arrays(result: Any) -> tuple[list[np.ndarray | None], list[str], np.ndarray | None]:
    """(patterns, tokens, coefficients) from `analysis.inspect.inspect_text`'s result (mapping or object).

    patterns: per layer (heads, T, T) or None where the layer has no attention; tokens: T decoded
    strings; coefficients: T smear coefficients, or None for a model without smear.
    """
    get = (lambda k: result.get(k)) if isinstance(result, Mapping) else (lambda k: getattr(result, k, None))
    patterns, tokens, coef = get("patterns"), get("tokens"), get("coefficients")
    if patterns is None or tokens is None:
        raise AnalysisError("inspect_text returned no 'patterns' or 'tokens'")
    patterns = [None if p is None else np.asarray(p, dtype=float) for p in patterns]
    return patterns, [str(t) for t in tokens], None if coef is None else np.asarray(coef, dtype=float).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Saving, the figure registry, notebook helpers


def save(fig: Figure, folder: str | Path, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write `name.png` and `name.svg` into `folder`, each to a temporary file renamed into place."""
    out = []
    for fmt in formats:
        path = Path(folder) / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        out.append(path)
    return out


@dataclass(frozen=True)
class FigureSpec:
    title: str
    caption: str
    draw: Callable[[Tables, float], Figure]


FIGURES: dict[str, FigureSpec] = {
    "prev_token_heatmaps": FigureSpec(
        "Previous-token score per head",
        "Seed-mean previous-token score of each head at the final step; outlined: previous-token heads; "
        "hatched: layers without attention.",
        lambda t, th: prev_token_heatmaps(t.heads, th)),
    "prev_heads_vs_threshold": FigureSpec(
        "Previous-token heads across thresholds",
        "Previous-token heads per run at thresholds 0.2–0.8 (line: mean over seeds, band: min–max).",
        lambda t, th: prev_heads_vs_threshold(t.heads, threshold=th)),
    "prev_mass_over_training": FigureSpec(
        "Previous-token mass over training",
        "Sum of previous-token scores over all heads, per arm (line: mean over seeds, band: min–max; "
        "dotted: the attention windows grow).",
        lambda t, th: prev_mass_over_training(t.heads, t.get("record_heads"), stats.window_growth_tokens(t.configs))),
    "smear_lambda": FigureSpec(
        "Smear λ over training",
        "The learned smear scale λ per seed, and the effective coefficient on data (mean, 5–95% band).",
        lambda t, th: smear_lambda(t.get("smear"), t.get("record_smear"))),
    "coefficient_histogram": FigureSpec(
        "Smear coefficient on data",
        "Distribution of the effective coefficient λ·σ(w·e) over token positions of held-out text.",
        lambda t, th: coefficient_histogram(t.get("smear_tokens"))),
    "vocab_extremes": FigureSpec(
        "Tokens that smear most and least",
        "Vocabulary tokens with the lowest and highest effective coefficient (mean over seeds).",
        lambda t, th: vocab_extremes(t.get("smear_vocab"))),
    "coefficient_by_class": FigureSpec(
        "Smear coefficient by token class",
        "Effective coefficient by class of the receiving token (word start = leading space).",
        lambda t, th: coefficient_by_class(t.get("smear_vocab"), t.get("smear_tokens"))),
    "freed_head_profiles": FigureSpec(
        "What the freed heads do",
        "At the places of the baseline's previous-token heads: each metric in both arms (bars: seed mean, "
        "dots: seeds, dotted: mean of the other heads).",
        lambda t, th: freed_head_profiles(t.heads, th)),
    "ablation_by_head": FigureSpec(
        "Per-head ablation loss",
        "Loss increase when each head is ablated, both arms; shaded: baseline previous-token heads.",
        lambda t, th: ablation_by_head(t.heads, th)),
}
NOTEBOOK_FIGURES = {
    "01_previous_token_heads": ["prev_token_heatmaps", "prev_heads_vs_threshold", "prev_mass_over_training"],
    "02_smear_gate": ["smear_lambda", "coefficient_histogram", "vocab_extremes", "coefficient_by_class"],
    "03_freed_heads": ["freed_head_profiles", "ablation_by_head"],
}


def draw_figure(name: str, tables: Tables, threshold: float = DEFAULT_THRESHOLD) -> Figure:
    if name not in FIGURES:
        raise AnalysisError(f"unknown figure {name!r}; choose one of: {', '.join(FIGURES)}")
    return FIGURES[name].draw(tables, threshold)


def draw_all(tables: Tables, folder: str | Path, threshold: float = DEFAULT_THRESHOLD,
             names: Sequence[str] | None = None, formats: Sequence[str] = ("png", "svg")) -> dict[str, Path | str]:
    """Draw and save each figure; value: the first file written (PNG by default), or why the figure is absent."""
    out: dict[str, Path | str] = {}
    for name in names or FIGURES:
        try:
            out[name] = save(draw_figure(name, tables, threshold), folder, name, formats)[0]
        except SmearlensError as e:
            out[name] = str(e)
    return out


def display_markdown(text: str) -> None:
    """Markdown in a notebook, plain text elsewhere."""
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:
        print(text)


def notebook_tables(tables_dir: str | Path, preset: str | None = None,
                    runs_dir: str | Path | None = None) -> Tables | None:
    """Load and check the tables for a notebook; show what limits the analysis, or why there is none."""
    try:
        tables = stats.load_tables(tables_dir, runs_dir=runs_dir, preset=preset)
    except SmearlensError as e:
        display_markdown(f"**No analysis possible:** {e}.")
        return None
    runs = tables.heads.drop_duplicates("run")
    lines = [f"Preset **{tables.preset}**, tables from `{tables_dir}`: "
             + "; ".join(f"{arm}: {_seed_text(len(tables.seeds(arm)))}" for arm in _arms(tables.heads))
             + f" ({len(runs)} run{'s' if len(runs) != 1 else ''})."]
    lines += [f"- **Note:** {n}" for n in tables.notes]
    display_markdown("\n".join(lines))
    return tables


def _show(title: str, make: Callable[[], Figure], figures_dir: str | Path, name: str) -> Path | None:
    """Draw, save and display one figure, or show why it is absent."""
    try:
        png = save(make(), figures_dir, name)[0]
    except SmearlensError as e:
        display_markdown(f"**{title}: not drawn** — {e}.")
        return None
    try:
        from IPython.display import Image, display

        display(Image(filename=str(png)))
    except ImportError:
        print(f"saved {png}")
    return png


def show(name: str, tables: Tables | None, figures_dir: str | Path,
         threshold: float = DEFAULT_THRESHOLD) -> Path | None:
    """Notebook cell body: draw a figure, save it into figures_dir and display it, or say why not."""
    title = FIGURES[name].title if name in FIGURES else name
    if tables is None:
        display_markdown(f"*{title}: not drawn (no tables, see above).*")
        return None
    return _show(title, lambda: draw_figure(name, tables, threshold), figures_dir, name)


def pick_runs(checkpoints: str | Path, preset: str | None = None, seed: int | None = None) -> dict[str, Path]:
    """One run folder per arm to inspect: `seed`'s, else the lowest seed that has both arms."""
    root = Path(checkpoints)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such checkpoints folder")
    found = []
    for manifest in sorted(root.glob("*/run.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a half-written run folder is not a candidate
        if preset is None or m.get("preset") == preset:
            found.append((m.get("preset"), m.get("arm"), m.get("seed"), manifest.parent))
    if not found:
        raise AnalysisError(f"{root}: no run folders with a run.json" + (f" of preset {preset!r}" if preset else ""))
    presets = sorted({str(p) for p, *_ in found})
    if len(presets) > 1:
        raise AnalysisError(f"{root} holds runs of several presets ({', '.join(presets)}): choose one with preset=…")
    by_seed: dict[int, dict[str, Path]] = {}
    for _, arm, s, path in found:
        by_seed.setdefault(s, {})[arm] = path
    if seed is not None:
        if seed not in by_seed:
            raise AnalysisError(f"no run of seed {seed} in {root} (seeds: {', '.join(map(str, sorted(by_seed)))})")
        return by_seed[seed]
    both = [s for s in sorted(by_seed) if all(a in by_seed[s] for a in ARMS)]
    return by_seed[both[0] if both else min(by_seed)]


def notebook_inspect(checkpoints: str | Path, text: str, inspect_text: Callable | None, preset: str | None = None,
                     seed: int | None = None, load_model: Callable | None = None) -> dict[str, tuple] | None:
    """Notebook cell body: run `inspect_text` on each arm's last checkpoint; (patterns, tokens, coefficients) per arm."""
    if inspect_text is None:
        return None  # the import cell said why
    try:
        runs = pick_runs(checkpoints, preset, seed)
        if load_model is None:  # torch: imported only when there is a model to load
            from analysis.loading import load_checkpoint_model as load_model  # attaches the run's tokenizer
        out = {}
        for arm in ARMS:
            if arm not in runs:
                display_markdown(f"*No {arm} run for this seed: only the other arm is shown.*")
                continue
            model, _ = load_model(runs[arm])
            out[arm] = inspect_arrays(inspect_text(model, text))
    except SmearlensError as e:
        display_markdown(f"**Inspect not possible:** {e}.")
        return None
    display_markdown("Inspecting " + "; ".join(f"{ARM_LABELS[a]}: `{runs[a]}`" for a in out) + ".")
    return out


def _best_head(patterns: Sequence[np.ndarray | None]) -> tuple[int, int]:
    best, where = -1.0, (0, 0)
    for layer, p in enumerate(patterns):
        if p is None or np.asarray(p).shape[-1] < 2:
            continue
        scores = np.diagonal(np.asarray(p), offset=-1, axis1=-2, axis2=-1).mean(-1)
        if scores.max() > best:
            best, where = float(scores.max()), (layer, int(scores.argmax()))
    return where


def show_inspect(results: Mapping[str, tuple] | None, figures_dir: str | Path, what: str = "head",
                 layer: int | None = None, head: int | None = None) -> Path | None:
    """Notebook cell body for the inspect results: what = "head" (both arms), "grid", or "coefficients".

    With no layer/head given, "head" shows the baseline's strongest previous-token head on this text.
    """
    if not results:
        display_markdown("*Nothing to draw: no inspect results (see above).*")
        return None
    tokens = next(iter(results.values()))[1]
    if any(r[1] != tokens for r in results.values()):
        display_markdown("**The arms tokenised the text differently**; the figures need one token sequence.")
        return None
    if what == "head":
        ref = results.get("baseline", next(iter(results.values())))[0]
        if layer is None or head is None:
            layer, head = _best_head(ref)
        return _show("Attention pattern", lambda: attention_head({a: r[0] for a, r in results.items()}, tokens,
                                                                 layer, head), figures_dir, "inspect_head")
    if what == "grid":
        paths = [_show(f"Attention grid ({arm})", lambda r=r, arm=arm: attention_grid(
            r[0], tokens, f"{ARM_LABELS.get(arm, arm)}: every head's attention on this text"),
            figures_dir, f"inspect_grid_{arm}") for arm, r in results.items()]
        return next((p for p in paths if p), None)
    if what == "coefficients":
        return _show("Smear coefficients over the text", lambda: coefficients_over_text(
            tokens, {a: r[2] for a, r in results.items()}), figures_dir, "inspect_coefficients")
    raise AnalysisError(f"what={what!r}: choose head, grid or coefficients")
