"""The speedrun study's questions (figures/speedrun/PLAN.md, part B): its four primary claims and the
exploratory numbers beside them.

Primary (Holm over the four, paired by seed, validation loss at the final step, SESOI 0.01 nats each):

- P1 (smear-noattn0 − smear) − (baseline-noattn0 − baseline): does removing layer 0's attention cost less
  with the learned smear? A 2 × 2 interaction, so it is `planned.removal_costs` per seed, then
  `compare_arms` of those costs between smear and the baseline;
- P2 the same with the fixed dose 0.8;
- P3 dose-0.8-anneal-800 − dose-0.8 and P4 smear-hold-0.8-400 − dose-0.8: does an early strong smear
  beat the fixed dose?

A claim whose arms have no runs yet is "absent" and counts as p = 1 in Holm (`planned.compare_planned`).
Exploratory (uncorrected): every arm − baseline on validation loss and the previous-token claims; each
`-noattn0` arm against its own base arm; previous-token mass per layer (where the heads go without layer
0's attention); and the early-smear arms (any `smear-hold-<c>-<k>` or `dose-<c>-anneal-<k>`, found by
pattern, not only the plan's two) over training: the coefficient λ·gate at their release (step k) and at
the end, and dL/dλ after the release, beside the learned smear's over the same steps.

Loss differences become baseline steps with `steps_saved.loss_to_steps` where the budget tables exist:
`steps_saved.shape_from_tables` rebuilds the fitted shape from `smearlens steps-saved`'s csv files.

Pure functions: DataFrames in, DataFrames out.
"""

from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from analysis.stats import steps_saved as ss
from analysis.stats.claims import compare_arms, head_scores
from analysis.stats.gate_arms import describe
from analysis.stats.inference import ALPHA, t_ci
from analysis.stats.mechanism_stats import one_sample
from analysis.stats.planned import PlannedClaim, compare_planned, removal_costs
from analysis.tables import BASELINE, RECORD_ARM, arm_order
from trainer.arms import NOATTN0_SUFFIX, ArmSpec, arm_spec
from trainer.errors import AnalysisError, ConfigError

LOSS, COST = "val_loss", "val_loss_cost"
SESOI_NATS = 0.01  # the plan's, for all four: ten times the record's own smear gain (3.2790 vs 3.2781)
DOSE = "dose-0.8"
ANNEAL, HOLD = "dose-0.8-anneal-800", "smear-hold-0.8-400"
CLAIMS_FILE = "speedrun_claims.csv"  # beside the report
PREV_CLAIMS = ("prev_mass", "best_prev", "n_prev_heads")  # the previous-token claims, exploratory here
NO_CURVES = "no budget curves yet"  # the steps status before `smearlens steps-saved` has written its tables
AFTER_RELEASE = 100  # steps after an early-smear arm's release over which dL/dλ is averaged (and at the end)

SPEEDRUN_CLAIMS: tuple[PlannedClaim, ...] = (
    PlannedClaim(COST, RECORD_ARM, SESOI_NATS, reference=BASELINE,
                 why="Record #131 removed layer 0's attention right after the smear (#130) landed, arguing the "
                     "smear made it redundant. If so, removing it costs less with the learned smear than without: "
                     "the interaction of the 2 × 2, per seed the cost with the smear minus the cost without."),
    PlannedClaim(COST, DOSE, SESOI_NATS, reference=BASELINE,
                 why="The same question for the fixed dose 0.8, which carries far more of the previous token than "
                     "the learned gate does: if the smear stands in for layer 0's attention, the dose should most."),
    PlannedClaim(LOSS, ANNEAL, SESOI_NATS, reference=DOSE,
                 why="In the 3-seed screen the dose annealed to 0 by step 800 ended 0.0219 [0.0090, 0.0349] nats "
                     "below the baseline, more than the fixed dose: does an early strong smear beat it?"),
    PlannedClaim(LOSS, HOLD, SESOI_NATS, reference=DOSE,
                 why="As P3, the coefficient held at 0.8 for 400 steps and then learned (λ and the gate free): "
                     "−0.0106 [−0.0213, 0.0001] nats against the baseline in the screen."),
)
CLAIM_IDS = ("P1", "P2", "P3", "P4")
CONTRASTS = {
    "P1": f"(smear{NOATTN0_SUFFIX} − smear) − (baseline{NOATTN0_SUFFIX} − baseline)",
    "P2": f"({DOSE}{NOATTN0_SUFFIX} − {DOSE}) − (baseline{NOATTN0_SUFFIX} − baseline)",
    "P3": f"{ANNEAL} − {DOSE}",
    "P4": f"{HOLD} − {DOSE}",
}
# the plan's questions 2 and 3, each answered by two of the claims
QUESTIONS = {
    "attn0": ("Does the smear make layer 0's attention redundant at this size?", ("P1", "P2")),
    "early": ("Does an early strong smear beat the fixed dose?", ("P3", "P4")),
}
CLAIM_COLUMNS = ["id", "contrast", "measure", "arm", "reference", "sesoi", "n_pairs", "estimate", "ci_low", "ci_high",
                 "p_value", "p_holm", "p_signflip", "p_tost", "power_obs", "power_upper", "verdict"]
