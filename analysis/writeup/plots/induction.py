"""The induction study's figures (analysis/stats/induction.py, figures/induction/PLAN.md): when the induction head
forms in each arm, where its key gets token j−1, what knocking out the previous-token heads or the arm's mixing
does to the copy, and what the baseline's previous-token heads became in the other arms."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.mechanism.composition import INDUCTION_THRESHOLD
from analysis.stats import induction as ind
from analysis.stats import DEFAULT_THRESHOLD
from analysis.writeup.plots.style import ARM_COLORS, arm_label, bar_offset, figure, need, preset_text
from trainer.errors import AnalysisError

ROUTE_STYLE = {"prev_heads": ("previous-token heads", "#4c72b0"),
               "mixing": ("the arm's own mixing (smear / key shift / key smear)", "#dd8452"),
               "rest": ("everything else (other heads' direct paths, interactions)", "#b0b0b0")}
CONDITION_STYLE = {"clean": ("clean", "#55a868"), "prev_heads": ("previous-token heads ablated", "#4c72b0"),
                   "smear": ("mixing knocked out", "#dd8452"), "both": ("both", "#8172b3")}
# i−1 at the bottom of the stack, so each seed's dot beside the bar lines up with that segment's top
OFFSET_STYLE = {"attn_prev": ("i−1", "#4c72b0"), "attn_self": ("i (itself)", "#dd8452"),
                "attn_prev2": ("i−2", "#64b5cd"), "attn_bos": ("BOS", "#937860"), "attn_further": ("further", "#c8c8c8")}


def _arms(df: pd.DataFrame) -> list[str]:
    """The study's order: the baseline, then its arms as the plan lists them, then any other."""
    present = set(df["arm"].astype(str))
    order = [ind.BASELINE, *ind.STUDY_ARMS]
    return [a for a in order if a in present] + sorted(present - set(order))


def _seed_dots(ax, x: float, values: np.ndarray, size: float = 12) -> None:
    ax.scatter(np.full(len(values), x), values, s=size, color="black", zorder=4, lw=0)


def _seed_handle(label: str = "one seed") -> Line2D:
    return Line2D([], [], marker="o", ls="", color="black", ms=3, label=label)


# ---- (a) formation over training ------------------------------------------------------------------------------


