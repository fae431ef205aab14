"""The induction study's per-seed values and its primary claims (figures/induction/PLAN.md).

Per run, from the tables analyze and the recorder write at `cpu-induction` (analysis/mechanism/induction_circuit.py):

- `copy_cost_prev` (claim a): the loss on the second copy of repeated random sequences with every previous-token
  head before the best induction head mean-ablated, minus clean (`induction_knockouts`, row `PRIMARY`): how much
  induction still needs the previous-token heads.
- `formation_step` (claim b): the first recorded step at which any head's induction score (the recorder's
  `induction_heldout`, mean over the held-out lengths) reaches `INDUCTION_THRESHOLD`. A run in which none does is
  censored one record past its last step (`formed` False): a lower bound on its true step, which makes a
  paired difference smaller in size whichever arm failed, so the test stays conservative.
- `mix_share` (claim c): the share of the best induction head's token j−1 that reaches its key through the arm's
  own mixing (`key_shares`: route `smear` for the embedding arms, `key_shift`, `key_smear`); 0 for an arm without
  mixing (the baseline has no such route), NaN where the run has no induction head.

Exploratory columns beside them: the best head's score, the copy losses, the share through previous-token
heads, the number of induction heads, the stable formation step, the text validation loss.

For the report and its figures (analysis/writeup/report_induction.py): `score_over_training` (the best head's
score at every record), `route_shares` (the best induction head's key shares by prev_heads / the arm's mixing /
the rest), `copy_losses` (the second copy's loss under each knock-out) and `freed_roles` (what the baseline's
previous-token places do in every arm, one value per seed).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.mechanism.composition import INDUCTION_THRESHOLD, head_formation_steps
from analysis.mechanism.induction_circuit import PRIMARY
from analysis.stats.mechanism_stats import freed_head_roles
from analysis.stats.planned import PlannedClaim
from analysis.tables import BASELINE, Tables
from trainer.arms import arm_spec
from trainer.errors import AnalysisError

FORMATION_METRIC = "induction_heldout"
PER_SEED_COLUMNS = ["run", "preset", "arm", "seed", "step", "copy_cost_prev", "formation_step", "formed", "mix_share",
                    "best_induction", "copy_loss_second", "prev_share", "n_induction_heads", "stable_step", "val_loss"]

# The study's primary family, fixed in figures/induction/PLAN.md before its first run: each arm against the
# baseline on the three claims, Holm over all twelve. SESOIs in each measure's unit (the plan says why).
STUDY_ARMS = ("smear", "dose-0.8", "keyshift", "smeared-key")
SESOIS = {"copy_cost_prev": 1.0, "formation_step": 300.0, "mix_share": 0.1}
INDUCTION_CLAIMS: tuple[PlannedClaim, ...] = tuple(
    PlannedClaim(measure, arm, sesoi) for measure, sesoi in SESOIS.items() for arm in STUDY_ARMS)


def mixing_route(arm: str) -> str | None:
    """The `key_shares` route through which `arm`'s own previous-token mixing reaches a key (None: it has none)."""
    spec = arm_spec(arm)
    if spec.key_mix == "shift":
        return "key_shift"
    if spec.key_mix == "smear":
        return "key_smear"
    return "smear" if spec.mix is not None else None


def _final(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["step"] == df.groupby("run")["step"].transform("max")]


def _best_head_shares(shares: pd.DataFrame, heads: pd.DataFrame) -> dict[str, float]:
    """route → share of the strongest of `heads` (one run's `clean`/`induction` rows of `key_shares`)."""
    best = heads.loc[heads["value"].idxmax()]
    at = shares[(shares["layer"] == best["layer"]) & (shares["head"] == best["head"]) & (shares["metric"] == "share")]
    return dict(zip(at["route"], at["value"].astype(float)))