STEP_COLUMNS = ["steps_equivalent", "steps_ci_low", "steps_ci_high", "pct_equivalent", "pct_ci_low", "pct_ci_high",
                "steps_status"]


# ---------------------------------------------------------------------------------------------
# Which arms belong to the study


def _spec(arm: str) -> ArmSpec | None:
    try:
        return arm_spec(str(arm))
    except ConfigError:
        return None  # a label this registry does not know: not one of this study's arms


def is_noattn0(arm: str) -> bool:
    s = _spec(arm)
    return s is not None and s.no_attn0


def release_step(arm: str) -> int | None:
    """k of an early-smear arm (`smear-hold-<c>-<k>`: held until k, then learned; `dose-<c>-anneal-<k>`: at 0
    from k on), else None."""
    s = _spec(arm)
    if s is None:
        return None
    return s.hold_steps or s.anneal_steps or None


def is_early_smear(arm: str) -> bool:
    return release_step(arm) is not None


def study_present(arms: Iterable[str]) -> bool:
    """Whether the arms make (part of) the speedrun study: any `-noattn0` arm or any early-smear arm."""
    return any(is_noattn0(a) or is_early_smear(a) for a in map(str, arms))


def claim_arms(claim: PlannedClaim) -> list[str]:
    """The arms whose runs a claim needs (a removal cost needs each base arm with and without layer 0's attention)."""
    pair = [claim.arm, claim.reference]
    if claim.measure == COST:
        return [a for base in pair for a in (base, f"{base}{NOATTN0_SUFFIX}")]
    return pair


# ---------------------------------------------------------------------------------------------
# The primary claims


def claims_per_seed(per_seed: pd.DataFrame) -> pd.DataFrame:
    """The per-seed frame the claims read: one row per (arm, seed) with `val_loss` (the run's final validation
    loss) and, for each base arm run with and without layer 0's attention, `val_loss_cost` (the loss of
    removing it). Without a `val_loss` column (no loss logs) only arm and seed: every claim is then absent."""
    missing = [c for c in ("arm", "seed") if c not in per_seed.columns]
    if missing:
        raise AnalysisError(f"speedrun claims: the per-seed table lacks column(s) {', '.join(missing)}")
    if LOSS not in per_seed.columns:
        return per_seed[["arm", "seed"]].drop_duplicates().reset_index(drop=True)
    losses = per_seed[["arm", "seed", LOSS]].dropna().drop_duplicates(["arm", "seed"])
    costs = removal_costs(losses, LOSS, NOATTN0_SUFFIX)
    return losses.merge(costs, on=["arm", "seed"], how="left").reset_index(drop=True)