def formation_over_training(record_heads: pd.DataFrame | None) -> Figure:
    """Per arm (a panel each, shared axes): the highest `induction_heldout` of any head at every recorded step,
    one thin line per seed and the seeds' mean thick, the threshold dashed, each run's formation step marked
    (a cross at the right edge: never formed, censored there)."""
    curves = ind.score_over_training(record_heads)
    born = ind.formation(record_heads).merge(curves.drop_duplicates("run")[["run", "arm", "seed"]], on="run")
    arms = _arms(curves)
    cols = min(3, len(arms))
    rows = -(-len(arms) // cols)
    fig = figure(max(8.0, 4.2 * cols), 2.9 * rows + 1.1)  # 8: the legend's five entries fit one row
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    last = float(curves["step"].max())
    for ax, arm in zip(axes, arms):
        color = ARM_COLORS[arm]
        a = curves[curves["arm"] == arm]
        for _, g in a.groupby("seed"):
            ax.plot(g["step"], g["value"], color=color, lw=0.8, alpha=0.55)
        mean = a.groupby("step")["value"].mean()
        ax.plot(mean.index, mean.to_numpy(), color=color, lw=2.4)
        for r in born[born["arm"] == arm].to_dict("records"):
            g = a[a["seed"] == r["seed"]].set_index("step")["value"]
            if r["formed"]:
                ax.plot([r["formation_step"]], [g.get(r["formation_step"], INDUCTION_THRESHOLD)], "o", ms=6,
                        mfc="white", mec=color, mew=1.6, zorder=4)
            else:
                ax.plot([last], [g.iloc[-1] if len(g) else 0.0], "x", ms=8, color="black", mew=1.8, zorder=4)
        ax.axhline(INDUCTION_THRESHOLD, color="#555", ls="--", lw=0.9)
        n, formed = int(born.loc[born["arm"] == arm, "run"].nunique()), int(born.loc[born["arm"] == arm, "formed"].sum())
        ax.set_title(f"{arm_label(arm)} — formed in {formed} of {n} run{'s' if n != 1 else ''}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[len(arms):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("training step")
    for ax in axes[::cols]:
        ax.set_ylabel("best head's induction score\n(held-out lengths)")
    handles = [Line2D([], [], color="#444", lw=0.8, label="one seed"), Line2D([], [], color="#444", lw=2.4,
                                                                              label="mean over seeds"),
               Line2D([], [], marker="o", ls="", mfc="white", mec="#444", mew=1.6, label="formation step"),
               Line2D([], [], marker="x", ls="", color="black", mew=1.8, label="never formed (censored)"),
               Line2D([], [], color="#555", ls="--", lw=0.9, label=f"induction head: ≥ {INDUCTION_THRESHOLD:g}")]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    fig.suptitle(f"When the induction head forms\npreset {preset_text(record_heads)}, recorder every "
                 f"{_spacing(curves)} steps", fontsize=11)
    return fig


def _spacing(curves: pd.DataFrame) -> str:
    steps = np.sort(curves["step"].unique())
    return f"{int(np.median(np.diff(steps))):,}" if len(steps) > 1 else "—"


# ---- (b) key shares -------------------------------------------------------------------------------------------


def key_share_bars(key_shares: pd.DataFrame | None) -> Figure:
    """Per arm, a stacked bar of the mean shares of the strongest induction head's token j−1 through the
    previous-token heads, the arm's own mixing and the rest (they add up to 1); beside it, each seed's share
    through each route as a dot in that route's colour (unstacked)."""
    shares = ind.route_shares(key_shares)
    if shares.empty:
        raise AnalysisError("no run has an induction head at its final checkpoint: no key shares to draw")
    arms = _arms(shares)
    fig = figure(max(8.5, 1.5 * len(arms) + 2.5), 4.8)  # 8.5: the legend's longest entries fit
    ax = fig.subplots()
    x = np.arange(len(arms))
    for j, arm in enumerate(arms):
        a = shares[shares["arm"] == arm]
        bottom = 0.0
        for route, (_, color) in ROUTE_STYLE.items():
            mean = float(a[route].mean())
            ax.bar(x[j] - 0.12, mean, bottom=bottom, width=0.42, color=color, edgecolor="white", lw=0.6)
            bottom += mean
        for k, (route, (_, color)) in enumerate(ROUTE_STYLE.items()):
            v = a[route].dropna().to_numpy(float)
            ax.scatter(np.full(len(v), x[j] + 0.16 + 0.07 * k), v, s=16, color=color, edgecolor="black", lw=0.5,
                       zorder=3)
    n_runs = key_shares.drop_duplicates("run").groupby("arm").size()
    ax.set_xticks(x, [f"{arm_label(a)}\n{int((shares['arm'] == a).sum())} of {int(n_runs.get(a, 0))} runs"
                      for a in arms], fontsize=8)
    ax.set_xlim(-0.5, len(arms) - 0.5)
    ax.axhline(0, color="#555", lw=0.8)
    ax.axhline(1, color="#555", lw=0.5, ls=":")
    ax.set_ylabel("share of the drop in the induction head's logit\nwhen token j−1 is resampled")
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=c, label=l) for l, c in ROUTE_STYLE.values()]
    handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec="black", ms=4,
                          label="one seed's share through the route (dot colour), unstacked"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(f"Where the induction head's key gets token j−1\nfinal checkpoints, preset {preset_text(key_shares)}; "
                 "under each arm: its runs with an induction head", fontsize=10)
    return fig


# ---- (c) knock-outs -------------------------------------------------------------------------------------------