def formation(record_heads: pd.DataFrame, record_every: int | None = None) -> pd.DataFrame:
    """run, formation_step, formed, stable_step: when the first head of each run reaches the induction threshold
    over training. Unformed runs are censored at their last recorded step + `record_every` (default: the
    records' own spacing at the end)."""
    heads = record_heads[record_heads["metric"] == FORMATION_METRIC]
    if heads.empty:
        raise AnalysisError(f"the recorder's heads table has no {FORMATION_METRIC!r} rows: was the run recorded "
                            "with the induction measures (a preset with copy_share > 0)?")
    per_head = head_formation_steps(heads, FORMATION_METRIC, INDUCTION_THRESHOLD)
    rows = []
    for run, g in heads.groupby("run"):
        steps = sorted(g["step"].unique())
        gap = record_every or (steps[-1] - steps[-2] if len(steps) > 1 else 1)
        h = per_head[per_head["run"] == run]
        first, stable = h["first_step"].min(), h["stable_step"].min()
        formed = bool(pd.notna(first))
        rows.append(dict(run=run, formation_step=float(first) if formed else float(steps[-1] + gap), formed=formed,
                         stable_step=float(stable) if pd.notna(stable) else math.nan))
    return pd.DataFrame(rows, columns=["run", "formation_step", "formed", "stable_step"])


def induction_per_seed(tables: Tables) -> pd.DataFrame:
    """One row per run (PER_SEED_COLUMNS) at its final checkpoint; see the module doc."""
    missing = [n for n in ("induction_knockouts", "key_shares", "record_heads") if tables.get(n) is None]
    if missing:
        raise AnalysisError(f"the induction claims need the tables {', '.join(missing)}: analyze the runs with "
                            "--metrics key_shares induction_knockouts, and train them with the recorder on")
    ko = _final(tables.induction_knockouts)
    shares = _final(tables.key_shares)
    born = formation(tables.record_heads).set_index("run")
    losses = tables.losses.set_index("run")["val_loss"] if tables.get("losses") is not None else pd.Series(dtype=float)
    rows = []
    for keys, g in ko.groupby(["run", "preset", "arm", "seed", "step"]):
        run, arm = keys[0], keys[2]
        metric = dict(zip(zip(g["condition"], g["metric"]), g["value"]))
        s = shares[shares["run"] == run]
        heads = s[(s["route"] == "clean") & (s["metric"] == "induction") & (s["layer"] >= 0)]
        row = dict(zip(["run", "preset", "arm", "seed", "step"], keys), copy_cost_prev=metric.get(PRIMARY, math.nan),
                   best_induction=metric.get(("clean", "induction"), math.nan),
                   copy_loss_second=metric.get(("clean", "copy_loss_second"), math.nan),
                   n_induction_heads=float(len(heads)), mix_share=math.nan, prev_share=math.nan,
                   val_loss=float(losses.get(run, math.nan)))
        if len(heads):  # the shares of the strongest induction head
            share = _best_head_shares(s, heads)
            route = mixing_route(arm)
            row["mix_share"] = float(share.get(route, math.nan)) if route else 0.0
            row["prev_share"] = float(share.get("prev_heads", math.nan))
        if run in born.index:
            row.update(born.loc[run].to_dict())
        else:
            row.update(formation_step=math.nan, formed=False, stable_step=math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=PER_SEED_COLUMNS).sort_values(["arm", "seed"], ignore_index=True)


# ---- for the report's tables and figures ----------------------------------------------------------------------

ROUTE_GROUPS = ("prev_heads", "mixing", "rest")  # `route_shares`: the arm's own mixing whatever its route's name
FREED_METRICS = ("attn_self", "attn_prev", "attn_prev2", "attn_bos", "attn_further", "induction", "duplicate_token",
                 "ablation_text", "ablation_copy")


def _need_table(df: pd.DataFrame | None, what: str, how: str) -> pd.DataFrame:
    if df is None or not len(df):
        raise AnalysisError(f"no {what} table ({how})")
    return df


def score_over_training(record_heads: pd.DataFrame | None) -> pd.DataFrame:
    """run, arm, seed, step, value: at each recorded step the highest `induction_heldout` of any head, the curve
    whose first crossing of INDUCTION_THRESHOLD is the run's `formation_step`."""
    rec = _need_table(record_heads, "recorder heads", "train the runs with the recorder on")
    rec = rec[rec["metric"] == FORMATION_METRIC]
    if rec.empty:
        raise AnalysisError(f"the recorder's heads table has no {FORMATION_METRIC!r} rows: were the runs trained "
                            "with spans in their data (a preset with copy_share > 0)?")
    out = rec.groupby(["run", "arm", "seed", "step"], as_index=False)["value"].max()
    return out.sort_values(["arm", "seed", "step"], ignore_index=True)