def speedrun_claims(per_seed: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """P1–P4 (`compare_planned` on `claims_per_seed`), Holm over the four, with the plan's ids and contrasts;
    an absent claim says which arms have no runs. Columns: `compare_arms`' and `id`, `contrast`, `estimate`."""
    frame = claims_per_seed(per_seed)
    out = compare_planned(frame, SPEEDRUN_CLAIMS, alpha=alpha)
    have = set(frame.loc[frame[LOSS].notna(), "arm"]) if LOSS in frame else set()
    ids, contrasts, verdicts = [], [], []
    for cid, claim, r in zip(CLAIM_IDS, SPEEDRUN_CLAIMS, out.to_dict("records")):
        ids.append(cid)
        contrasts.append(CONTRASTS[cid])
        lacking = [a for a in claim_arms(claim) if a not in have]
        v = str(r["verdict"])
        if v.startswith("absent"):  # name the runs to train, not compare_arms' view of the cost frame
            v = ("absent: no validation loss (the runs' loss.csv)" if LOSS not in frame else
                 f"absent: no runs of {', '.join(lacking)}" if lacking else v)
        verdicts.append(v)
    out.insert(0, "id", ids)
    out.insert(1, "contrast", contrasts)
    out["verdict"] = verdicts
    out["label"] = out["contrast"]
    out["estimate"] = out["diff"] if "diff" in out else math.nan
    out["measure"] = [c.measure for c in SPEEDRUN_CLAIMS]
    out["reference"] = [c.reference for c in SPEEDRUN_CLAIMS]
    for col in CLAIM_COLUMNS:
        if col not in out:
            out[col] = math.nan
    return out


# ---------------------------------------------------------------------------------------------
# Steps at matched loss


def with_steps(rows: pd.DataFrame, shape: ss.Shape | None, diff: str = "diff") -> pd.DataFrame:
    """`rows` (compare_arms' columns) with STEP_COLUMNS: each loss difference as baseline steps at 1×
    (`loss_to_steps`, the difference's paired t CI with n − 1 degrees of freedom and the shape's error added).
    Positive: the first term's loss is lower, worth that many more baseline steps. Without a shape: NaN and the
    status "no budget curves yet"."""
    out = rows.copy()
    cells = []
    for r in out.to_dict("records"):
        d = r.get(diff, math.nan)
        if shape is None:
            cells.append(dict.fromkeys(STEP_COLUMNS[:-1], math.nan) | dict(steps_status=NO_CURVES))
            continue
        if not (isinstance(d, (int, float)) and math.isfinite(d)):
            cells.append(dict.fromkeys(STEP_COLUMNS[:-1], math.nan) | dict(steps_status="no loss difference"))
            continue
        lo, hi, n = r.get("ci_low", math.nan), r.get("ci_high", math.nan), r.get("n_pairs", 0) or 0
        has_ci = math.isfinite(lo) and math.isfinite(hi) and n >= 2
        s = ss.loss_to_steps(float(d), shape, lo if has_ci else None, hi if has_ci else None,
                             df=n - 1 if has_ci else None)
        cells.append(dict(steps_equivalent=s["steps_saved"], steps_ci_low=s["ci_low"], steps_ci_high=s["ci_high"],
                          pct_equivalent=s["pct_saved"], pct_ci_low=s["pct_ci_low"], pct_ci_high=s["pct_ci_high"],
                          steps_status=s["status"]))
    steps = pd.DataFrame(cells, columns=STEP_COLUMNS, index=out.index)
    return pd.concat([out.drop(columns=[c for c in STEP_COLUMNS if c in out]), steps], axis=1)


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """The rows of speedrun_claims.csv: one per claim, the estimate with its CI, the p-values, the verdict and,
    where the budget tables exist, its steps equivalent."""
    return claims[[c for c in CLAIM_COLUMNS + STEP_COLUMNS if c in claims]].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Exploratory: arms against the baseline, layer 0's attention removed, where the heads go


def arm_comparisons(per_seed: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Every arm − baseline, paired by seed, on validation loss and the previous-token claims present (all
    exploratory here, the previous-token claims of the smear arm included)."""
    measures = [m for m in (LOSS, *PREV_CLAIMS) if m in per_seed and per_seed[m].notna().any()]
    rows = [compare_arms(per_seed, m, arm=a, baseline=BASELINE, role="exploratory", alpha=alpha)
            for a in arm_order(per_seed["arm"]) if a != BASELINE for m in measures]
    return pd.DataFrame(rows)


def removal_comparisons(per_seed: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """For each arm run with and without layer 0's attention: `<arm>-noattn0` − `<arm>`, paired by seed, on
    validation loss and previous-token mass (the 2 × 2's sides; P1 and P2 test their differences)."""
    arms = set(map(str, per_seed["arm"]))
    measures = [m for m in (LOSS, "prev_mass") if m in per_seed and per_seed[m].notna().any()]
    rows = [compare_arms(per_seed, m, arm=f"{a}{NOATTN0_SUFFIX}", baseline=a, role="exploratory", alpha=alpha)
            for a in arm_order(arms) if not is_noattn0(a) and f"{a}{NOATTN0_SUFFIX}" in arms for m in measures]
    return pd.DataFrame(rows)


def layer_mass(heads: pd.DataFrame) -> pd.DataFrame:
    """Per run at its final step and per layer with attention: the previous-token mass (the sum of its heads'
    scores) and its number of heads. A layer without attention has no rows (the analysis writes none)."""
    scores = head_scores(heads)
    if scores.empty:
        raise AnalysisError("the heads table has no prev_token rows: no previous-token mass per layer")
    return (scores.groupby(["run", "arm", "seed", "layer"], as_index=False)
            .agg(mass=("score", "sum"), n_heads=("head", "nunique")))


def prev_mass_by_layer(heads: pd.DataFrame) -> pd.DataFrame:
    """Per arm and layer: the mean previous-token mass over seeds with its t 95% CI, and the seeds and heads
    behind it. Columns: arm, layer, n_seeds, n_heads, mass, ci_low, ci_high."""
    rows = []
    per_run = layer_mass(heads)
    for (arm, layer), g in per_run.groupby(["arm", "layer"], sort=True):
        lo, hi = t_ci(g["mass"].to_numpy(float))
        rows.append(dict(arm=str(arm), layer=int(layer), n_seeds=int(g["seed"].nunique()),
                         n_heads=int(g["n_heads"].max()), mass=float(g["mass"].mean()), ci_low=lo, ci_high=hi))
    out = pd.DataFrame(rows, columns=["arm", "layer", "n_seeds", "n_heads", "mass", "ci_low", "ci_high"])
    order = {a: i for i, a in enumerate(arm_order(out["arm"]))}
    return out.sort_values(["arm", "layer"], key=lambda s: s.map(order) if s.name == "arm" else s).reset_index(drop=True)


def layer_moves(heads: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Where the previous-token mass goes without layer 0's attention: per arm run both ways and per layer that
    has attention in both, `<arm>-noattn0` − `<arm>` in that layer's mass, paired by seed (exploratory).
    Columns: compare_arms' and `layer`."""
    per_run = layer_mass(heads)
    arms = set(map(str, per_run["arm"]))
    rows = []
    for base in [a for a in arm_order(arms) if not is_noattn0(a) and f"{a}{NOATTN0_SUFFIX}" in arms]:
        pair = per_run[per_run["arm"].isin([base, f"{base}{NOATTN0_SUFFIX}"])]
        for layer, g in pair.groupby("layer", sort=True):
            if g["arm"].nunique() < 2:
                continue  # attention in one arm only (layer 0): its mass moved away, not compared
            r = compare_arms(g.rename(columns={"mass": "layer_mass"}), "layer_mass", arm=f"{base}{NOATTN0_SUFFIX}",
                             baseline=base, role="exploratory", alpha=alpha)
            rows.append(dict(r, layer=int(layer)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Exploratory: the early-smear arms over training


def coefficient_curves(record_lambda: pd.DataFrame | None, record_smear: pd.DataFrame | None = None) -> pd.DataFrame:
    """arm, seed, step, lambda, coef_mean, pressure (dL/dλ; NaN where not recorded) over training, one row per
    run and step: record_lambda's every-step rows (`by == "total"`) where a run has them, else record_smear's."""
    cols = ["run", "arm", "seed", "step", "lambda", "coef_mean", "pressure"]
    parts, seen = [], set()
    if record_lambda is not None and len(record_lambda):
        tot = record_lambda[record_lambda["by"] == "total"]
        parts.append(tot[cols])
        seen = set(map(str, tot["run"]))
    if record_smear is not None and len(record_smear):
        rest = record_smear[~record_smear["run"].astype(str).isin(seen)]
        parts.append(rest.assign(pressure=math.nan)[cols])
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True).drop_duplicates(["run", "step"])
    return out.sort_values(["arm", "seed", "step"]).reset_index(drop=True)


def _at_step(g: pd.DataFrame, step: int, col: str) -> pd.Series:
    """Per seed: `col` at the last recorded step ≤ `step` (NaN for a seed with none)."""
    before = g[(g["step"] <= step) & g[col].notna()]
    return before.sort_values("step").groupby("seed")[col].last()


def _window(g: pd.DataFrame, lo: int, hi: int, col: str) -> pd.Series:
    """Per seed: the mean of `col` over steps lo ≤ step < hi."""
    w = g[(g["step"] >= lo) & (g["step"] < hi) & g[col].notna()]
    return w.groupby("seed")[col].mean()


def _mean_ci(values: pd.Series) -> tuple[float, float, float]:
    v = values.dropna().to_numpy(float)
    lo, hi = t_ci(v)
    return (float(v.mean()) if len(v) else math.nan), lo, hi


EARLY_COLUMNS = ["arm", "kind", "release_step", "last_step", "n_seeds", "coef_release", "coef_final", "coef_change",
                 "coef_change_low", "coef_change_high", "coef_change_verdict", "lambda_final", "pressure_after",
                 "pressure_after_low", "pressure_after_high", "pressure_final", "pressure_final_low",
                 "pressure_final_high", "note"]


def early_smear(curves: pd.DataFrame, arms: Iterable[str] | None = None, window: int = AFTER_RELEASE,
                alpha: float = ALPHA) -> pd.DataFrame:
    """Per early-smear arm (by pattern) and, at each of their release steps k, the learned smear and the fixed
    dose 0.8 for comparison: the mean coefficient λ·gate at k and at the end, its change after k per seed (t CI,
    exploratory verdict: does the coefficient fall once free?), λ at the end, and the pressure dL/dλ (> 0:
    descent lowers λ) averaged over the `window` steps from k and over the last `window` steps. `curves`:
    `coefficient_curves`. An arm whose runs end before k says so."""
    present = list(arm_order(curves["arm"])) if len(curves) else []
    early = [a for a in (arms if arms is not None else present) if is_early_smear(a)]
    rows = []
    for arm in early:
        k = int(release_step(arm))
        for who in [arm] + [a for a in (RECORD_ARM, DOSE) if a in present]:
            g = curves[curves["arm"] == who]
            if g.empty:
                rows.append(dict(arm=who, kind=describe(who), release_step=k, n_seeds=0, note="no recorded coefficient"))
                continue
            last = int(g["step"].max())
            row = dict(arm=who, kind=describe(who), release_step=k, last_step=last, n_seeds=int(g["seed"].nunique()),
                       note="" if who == arm else f"for comparison, at {arm}'s release step")
            if last < k:
                rows.append(dict(row, note=f"the runs end at step {last}, before the release at step {k}"))
                continue
            at_k, at_end = _at_step(g, k, "coef_mean"), _at_step(g, last, "coef_mean")
            change = (at_end - at_k).dropna()
            c = one_sample(change, alpha=alpha)
            learned = _spec(who) is not None and _spec(who).learned_lambda
            verdict = ("falls" if c["verdict"] == "lower" else "rises" if c["verdict"] == "higher" else c["verdict"])
            row.update(coef_release=float(at_k.mean()), coef_final=float(at_end.mean()), coef_change=c["mean"],
                       coef_change_low=c["ci_low"], coef_change_high=c["ci_high"],
                       # a dose's coefficient follows its schedule: nothing to test
                       coef_change_verdict=verdict if learned else "scheduled, not learned",
                       lambda_final=float(_at_step(g, last, "lambda").mean()))
            for key, (lo, hi) in (("pressure_after", (k, k + window)), ("pressure_final", (last + 1 - window, last + 1))):
                row[key], row[f"{key}_low"], row[f"{key}_high"] = _mean_ci(_window(g, lo, hi, "pressure"))
            rows.append(row)
    out = pd.DataFrame(rows, columns=EARLY_COLUMNS)
    return out.drop_duplicates(["arm", "release_step"]).reset_index(drop=True)


__all__ = ["SPEEDRUN_CLAIMS", "CLAIM_IDS", "CONTRASTS", "QUESTIONS", "CLAIMS_FILE", "CLAIM_COLUMNS", "STEP_COLUMNS",
           "EARLY_COLUMNS", "LOSS", "COST", "SESOI_NATS", "DOSE", "ANNEAL", "HOLD", "PREV_CLAIMS", "AFTER_RELEASE",
           "is_noattn0", "is_early_smear", "release_step", "study_present", "claim_arms", "claims_per_seed",
           "speedrun_claims", "with_steps", "claims_table", "arm_comparisons",
           "removal_comparisons", "layer_mass", "prev_mass_by_layer", "layer_moves", "coefficient_curves",
           "early_smear", "NO_CURVES"]