def knockout_copy_losses(knockouts: pd.DataFrame | None) -> Figure:
    """Per arm, the loss on the second copy clean, with the previous-token heads ablated, with the arm's mixing
    knocked out and both (bars: seed mean, dots: seeds); the first copy's clean loss dotted, the level of a
    token that cannot be predicted. An arm without mixing has no knock-out of it to draw."""
    losses = ind.copy_losses(knockouts)
    if losses.empty:
        raise AnalysisError("the induction_knockouts table has no copy_loss_second rows")
    arms = _arms(losses)
    conditions = list(CONDITION_STYLE)
    fig = figure(max(8.0, 1.9 * len(arms) + 2.0), 4.6)
    ax = fig.subplots()
    x = np.arange(len(arms))
    for j, arm in enumerate(arms):
        a = losses[losses["arm"] == arm]
        mixing = bool(a["has_mixing"].any())
        for i, condition in enumerate(conditions):
            off, width = bar_offset(i, len(conditions))
            v = a.loc[a["condition"] == condition, "value"].to_numpy(float)
            if not len(v) or (condition in ("smear", "both") and not mixing):
                continue  # the baseline's "mixing knocked out" is the clean model itself
            ax.bar(x[j] + off, v.mean(), width=width, color=CONDITION_STYLE[condition][1], alpha=0.9)
            _seed_dots(ax, x[j] + off, v, 10)
        if not mixing:
            ax.text(x[j] + 0.19, 0.15, "no mixing\nto knock out", ha="center", va="bottom", fontsize=7, color="#555")
    first = losses.loc[losses["condition"] == "first_copy", "value"]
    if len(first):
        ax.axhline(float(first.mean()), color="#555", ls=":", lw=1.2)
    ax.set_xticks(x, [arm_label(a) for a in arms], fontsize=9)
    ax.set_xlim(-0.5, len(arms) - 0.5)  # every arm's slot whole, where bars are left out too
    ax.set_ylabel("loss on the second copy (nats/token)")
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=c, label=l) for l, c in CONDITION_STYLE.values()] + [_seed_handle()]
    if len(first):
        handles.append(Line2D([], [], color="#555", ls=":", lw=1.2, label="first copy, clean (unpredictable)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle("The copy under knock-outs: previous-token heads ablated, the arm's mixing removed, or both\n"
                 f"repeated random sequences, final checkpoints, preset {preset_text(knockouts)}", fontsize=10)
    return fig


# ---- (d) what the baseline's previous-token heads became --------------------------------------------------------


def freed_head_offsets(heads: pd.DataFrame | None, roles: pd.DataFrame | None,
                       threshold: float = DEFAULT_THRESHOLD) -> Figure:
    """At the places (layer, head) of the baseline's previous-token heads of each seed, per arm: the mean
    attention of a text query on i−1, itself, i−2, the BOS and further keys (stacked, they add up to 1), and the
    place's induction and duplicate-token scores (bars: seed mean, dots: seeds)."""
    per = ind.freed_roles(need(heads, "heads table"), roles, threshold)
    arms = _arms(per)
    fig = figure(max(9.0, 2.2 * len(arms) + 3.0), 4.6)
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    x = np.arange(len(arms))
    for j, arm in enumerate(arms):
        a = per[per["arm"] == arm]
        bottom = 0.0
        for metric, (_, color) in OFFSET_STYLE.items():
            mean = float(a.loc[a["metric"] == metric, "value"].mean())
            left.bar(x[j], mean, bottom=bottom, width=0.6, color=color, edgecolor="white", lw=0.6)
            bottom += mean
        prev = a.loc[a["metric"] == "attn_prev", "value"].to_numpy(float)
        _seed_dots(left, x[j] + 0.36, prev, 12)
        for i, metric in enumerate(("induction", "duplicate_token")):
            off, width = bar_offset(i, 2)
            v = a.loc[a["metric"] == metric, "value"].to_numpy(float)
            right.bar(x[j] + off, v.mean(), width=width, color=("#c44e52", "#8172b3")[i], alpha=0.9)
            _seed_dots(right, x[j] + off, v, 10)
    runs = per.drop_duplicates(["arm", "seed"])
    places, seeds = runs.groupby("arm")["n_places"].sum(), runs.groupby("arm").size()
    labels = [f"{arm_label(a)}\n{int(places.get(a, 0))} place{'s' if places.get(a, 0) != 1 else ''} in "
              f"{int(seeds.get(a, 0))} seed{'s' if seeds.get(a, 0) != 1 else ''}" for a in arms]
    left.set_xticks(x, labels, fontsize=8)
    right.set_xticks(x, [arm_label(a) for a in arms], fontsize=8)
    left.set_ylabel("attention of a text query, by key (0–1)")
    left.set_title("where the query at i looks (stacked); dots: each seed's i−1", fontsize=9)
    right.set_ylabel("score (0–1)")
    right.set_title("induction and duplicate-token scores", fontsize=9)
    for ax in (left, right):
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0, color="#555", lw=0.8)
    right.axhline(INDUCTION_THRESHOLD, color="#555", ls="--", lw=0.9)
    right.set_ylim(0, 1)  # scores are 0–1: one scale whatever the arms reach
    handles = [Patch(color=c, label=f"attention on {l}") for l, c in OFFSET_STYLE.values()]
    handles += [Patch(color="#c44e52", label="induction score"), Patch(color="#8172b3", label="duplicate-token score"),
                _seed_handle(), Line2D([], [], color="#555", ls="--", lw=0.9,
                                       label=f"induction head: ≥ {INDUCTION_THRESHOLD:g}")]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    fig.suptitle(f"What the baseline's previous-token heads (≥ {threshold:g}) became in each arm\nthe same places "
                 f"in the same seed, final checkpoints, preset {preset_text(roles)}", fontsize=10)
    return fig


__all__ = ["formation_over_training", "key_share_bars", "knockout_copy_losses", "freed_head_offsets"]
