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
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.mechanism.composition import INDUCTION_THRESHOLD, head_formation_steps
from analysis.mechanism.induction_circuit import PRIMARY
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
            best = heads.loc[heads["value"].idxmax()]
            at = s[(s["layer"] == best["layer"]) & (s["head"] == best["head"]) & (s["metric"] == "share")]
            share = dict(zip(at["route"], at["value"]))
            route = mixing_route(arm)
            row["mix_share"] = float(share.get(route, math.nan)) if route else 0.0
            row["prev_share"] = float(share.get("prev_heads", math.nan))
        if run in born.index:
            row.update(born.loc[run].to_dict())
        else:
            row.update(formation_step=math.nan, formed=False, stable_step=math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=PER_SEED_COLUMNS).sort_values(["arm", "seed"], ignore_index=True)


__all__ = ["FORMATION_METRIC", "PER_SEED_COLUMNS", "STUDY_ARMS", "SESOIS", "INDUCTION_CLAIMS", "mixing_route",
           "formation", "induction_per_seed", "BASELINE"]
