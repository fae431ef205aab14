"""Why the learned gate stays low: the arms that ask it, compared by seed.

The record's learned smear ends with a small coefficient while a fixed dose has lower loss. The arms of
trainer/arms.py that ask why — λ started high (`smear-init-<λ0>`), the dose held then released
(`smear-hold-<c>-<k>`) or annealed away (`dose-<c>-anneal-<k>`), the gate removed (`smear-nogate`), the
gate's input normalised (`smear-normgate`), and λ's learning rate scaled (`--set smear_lr_mult=…`, one
study folder per value) — are compared here, each paired by seed:

- validation loss against the baseline and against the *best fixed dose* present (the `dose-<c>` arm with
  the lowest mean validation loss); an arm *reaches the best dose's loss* when it is lower or equivalent
  within ±SESOI (stats.SESOI["val_loss"], TOST; also when a difference inside ±SESOI is significant);
- previous-token mass against the baseline; an arm *frees heads* when it is lower;
- λ and the mean coefficient on data at each run's last checkpoint (mean over seeds);
- the pressure on λ early in training (record_lambda: dL/dλ summed over positions, > 0 pushes λ down),
  and which positions make it (`early_pressure`).

Pure functions: tables in, tables out (stats.compare_arms does the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from analysis import stats
from trainer.arms import ANNEAL_INFIX, DOSE_PREFIX, HOLD_PREFIX, INIT_PREFIX, ArmSpec, arm_spec
from trainer.errors import ConfigError

QUESTION_ARMS = ("smear-nogate", "smear-normgate")  # with the parametrised init, hold and anneal arms
EARLY_STEPS = 200  # "the first steps" of the λ-pressure summary
SCREEN_SEEDS = 5  # fewer seeds per arm than this: the report calls the comparison a screen


def _spec(arm: str) -> ArmSpec | None:
    try:
        return arm_spec(str(arm))
    except ConfigError:
        return None  # a label the registry does not know: no definition to describe


def is_question_arm(arm: str) -> bool:
    """One of the arms made for this question (init, hold, anneal, no gate, normalised gate)."""
    arm = str(arm)
    return _spec(arm) is not None and (arm in QUESTION_ARMS or arm.startswith((INIT_PREFIX, HOLD_PREFIX))
                                       or (arm.startswith(DOSE_PREFIX) and ANNEAL_INFIX in arm))


def fixed_dose(arm: str) -> float | None:
    """c of a fixed dose arm `dose-<c>` (not annealed), else None."""
    s = _spec(arm)
    return s.fixed_dose if s is not None else None


def describe(arm: str) -> str:
    """The arm's definition in a few words."""
    s = _spec(arm)
    if s is None:
        return "—"
    if s.no_attn0:
        return f"{describe(s.base)}; no attention in layer 0 (record #131)"
    if arm == stats.BASELINE:
        return "no smear"
    if s.key_mix == "shift":
        return "keys: each takes token j−1's on its unrotated dims (record #169)"
    if s.key_mix == "smear":
        return "keys: learned smear s·(k[j−1] − k[j]) per head (Olsson)"
    if s.anneal_steps:
        return f"dose {s.dose:g} falling linearly to 0 at step {s.anneal_steps}"
    if s.mix == "dose":
        return f"fixed dose {s.dose:g}, no gate"
    if s.hold_steps:
        return f"coefficient held at {s.lambda_init / 2:g} for {s.hold_steps} steps, then learned"
    if s.mix == "gate" and s.gate_norm:
        return "learned, gate reads norm(e)"
    if s.mix == "gate" and s.lambda_init:
        return f"learned, λ starts at {s.lambda_init:g} (coefficient {s.lambda_init / 2:g})"
    if arm == stats.RECORD_ARM:
        return "learned λ·gate (the record)"
    if s.mix == "lambda" and s.skip_bos and s.site == "embed":
        return "learned λ, no gate"
    if s.mix == "canon":
        return f"canon: Σ w_k ⊙ e[i−k], k < {s.canon_kernel}"
    if s.mix == "lambda" and s.site == "final":
        return "Smear-MTP: λ·h[i−1] after the final norm"
    if s.mix == "gate" and s.site == "postnorm":
        return "the smear after the norm"
    if s.mix == "gate" and not s.into_x0:
        return "smeared x, plain x0"
    if s.mix == "gate" and s.gate_from != "current":
        return {"prev": "gate reads token i−1", "both": "gate reads tokens i and i−1"}[s.gate_from]
    return f"{s.mix or 'no'} mixing term" + (f" at {s.site}" if s.site != "embed" else "")


