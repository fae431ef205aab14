"""A study's own primary claims: each an arm against a reference arm, paired by seed, Holm over the family.

The powered study's claims are `claims.PRIMARY_CLAIMS` (smear − baseline). A later study fixes its own family
in its plan (figures/<study>/PLAN.md) and states it here as `PlannedClaim`s: a per-seed measure, the arm, the
arm it is compared with (the baseline or another arm) and the smallest effect of interest. `compare_planned`
runs `claims.compare_arms` on each and adjusts the family's p-values together with Holm, counting every
declared claim, so a claim that cannot be made yet still takes its share of α.

Contrasts of more than two arms become per-seed columns first, so they pair like any other measure:
`removal_costs` turns "arm A with and without a component" into the cost of removing it per seed, and the
interaction of a 2 × 2 is then `compare_arms` of those costs between the two base arms.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from analysis.stats.claims import PlannedClaim, compare_arms, verdict  # noqa: F401 (PlannedClaim: re-exported)
from analysis.stats.inference import ALPHA, holm
from trainer.errors import AnalysisError


def compare_planned(per_seed: pd.DataFrame, claims: Sequence[PlannedClaim], *, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per planned claim (`claims.compare_arms`' columns, role "primary"), with `p_holm` adjusted over
    the whole declared family: a claim absent from the data (no column, no runs) counts as a p of NaN, which
    Holm treats as the largest, so the others' correction does not shrink with what has been run."""
    if not claims:
        raise AnalysisError("compare_planned: no claims declared")
    rows = []
    for c in claims:
        if c.measure in per_seed.columns:
            rows.append(compare_arms(per_seed, c.measure, arm=c.arm, baseline=c.reference, sesoi=c.sesoi,
                                     role="primary", alpha=alpha))
        else:
            rows.append(dict(claim=c.measure, arm=c.arm, baseline=c.reference, role="primary", sesoi=c.sesoi,
                             p_value=math.nan, p_holm=math.nan, verdict=f"absent: no per-seed column {c.measure!r}"))
    testable = [not r["verdict"].startswith("absent") for r in rows]
    adjusted = holm([r["p_value"] if ok else math.nan for r, ok in zip(rows, testable)])
    for r, ok, p in zip(rows, testable, adjusted):
        if ok:
            r["p_holm"] = float(p)
            r["verdict"], r["significant"] = verdict(r, alpha)
    return pd.DataFrame(rows)


def removal_costs(per_seed: pd.DataFrame, measure: str, suffix: str = "-noattn0") -> pd.DataFrame:
    """Per seed and base arm A with runs of both A and A + `suffix`: the cost of the removal,
    value(A + suffix) − value(A), as column `<measure>_cost`, on a row with arm = A. The interaction of a
    2 × 2 (does removing it cost less with the smear?) is then `compare_arms(costs, "<measure>_cost",
    arm="smear", baseline="baseline")`, paired by seed as ever."""
    if measure not in per_seed.columns:
        raise AnalysisError(f"removal_costs: no per-seed column {measure!r} (have: {', '.join(per_seed.columns)})")
    df = per_seed[["arm", "seed", measure]].dropna().drop_duplicates(["arm", "seed"])
    wide = df.pivot(index="seed", columns="arm", values=measure)
    rows = []
    for arm in wide.columns:
        if arm.endswith(suffix) or f"{arm}{suffix}" not in wide.columns:
            continue
        cost = (wide[f"{arm}{suffix}"] - wide[arm]).dropna()
        rows += [dict(arm=arm, seed=int(seed), **{f"{measure}_cost": float(v)}) for seed, v in cost.items()]
    return pd.DataFrame(rows, columns=["arm", "seed", f"{measure}_cost"])


__all__ = ["PlannedClaim", "compare_planned", "removal_costs"]