def route_shares(key_shares: pd.DataFrame | None) -> pd.DataFrame:
    """run, arm, seed, prev_heads, mixing, rest: at each run's final step, the shares of the strongest induction
    head's token j−1 through the previous-token heads, through the arm's own mixing (0 without one) and through
    everything else (1 − the two: `other` and any route the arm does not own). Runs without an induction head
    have no row."""
    shares = _final(_need_table(key_shares, "key_shares", "analyze the runs with --metrics key_shares"))
    rows = []
    for (run, arm, seed), s in shares.groupby(["run", "arm", "seed"]):
        heads = s[(s["route"] == "clean") & (s["metric"] == "induction") & (s["layer"] >= 0)]
        if heads.empty:
            continue
        share = _best_head_shares(s, heads)
        route = mixing_route(arm)
        prev, mix = share.get("prev_heads", math.nan), (share.get(route, math.nan) if route else 0.0)
        rows.append(dict(run=run, arm=arm, seed=int(seed), prev_heads=prev, mixing=mix, rest=1.0 - prev - mix))
    return pd.DataFrame(rows, columns=["run", "arm", "seed", *ROUTE_GROUPS])


def copy_losses(knockouts: pd.DataFrame | None) -> pd.DataFrame:
    """run, arm, seed, condition, value, has_mixing: the second copy's loss (nats) at each run's final step under
    each knock-out condition (clean, prev_heads, smear = the arm's mixing, both), and the first copy's clean
    loss as condition `first_copy` (the level of an unpredictable token)."""
    ko = _final(_need_table(knockouts, "induction_knockouts", "analyze the runs with --metrics induction_knockouts"))
    rows = []
    for (run, arm, seed), g in ko.groupby(["run", "arm", "seed"]):
        metric = dict(zip(zip(g["condition"], g["metric"]), g["value"].astype(float)))
        mixing = bool(metric.get(("clean", "has_mixing"), float(mixing_route(arm) is not None)))
        for condition in ("clean", "prev_heads", "smear", "both"):
            if (condition, "copy_loss_second") in metric:
                rows.append(dict(run=run, arm=arm, seed=int(seed), condition=condition,
                                 value=metric[(condition, "copy_loss_second")], has_mixing=mixing))
        if ("clean", "copy_loss_first") in metric:
            rows.append(dict(run=run, arm=arm, seed=int(seed), condition="first_copy",
                             value=metric[("clean", "copy_loss_first")], has_mixing=mixing))
    return pd.DataFrame(rows, columns=["run", "arm", "seed", "condition", "value", "has_mixing"])


def freed_roles(heads: pd.DataFrame, roles: pd.DataFrame | None, threshold: float) -> pd.DataFrame:
    """arm, seed, n_places, metric, value: what the baseline's previous-token places (prev_token ≥ `threshold` in
    the baseline run of the same seed, `mechanism_stats.freed_head_roles`) do in each arm, each `head_roles`
    metric averaged over that seed's places, so that every seed weighs the same in an arm's mean."""
    roles = _need_table(roles, "head_roles", "analyze the runs with --metrics head_roles")
    freed = freed_head_roles(heads, roles, threshold)
    if freed.empty:
        raise AnalysisError(f"no previous-token head (prev_token ≥ {threshold:g}) in a baseline run that has "
                            "head_roles rows for its seed: nothing to follow into the other arms")
    freed = freed[freed["metric"].isin(FREED_METRICS)]
    out = freed.groupby(["arm", "seed", "metric"], as_index=False).agg(
        value=("value", "mean"), n_places=("layer", "size"))
    return out[["arm", "seed", "n_places", "metric", "value"]]


FORMED_PAIR_COLUMNS = ["arm", "pairs", "formed_baseline", "formed_arm", "baseline_only", "arm_only", "p_mcnemar",
                       "both_formed", "copy_cost_baseline", "copy_cost_arm", "prev_share_baseline", "prev_share_arm",
                       "mix_share_arm"]


