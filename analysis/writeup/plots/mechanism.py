"""Figures (j)–(n): where the previous token travels — path shares (smear / rest / leftover, by gate),
per-head edge shares, attention on i, i−1, i−2 and BOS, read-out by layer, and knock-outs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.stats import mechanism_stats as ms
from analysis.writeup.plots.freed import MAX_BAR_HEADS
from analysis.writeup.plots.style import (ABSENT_COLOR, ARM_COLORS, ARM_LABELS, arms_in, bar_offset, figure, grid_size, head_grid,
                                  layout, need, no_runs, preset_text, seed_text)
from analysis.stats import final_rows
from trainer.errors import AnalysisError

GATE_TITLES = {"all": "every position", "open": "gate open (c > λ/2)", "closed": "gate closed (c ≤ λ/2)"}
PATH_LABELS = {"smear": "smear", "rest": "rest\n(attention, MLPs…)", "leftover": "leftover\n(interaction)"}
TARGET_TITLES = {"prev": "token i−1", "curr": "token i (control)", "prev2": "token i−2 (control)"}
KEY_LABELS = {"i": "i (itself)", "i-1": "i−1", "i-2": "i−2", "bos": "BOS"}
OFFSET_METRICS = {"mass": "attention", "written": "written: gate × attention × ‖W_O v‖"}
# shares can be slightly negative: 0 is white, blue below, red above
EDGE_CMAP = LinearSegmentedColormap.from_list("edge_share", ["#2166ac", "#f7f7f7", "#b2182b"]).with_extremes(
    bad=ABSENT_COLOR)


def _seed_handle() -> Line2D:
    return Line2D([], [], marker="o", ls="", color="black", ms=3, label="one seed")


def _arm_legend(fig: Figure, arms: list[str], ncols: int = 5) -> None:
    handles = [Patch(color=ARM_COLORS[a], label=ARM_LABELS[a]) for a in arms] + [_seed_handle()]
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def _bars(ax, values: dict[str, pd.Series], arms: list[str], x: np.ndarray, cats: list) -> None:
    """Per arm, a bar per category (seed mean) and a dot per seed; values[arm]: index = category, one row per seed."""
    for i, arm in enumerate(arms):
        v = values.get(arm)
        if v is None or v.empty:
            continue
        off, width = bar_offset(i, len(arms))
        for j, cat in enumerate(cats):
            if cat not in v.index:
                continue
            seeds = np.atleast_1d(v.loc[[cat]].to_numpy(float))
            ax.bar(x[j] + off, seeds.mean(), width=width, color=ARM_COLORS[arm], alpha=0.85)
            ax.scatter(np.full(len(seeds), x[j] + off), seeds, s=10, color="black", zorder=3, lw=0)
    ax.axhline(0, color="#555", lw=0.8)
    ax.grid(axis="y", alpha=0.3)


# ---------------------------------------------------------------------------------------------
# (j) path shares


def path_shares(paths: pd.DataFrame | None, offset: int = 1) -> Figure:
    """Share of token i−offset's effect on the prediction at i through the smear, the rest and their
    interaction, per arm (bars: seed mean, dots: seeds), for every position and by the smear gate."""
    tidy = ms.path_shares(paths, offset)
    tidy = tidy[tidy["path"].isin(ms.PATHS)]
    arms = arms_in(tidy)
    fig = figure(11.5, 3.8)
    axes = fig.subplots(1, len(ms.GATES), sharey=True)
    x = np.arange(len(ms.PATHS))
    for ax, gate in zip(axes, ms.GATES):
        g = tidy[tidy["gate"] == gate]
        values = {arm: a.set_index("path")["value"] for arm, a in g.groupby("arm")}
        _bars(ax, values, arms, x, list(ms.PATHS))
        n = g.drop_duplicates("run")["n"]
        span = f"{int(n.min())}" if len(n) and n.min() == n.max() else f"{int(n.min())}–{int(n.max())}" if len(n) else ""
        where = f"{span} positions a run" if len(n) else "no positions"
        absent = [a for a in arms if a not in values]
        listed = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        ax.set_title(f"{GATE_TITLES[gate]}\n{where}" + (f"\nno {listed}" if absent and len(n) else ""), fontsize=9)
        ax.set_xticks(x, [PATH_LABELS[p] for p in ms.PATHS], fontsize=8)
    axes[0].set_ylabel(f"share of token i−{offset}'s effect\n(Fisher-linear; the three add up to 1)")
    _arm_legend(fig, arms)
    fig.suptitle(f"Where token i−{offset}'s effect on the next-token prediction goes, final checkpoints "
                 f"({preset_text(tidy)})", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# (k) edge shares per head


def _edge_rows(paths: pd.DataFrame) -> list[tuple[int, int, str]]:
    """(offset, source, title) of each row of edge heatmaps that the table holds."""
    rows = [(1, 1, "token i−1, read at i−1"), (2, 2, "token i−2, read at i−2")]
    have = set(zip(paths["offset"], paths["source"]))
    return [r for r in rows if (r[0], r[1]) in have]


def edge_shares(paths: pd.DataFrame | None) -> Figure:
    """Layer × head: the share of token i−1's (top row) and i−2's (bottom row) effect that flows through
    each head reading that position (key and value patched), per arm, seed mean."""
    paths = need(paths, "paths table")
    heads = paths[paths["path"] == "head"]
    rows = _edge_rows(heads)
    if not rows:
        raise AnalysisError("no head edges in the paths table")
    tables = {(o, s): ms.edge_shares(paths, o, s) for o, s, _ in rows}
    both = pd.concat(tables.values())
    n_l, n_h = layout(both)
    present = set(both["layer"].astype(int))
    arms = arms_in(both)
    top = max(0.05, float(np.nanmax(np.abs(both["mean"]))))
    norm = Normalize(-top, top)
    width, height = grid_size(n_l, n_h, len(arms), len(rows))
    fig = figure(width, height + 0.4)
    axes = np.atleast_2d(fig.subplots(len(rows), len(arms), sharey=True, squeeze=False))
    for r, (o, s, title) in enumerate(rows):
        t = tables[(o, s)]
        for c, arm in enumerate(arms):
            ax = axes[r, c]
            g = t[t["arm"] == arm]
            if g.empty:
                head_grid(ax, pd.Series(dtype=float), n_l, n_h, set(), EDGE_CMAP, norm, "")
                no_runs(ax, arm)
                continue
            head_grid(ax, g.set_index(["layer", "head"])["mean"], n_l, n_h, present, EDGE_CMAP, norm, "{:.2f}")
            ax.set_title(f"{ARM_LABELS[arm]}: {title}\nmean of {seed_text(int(g['n_seeds'].max()))}; "
                         f"all heads {g['mean'].sum():.2f}", fontsize=9)
        axes[r, 0].set_ylabel("layer")
        fig.colorbar(ScalarMappable(norm=norm, cmap=EDGE_CMAP), ax=list(axes[r]), shrink=0.9,
                     label="share of the effect")
    fig.suptitle(f"Which heads carry the earlier tokens to the prediction at i ({preset_text(heads)}; "
                 "hatched: no attention)", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# (l) attention on i, i−1, i−2 and BOS


def offset_attention(offsets: pd.DataFrame | None, gate: str = "all") -> Figure:
    """Per head: the attention of query i on i, i−1, i−2 and the BOS (top row) and the same weighted by
    what the head writes from there (bottom row), per arm (bars: seed mean, dots: seeds)."""
    offsets = need(offsets, "offsets table")
    df = final_rows(offsets[(offsets["gate"] == gate) & offsets["metric"].isin(list(OFFSET_METRICS))])
    if df.empty:
        raise AnalysisError(f"the offsets table has no gate={gate!r} rows")
    heads = sorted({(int(l), int(h)) for l, h in zip(df["layer"], df["head"])})
    if len(heads) > MAX_BAR_HEADS:  # too many bars: the heads that attend most to i−1 in any arm
        top = (df[(df["metric"] == "mass") & (df["key"] == "i-1")].groupby(["arm", "layer", "head"])["value"].mean()
               .groupby(["layer", "head"]).max().nlargest(MAX_BAR_HEADS // 2))
        heads = sorted((int(l), int(h)) for l, h in top.index)
        note = f"; the {len(heads)} heads that attend most to i−1"
    else:
        note = ""
    keep = set(heads)
    df = df[[(int(l), int(h)) in keep for l, h in zip(df["layer"], df["head"])]]
    df = df.assign(place=[f"L{int(l)}H{int(h)}" for l, h in zip(df["layer"], df["head"])])
    places = [f"L{l}H{h}" for l, h in heads]
    metrics = [m for m in OFFSET_METRICS if (df["metric"] == m).any()]
    keys = [k for k in KEY_LABELS if (df["key"] == k).any()]
    arms = arms_in(df)
    fig = figure(max(10.0, len(keys) * (0.32 * len(places) * max(1, len(arms) / 2) + 1.2)), 2.7 * len(metrics) + 1.0)
    axes = np.atleast_2d(fig.subplots(len(metrics), len(keys), squeeze=False))
    x = np.arange(len(places))
    for r, metric in enumerate(metrics):
        for c, key in enumerate(keys):
            ax = axes[r, c]
            g = df[(df["metric"] == metric) & (df["key"] == key)]
            _bars(ax, {arm: a.set_index("place")["value"] for arm, a in g.groupby("arm")}, arms, x, places)
            ax.set_xticks(x, places, fontsize=7, rotation=90 if len(places) > 8 else 0)
            if r == 0:
                ax.set_title(f"key {KEY_LABELS[key]}", fontsize=10)
        axes[r, 0].set_ylabel(OFFSET_METRICS[metric], fontsize=8)
        for ax in axes[r]:
            ax.sharey(axes[r, 0])
    _arm_legend(fig, arms)
    fig.suptitle(f"What each head's query at i reads ({GATE_TITLES.get(gate, gate)}; {preset_text(df)}{note})",
                 fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# (m) read-out by layer


def readout_by_layer(readout: pd.DataFrame | None, metric: str = "above_baseline") -> Figure:
    """Linear-probe accuracy above the backward-bigram baseline at each layer's residual input and the
    final residual, one panel per target (token i−1; controls i and i−2): each arm's seed mean as a
    line, each seed a dot."""
    readout = need(readout, "readout table")
    df = final_rows(readout[readout["metric"] == metric])
    targets = [t for t in TARGET_TITLES if (df["target"] == t).any()]
    if not targets:
        raise AnalysisError(f"the readout table has no {metric!r} rows")
    arms = arms_in(df)
    final = int(df["layer"].max())
    fig = figure(4.0 * len(targets) + 0.6, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(targets), sharey=True, squeeze=False)).ravel()
    for ax, target in zip(axes, targets):
        part = df[df["target"] == target]
        for i, arm in enumerate(arms):
            g = part[part["arm"] == arm]
            if g.empty:
                continue
            off = bar_offset(i, len(arms))[0] * 0.4  # arms side by side at each layer
            ax.scatter(g["layer"] + off, g["value"], s=12, color=ARM_COLORS[arm], alpha=0.7, lw=0)
            mean = g.groupby("layer")["value"].mean()
            ax.plot(mean.index + off, mean.to_numpy(), color=ARM_COLORS[arm], lw=2, marker="o", ms=3,
                    label=f"{ARM_LABELS[arm]} ({seed_text(g['seed'].nunique())})")
        ax.axhline(0, color="#555", lw=0.8, ls=":")
        ax.set_title(TARGET_TITLES[target], fontsize=10)
        ax.set_xlabel("residual input of layer (last: final)")
        ax.set_xticks(range(final + 1), [str(l) for l in range(final)] + ["final"])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("probe accuracy − bigram baseline" if metric == "above_baseline" else metric)
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], marker="o", ls="", color="grey", ms=3))
    labels.append("one seed (arm colour)")
    fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Where the previous token becomes linearly readable, final checkpoints ({preset_text(df)})",
                 fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# (n) knock-outs


def knockout_effects(knockouts: pd.DataFrame | None, head_ablation: str = "mean") -> Figure:
    """Loss increase when the smear term is knocked out, when the top-k previous-token heads are
    ablated, and the interaction of the two (both − heads − smear + neither), one panel per smear
    knock-out (zero, mean); per arm, bars: seed mean, dots: seeds."""
    per = ms.knockout_per_seed(knockouts, head_ablation)
    sm = per[per["effect"] == "smear"]
    smeared = {str(a) for a, v in sm.groupby("arm")["value"] if (v.abs() > 0).any()}
    ks = sorted(int(k) for k in per.loc[per["effect"] == "head", "k"].unique())
    kinds = [k for k in ("zero", "mean") if (sm["smear_ablation"] == k).any()]
    if not kinds:
        raise AnalysisError("the knockouts table has no smear knock-out rows")
    cats = ["smear"] + [f"heads {k}" for k in ks] + [f"interaction {k}" for k in ks]
    ticks = ["smear\nknocked out"] + [f"top-{k} heads\nablated" for k in ks] + [f"interaction\n(top-{k} × smear)" for k in ks]
    arms = arms_in(per)
    fig = figure(max(8.0, 2.2 * len(kinds) * len(cats) * max(1, len(arms) / 3) / 2 + 1), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True, squeeze=False)).ravel()
    x = np.arange(len(cats))
    for ax, kind in zip(axes, kinds):
        values = {}
        for arm, a in per.groupby("arm"):
            parts = [a[(a["effect"] == "head")].assign(cat=lambda d: "heads " + d["k"].astype(int).astype(str))]
            if arm in smeared:
                parts += [a[(a["effect"] == "smear") & (a["smear_ablation"] == kind)].assign(cat="smear"),
                          a[(a["effect"] == "interaction") & (a["smear_ablation"] == kind)]
                          .assign(cat=lambda d: "interaction " + d["k"].astype(int).astype(str))]
            values[arm] = pd.concat(parts).set_index("cat")["value"]
        _bars(ax, values, arms, x, cats)
        ax.set_xticks(x, ticks, fontsize=8)
        ax.set_title(f"smear knocked out by {'zero (λ = 0)' if kind == 'zero' else 'the mean embedding'}", fontsize=9)
    axes[0].set_ylabel("loss increase (nats/token)")
    _arm_legend(fig, arms)
    unsmeared = [a for a in arms if a not in smeared and (per["arm"] == a).any()]
    fig.suptitle(f"Knock-outs at inference, final checkpoints ({preset_text(per)}; heads {head_ablation}-ablated"
                 + (f"; {', '.join(unsmeared)}: no smear term" if unsmeared else "") + ")", fontsize=10)
    return fig


__all__ = ["path_shares", "edge_shares", "offset_attention", "readout_by_layer", "knockout_effects"]