def best_dose(per_seed: pd.DataFrame) -> str | None:
    """The fixed dose arm with the lowest mean validation loss (None: no dose arm with a loss)."""
    if "val_loss" not in per_seed:
        return None
    doses = per_seed[[fixed_dose(a) is not None for a in per_seed["arm"]]].dropna(subset=["val_loss"])
    if doses.empty:
        return None
    means = doses.groupby("arm")["val_loss"].mean().sort_values(kind="stable")
    return str(means.index[0])


def final_coefficients(smear: pd.DataFrame | None, record_smear: pd.DataFrame | None = None) -> pd.DataFrame:
    """run, arm, seed, lambda, coef_mean at each run's last row: the checkpoint table where it has the run,
    else the training record."""
    cols = ["run", "arm", "seed", "step", "lambda", "coef_mean"]
    parts = [stats.final_rows(df)[cols] for df in (smear, record_smear) if df is not None and len(df)]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True).drop_duplicates("run", keep="first").reset_index(drop=True)


def lr_mults(configs: dict[str, dict]) -> dict[str, float]:
    """run -> λ's learning-rate multiple (`train_config.smear_lr_mult`; 1 where not recorded)."""
    out = {}
    for run, manifest in configs.items():
        train = manifest.get("train_config") if isinstance(manifest, dict) else None
        mult = train.get("smear_lr_mult", 1.0) if isinstance(train, dict) else 1.0
        out[run] = float(mult) if isinstance(mult, (int, float)) else 1.0
    return out


def _verdict(r: dict, alpha: float) -> str:
    """stats' verdict, and where a significant difference is also inside ±SESOI (TOST), both: a loss 0.002
    higher on quiet seeds is "higher" yet reaches the dose's loss."""
    v = r["verdict"]
    if v in ("lower", "higher") and math.isfinite(r["p_tost"]) and r["p_tost"] < alpha:
        v += f" (and equivalent within ±{r['sesoi']:g})"
    return v


def _reaches(verdict: str):
    """Lower, or within ±SESOI (TOST) → True; higher and not within it → False; else NA."""
    if verdict.startswith("lower") or "equivalent" in verdict:
        return True
    return False if verdict.startswith("higher") else pd.NA


def _frees(verdict: str):
    """Previous-token mass lower → True; higher or equivalent → False; else NA."""
    if verdict.startswith("lower"):
        return True
    return False if verdict.startswith(("higher", "equivalent")) else pd.NA


@dataclass
class GateSummary:
    table: pd.DataFrame  # one row per arm (GATE_COLUMNS)
    comparisons: pd.DataFrame  # the stats.compare_arms rows behind it, with `reference` (baseline / best dose)
    best_dose: str | None
    lr_mult: dict[str, float]  # arm -> λ's learning-rate multiple, where not 1


GATE_COLUMNS = ["arm", "definition", "lr_mult", "n_seeds", "val_loss", "lambda_final", "coef_final",
                "loss_vs_baseline", "loss_vs_baseline_low", "loss_vs_baseline_high", "loss_vs_baseline_verdict",
                "loss_vs_dose", "loss_vs_dose_low", "loss_vs_dose_high", "loss_vs_dose_verdict",
                "mass_vs_baseline", "mass_vs_baseline_low", "mass_vs_baseline_high", "mass_vs_baseline_verdict",
                "reaches_best_dose", "frees_heads"]