def formed_pairs(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Exploratory, each arm against the baseline paired by seed (FORMED_PAIR_COLUMNS): how many of each formed an
    induction head, the exact McNemar p over the seeds where only one of the two did, and, over the seeds where
    both did, the means of claim (a)'s copy cost and of the key's token j−1 through the previous-token heads and
    through the arm's mixing.

    Claim (a) mixes two things: a run without an induction head has no copy to lose, so its cost is ~0 whether
    or not its previous-token heads would matter to one. Read among the pairs where both formed one, the cost says
    whether induction bypasses the previous-token heads; conditioning on an outcome is post hoc, hence exploratory."""
    from statsmodels.stats.contingency_tables import mcnemar  # imported here: few callers need statsmodels

    wide = per_seed.pivot_table(index="seed", columns="arm", values=["formed", "copy_cost_prev", "prev_share",
                                                                      "mix_share"], aggfunc="first")
    present = set(per_seed["arm"])
    if BASELINE not in present:
        return pd.DataFrame(columns=FORMED_PAIR_COLUMNS)
    rows = []
    for arm in [a for a in dict.fromkeys([*STUDY_ARMS, *sorted(present)]) if a in present and a != BASELINE]:
        pair = wide["formed"][[BASELINE, arm]].dropna().astype(bool)
        base, other = pair[BASELINE], pair[arm]
        table = [[int((base & other).sum()), int((base & ~other).sum())],
                 [int((~base & other).sum()), int((~base & ~other).sum())]]
        both = pair.index[base & other]
        mean = lambda col, a: float(wide[col][a].loc[both].mean()) if len(both) else math.nan
        rows.append(dict(arm=arm, pairs=len(pair), formed_baseline=int(base.sum()), formed_arm=int(other.sum()),
                         baseline_only=table[0][1], arm_only=table[1][0],
                         p_mcnemar=float(mcnemar(table, exact=True).pvalue), both_formed=len(both),
                         copy_cost_baseline=mean("copy_cost_prev", BASELINE), copy_cost_arm=mean("copy_cost_prev", arm),
                         prev_share_baseline=mean("prev_share", BASELINE), prev_share_arm=mean("prev_share", arm),
                         mix_share_arm=mean("mix_share", arm)))
    return pd.DataFrame(rows, columns=FORMED_PAIR_COLUMNS)


ACROSS_MEASURES = ("formed", "copy_cost_prev", "formation_step", "mix_share", "best_induction")


def across_presets(first: pd.DataFrame, second: pd.DataFrame, measures: tuple[str, ...] = ACROSS_MEASURES
                   ) -> pd.DataFrame:
    """Two studies of the same arms and seeds on two presets (`induction_per_seed` of each), per (arm, seed) and
    measure side by side, tidy: arm, seed, measure, first, second, second − first (NaN for `formed`, a yes/no).
    The presets are named in the columns `preset_first` and `preset_second`. Runs in one study only are dropped."""
    def long(per_seed: pd.DataFrame) -> pd.DataFrame:
        return per_seed.melt(id_vars=["arm", "seed", "preset"], value_vars=list(measures), var_name="measure")

    out = long(first).merge(long(second), on=["arm", "seed", "measure"], suffixes=("_first", "_second"))
    out = out.rename(columns={"value_first": "first", "value_second": "second"})
    numeric = out["measure"] != "formed"
    out["diff"] = math.nan
    out.loc[numeric, "diff"] = (out.loc[numeric, "second"].astype(float) - out.loc[numeric, "first"].astype(float))
    return out[["arm", "seed", "measure", "preset_first", "preset_second", "first", "second", "diff"]].sort_values(
        ["measure", "arm", "seed"], ignore_index=True)


__all__ = ["FORMATION_METRIC", "PER_SEED_COLUMNS", "STUDY_ARMS", "SESOIS", "INDUCTION_CLAIMS", "mixing_route",
           "formation", "induction_per_seed", "BASELINE", "ROUTE_GROUPS", "FREED_METRICS", "score_over_training",
           "route_shares", "copy_losses", "freed_roles", "FORMED_PAIR_COLUMNS", "formed_pairs", "ACROSS_MEASURES",
           "across_presets"]
