"""The headline: per arm, how much of the previous token its smear term carries and what that does to the
previous-token heads and the loss, paired by seed against the baseline. One tidy table that the report's
summary, its summary figure and a later report's "reference study" line all read.

Rows: one per (arm, measure). `measure` is `smear_share` (the smear term's share of token i−1's effect on the
prediction at i, a one-sample mean over seeds; absent for arms without a smear term) or a claim of
`analysis.stats` (`prev_mass`, `n_prev_heads`, `best_prev`, `val_loss`: arm − baseline, paired by seed).
`role` is "primary" where the claim was fixed in advance (its verdict then uses the Holm p), else
"exploratory".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import stats
from analysis.stats import mechanism_stats as mech
from analysis.stats.claims import Summary
from trainer.errors import AnalysisError

HEADLINE_MEASURES = ("prev_mass", "n_prev_heads", "best_prev", "val_loss")
SHARE = "smear_share"
COLUMNS = ["preset", "step", "arm", "measure", "role", "n", "estimate", "ci_low", "ci_high", "verdict"]
FILE = "summary.csv"  # written beside report.md


def smear_shares(paths: pd.DataFrame | None) -> pd.DataFrame:
    """Per run: the smear term's share of token i−1's effect (every position); 0 for arms without a smear
    term, so the baseline sits at the origin of the summary figure. Empty without a paths table."""
    try:
        per_run = mech.share_per_seed(paths)
    except AnalysisError:
        return pd.DataFrame(columns=["arm", "seed", SHARE])
    mixing = mech.arms_with_smear(paths)
    share = per_run["smear_all"].where(per_run["arm"].astype(str).isin(mixing), 0.0)
    return per_run.assign(**{SHARE: share})[["arm", "seed", SHARE]]


def _claim_row(summary: Summary, arm: str, measure: str) -> pd.Series | None:
    """`arm`'s row for `measure`: the primary claim's where it is one (its verdict uses Holm), else the comparison."""
    for df in (summary.primary, summary.comparisons):
        r = df[(df["arm"] == arm) & (df["claim"] == measure)] if len(df) else df
        if len(r):
            return r.iloc[0]
    return None


def headline(summary: Summary, paths: pd.DataFrame | None = None) -> pd.DataFrame:
    """The headline table (module docstring) from a summary of the tables and, for the shares, the paths table."""
    rows = []
    shares = smear_shares(paths)
    where = dict(preset=", ".join(sorted(set(summary.per_seed["preset"].astype(str)))),
                 step=", ".join(map(str, sorted(set(summary.per_seed["step"].astype(int))))))
    for arm in [a for a in stats.arm_order(summary.per_seed["arm"]) if a != stats.BASELINE]:
        values = shares.loc[(shares["arm"] == arm), SHARE]
        if len(values) and mech.mixes_previous_token(arm, values):
            s = mech.one_sample(values)
            rows.append(dict(where, arm=arm, measure=SHARE, role="exploratory", n=s["n"], estimate=s["mean"],
                             ci_low=s["ci_low"], ci_high=s["ci_high"], verdict=s["verdict"]))
        for measure in HEADLINE_MEASURES:
            r = _claim_row(summary, arm, measure)
            if r is None:
                continue
            rows.append(dict(where, arm=arm, measure=measure, role=r["role"], n=r["n_pairs"], estimate=r["diff"],
                             ci_low=r["ci_low"], ci_high=r["ci_high"], verdict=r["verdict"]))
    return pd.DataFrame(rows, columns=COLUMNS)


def read_headline(path: str | Path) -> pd.DataFrame:
    """A headline table written by an earlier report: its `summary.csv`, or the folder that holds it."""
    path = Path(path)
    file = path / FILE if path.is_dir() else path
    if not file.is_file():
        raise AnalysisError(f"{file}: no headline table there (a report writes {FILE} beside its report.md)")
    try:
        df = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{file}: not a headline table ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise AnalysisError(f"{file}: not a headline table (no column {', '.join(missing)})")
    return df[COLUMNS]