def gate_summary(per_seed: pd.DataFrame, smear: pd.DataFrame | None = None,
                 record_smear: pd.DataFrame | None = None, configs: dict[str, dict] | None = None,
                 alpha: float = stats.ALPHA) -> GateSummary:
    """Every arm but the baseline, paired by seed: validation loss against the baseline and the best fixed
    dose, previous-token mass against the baseline, final λ and mean coefficient, and the two answers
    (reaches the best dose's loss; frees heads) as True / False / NA (too few seeds to tell or absent).

    `per_seed`: stats.per_seed_claims rows (with `val_loss` merged in, as stats.summarize does)."""
    best = best_dose(per_seed)
    coefs = final_coefficients(smear, record_smear)
    mults = {}
    if configs:
        by_run = lr_mults(configs)
        for arm, runs in per_seed.groupby("arm")["run"]:
            values = {by_run.get(str(r), 1.0) for r in runs}
            if values != {1.0}:
                mults[str(arm)] = min(values) if len(values) == 1 else math.nan  # mixed: shown as —
    has_loss = "val_loss" in per_seed and per_seed["val_loss"].notna().any()
    rows, comparisons = [], []
    for arm in [a for a in stats.arm_order(per_seed["arm"]) if a != stats.BASELINE]:
        g = per_seed[per_seed["arm"] == arm]
        c = coefs[coefs["arm"] == arm]
        row = dict(arm=arm, definition=describe(arm), lr_mult=mults.get(arm, 1.0), n_seeds=int(g["seed"].nunique()),
                   val_loss=float(g["val_loss"].mean()) if has_loss else math.nan,
                   lambda_final=float(c["lambda"].mean()) if len(c) else math.nan,
                   coef_final=float(c["coef_mean"].mean()) if len(c) else math.nan)
        tests = [("mass_vs_baseline", "prev_mass", stats.BASELINE)]
        if has_loss:
            tests.append(("loss_vs_baseline", "val_loss", stats.BASELINE))
            if best is not None and arm != best:
                tests.append(("loss_vs_dose", "val_loss", best))
        for key, claim in (("loss_vs_baseline", "val_loss"), ("loss_vs_dose", "val_loss"), ("mass_vs_baseline", "prev_mass")):
            row.update({key: math.nan, f"{key}_low": math.nan, f"{key}_high": math.nan})
            row[f"{key}_verdict"] = ("absent: no validation loss (loss.csv)" if claim == "val_loss" and not has_loss
                                     else "absent: no fixed dose arm" if key == "loss_vs_dose" and best is None
                                     else "reference (best fixed dose)" if key == "loss_vs_dose" else "")
        for key, claim, ref in tests:
            r = stats.compare_arms(per_seed, claim, arm=arm, baseline=ref, role="exploratory", alpha=alpha)
            comparisons.append(dict(r, reference="best dose" if ref != stats.BASELINE else "baseline"))
            row.update({key: r["diff"], f"{key}_low": r["ci_low"], f"{key}_high": r["ci_high"],
                        f"{key}_verdict": _verdict(r, alpha)})
        dose_verdict = row["loss_vs_dose_verdict"]
        row["reaches_best_dose"] = True if arm == best else (_reaches(dose_verdict) if best is not None else pd.NA)
        row["frees_heads"] = _frees(row["mass_vs_baseline_verdict"])
        rows.append(row)
    table = pd.DataFrame(rows, columns=GATE_COLUMNS)
    for col in ("reaches_best_dose", "frees_heads"):
        table[col] = table[col].astype("boolean")
    return GateSummary(table, pd.DataFrame(comparisons), best, mults)


def early_pressure(record_lambda: pd.DataFrame | None, steps: int = EARLY_STEPS) -> pd.DataFrame:
    """Per arm, by and part: the mean over steps < `steps` of the pressure on λ (dL/dλ summed over the
    part's positions; > 0: gradient descent lowers λ), averaged over seeds, with the seeds' min and max.

    Columns: arm, by, part, n_seeds, steps (the last step averaged + 1), value, lo, hi. Parts that were
    not decomposed (NaN, e.g. Smear-MTP) are left out."""
    cols = ["arm", "by", "part", "n_seeds", "steps", "value", "lo", "hi"]
    if record_lambda is None or not len(record_lambda):
        return pd.DataFrame(columns=cols)
    df = record_lambda[(record_lambda["step"] < steps) & np.isfinite(record_lambda["value"].astype(float))]
    if df.empty:
        return pd.DataFrame(columns=cols)
    per_seed = df.groupby(["arm", "by", "part", "seed"], as_index=False).agg(value=("value", "mean"),
                                                                            last=("step", "max"))
    out = per_seed.groupby(["arm", "by", "part"], as_index=False).agg(
        n_seeds=("seed", "nunique"), steps=("last", "max"), value=("value", "mean"), lo=("value", "min"),
        hi=("value", "max"))
    out["steps"] = out["steps"].astype(int) + 1
    return out[cols]


def arms_present(arms: Iterable[str], configs: dict[str, dict] | None = None) -> bool:
    """Whether the tables hold an arm of this question (or a run with λ's learning rate scaled)."""
    if any(is_question_arm(a) for a in arms):
        return True
    return any(m != 1.0 for m in lr_mults(configs or {}).values())


__all__ = ["GateSummary", "GATE_COLUMNS", "QUESTION_ARMS", "EARLY_STEPS", "arms_present", "best_dose", "describe",
           "early_pressure", "final_coefficients", "fixed_dose", "gate_summary", "is_question_arm", "lr_mults"]
