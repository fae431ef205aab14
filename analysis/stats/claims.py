"""Statistics over the analysis tables: does the smear arm have fewer previous-token heads?

Per-seed values of each claim at each run's final step, then every arm − baseline comparison.
Arms of one seed share initial weights and data order, so they are compared as pairs: paired t,
exact sign-flip permutation p, t-based 95% CI of the mean paired difference, correlation within
pairs. Welch and the bootstrap serve only arms whose seeds do not pair. At most three primary
claims (PRIMARY_CLAIMS, each with a smallest effect of interest) are fixed in advance and
corrected together with Holm; the rest is exploratory. A verdict is one of "lower", "higher",
"equivalent within ±SESOI" (TOST) or "too few seeds to tell", with the power at the SESOI; a
comparison that cannot be made says why ("absent: arm missing", …) instead of raising.

The array statistics live in analysis/stats/inference.py, reading and validating the tables in
analysis/tables.py (`load_tables`, `validate_tables`, `Tables`, the arm names); both are re-exported
here. Pure functions (DataFrames in, DataFrames or dicts out). Tables that cannot be analysed raise
`AnalysisError` with a message to act on.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from analysis.stats.inference import (  # noqa: F401 (re-exported: stats is the statistics' one way in)
    ALPHA, BOOT_SEED, N_BOOT, SD_UPPER_LEVEL, SIGN_FLIP_DRAWS, SIGN_FLIP_EXACT_MAX, bootstrap_ci, holm, paired_power,
    paired_t, sd_upper, seeds_needed, sign_flip_min_p, sign_flip_p, t_ci, tost_p, welch_ci, welch_p)
from analysis.schema import (HEAD_METRICS, MECHANISM_COLUMNS, RECORD_COLUMNS, RUN_COLUMNS,  # noqa: F401 (re-exported)
                             TABLE_COLUMNS)
from analysis.tables import (  # noqa: F401 (re-exported: loading and validating the tables)
    ALL_COLUMNS, ARMS, BASELINE, RECORD_ARM, RECORD_TABLES, Tables, _join, arm_order, final_losses, load_tables,
    read_manifests, validate_tables, window_growth_tokens)
from trainer.errors import AnalysisError

DEFAULT_THRESHOLD = 0.4
THRESHOLDS = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.2 … 0.8

# Each claim: the per-seed column, what it means, and the format of its numbers.
CLAIMS: dict[str, tuple[str, str]] = {
    "n_prev_heads": ("previous-token heads (score ≥ {t:g})", "{:.2f}"),
    "prev_mass": ("total previous-token mass (sum of scores)", "{:.3f}"),
    "best_prev": ("best head's previous-token score", "{:.3f}"),
    "ablation_mean_at_prev": ("loss increase, mean-ablating the baseline's previous-token heads (per head)", "{:.4f}"),
    "ablation_zero_at_prev": ("loss increase, zero-ablating the baseline's previous-token heads (per head)", "{:.4f}"),
    "induction_at_prev": ("induction score at the baseline's previous-token heads", "{:.2g}"),  # ~1e-4 at cpu-small
    "val_loss": ("validation loss at the final step (nats/token, the trainer's)", "{:.4f}"),
}


def claim_label(claim: str, threshold: float = DEFAULT_THRESHOLD) -> str:
    """A claim's description in words, with its threshold filled in."""
    return CLAIMS[claim][0].format(t=threshold) if claim in CLAIMS else claim


TOKEN_CLASSES = ("word start", "continuation", "punctuation", "digits", "whitespace", "other")


# ---------------------------------------------------------------------------------------------
# Per-seed values


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows at each run's last step ("final")."""
    last = df.groupby("run")["step"].transform("max")
    return df[df["step"] == last].reset_index(drop=True)


def head_scores(heads: pd.DataFrame, metric: str = "prev_token", final: bool = True) -> pd.DataFrame:
    """One row per (run, step, layer, head) with the metric's value as `score`."""
    df = heads[heads["metric"] == metric]
    if final:
        df = final_rows(df)
    cols = RUN_COLUMNS + ["layer", "head"]
    return df.groupby(cols, as_index=False)["value"].mean().rename(columns={"value": "score"})


def baseline_prev_positions(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """(seed, layer, head) of every previous-token head of each baseline seed at its final step."""
    s = head_scores(heads[heads["arm"] == "baseline"])
    return s.loc[s["score"] >= threshold, ["seed", "layer", "head", "score"]].reset_index(drop=True)


def _positions_for(seed: int, positions: pd.DataFrame, base_seeds: set[int]) -> set[tuple[int, int]]:
    """The baseline's previous-token heads for `seed`: its own seed's, or all seeds' when unpaired."""
    pick = positions[positions["seed"] == seed] if seed in base_seeds else positions
    return set(zip(pick["layer"].astype(int), pick["head"].astype(int)))


def per_seed_claims(heads: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Per run at its final step: the value of each claim in CLAIMS (NaN where undefined).

    Claims "at prev" average over the (layer, head) places that are previous-token heads in the
    baseline run of the same seed (all baseline seeds' places when that seed has no baseline run);
    NaN when that baseline run has none.
    """
    prev = head_scores(heads)
    if prev.empty:
        raise AnalysisError("the heads table has no prev_token rows: nothing to measure")
    final = final_rows(heads)
    positions = baseline_prev_positions(heads, threshold)
    base_seeds = set(heads.loc[heads["arm"] == "baseline", "seed"].astype(int))
    rows = []
    for keys, g in prev.groupby(RUN_COLUMNS, sort=True):
        row = dict(zip(RUN_COLUMNS, keys))
        row.update(n_heads=len(g), n_prev_heads=int((g["score"] >= threshold).sum()),
                   prev_mass=float(g["score"].sum()), best_prev=float(g["score"].max()))
        seed = int(row["seed"])
        places = _positions_for(seed, positions, base_seeds)
        run_rows = final[final["run"] == row["run"]]
        for metric, col in (("ablation_mean", "ablation_mean_at_prev"), ("ablation_zero", "ablation_zero_at_prev"),
                            ("induction", "induction_at_prev")):
            m = run_rows[run_rows["metric"] == metric]
            at = m[[(int(l), int(h)) in places for l, h in zip(m["layer"], m["head"])]]
            row[col] = float(at["value"].mean()) if len(at) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out["threshold"] = threshold
    return out.sort_values(["arm", "seed"]).reset_index(drop=True)


def threshold_sweep(heads: pd.DataFrame, thresholds: Iterable[float] = THRESHOLDS) -> pd.DataFrame:
    """Number of previous-token heads per run at each threshold (final step)."""
    prev = head_scores(heads)
    rows = []
    for keys, g in prev.groupby(RUN_COLUMNS, sort=True):
        for t in thresholds:
            rows.append(dict(zip(RUN_COLUMNS, keys), threshold=float(t), n_prev_heads=int((g["score"] >= t).sum())))
    return pd.DataFrame(rows)


def prev_mass_over_steps(heads: pd.DataFrame) -> pd.DataFrame:
    """Total previous-token mass per run and step (every checkpoint, or every recorded step)."""
    df = heads[heads["metric"] == "prev_token"]
    return df.groupby(RUN_COLUMNS, as_index=False)["value"].sum().rename(columns={"value": "prev_mass"})


# ---------------------------------------------------------------------------------------------
# Comparing arms


@dataclass(frozen=True)
class PlannedClaim:
    """`arm` − `reference` on the per-seed column `measure`, with its smallest effect of interest (in its unit)."""

    measure: str
    arm: str
    sesoi: float
    reference: str = BASELINE
    why: str = ""

    def __post_init__(self) -> None:
        if not (self.sesoi > 0 and math.isfinite(self.sesoi)):
            raise AnalysisError(f"planned claim {self.measure} ({self.arm} − {self.reference}): the SESOI must be a "
                                f"positive number, not {self.sesoi!r}")
        if self.arm == self.reference:
            raise AnalysisError(f"planned claim {self.measure}: arm and reference are both {self.arm!r}")


PRIMARY_CLAIMS: tuple[PlannedClaim, ...] = (
    PlannedClaim("prev_mass", RECORD_ARM, 0.05, why=
                 "The sum of all heads' previous-token scores is the most direct measure of how much "
                 "attention goes to copying the previous token. 0.05 is a twentieth of one perfect "
                 "previous-token head: below it the smear moved too little attention to matter."),
    PlannedClaim("best_prev", RECORD_ARM, 0.05, why=
                 "The strongest previous-token head, on the 0–1 score: the smear frees up a head only if "
                 "even the best one weakens. 0.05 is about the seed-to-seed spread of a head's score."),
    PlannedClaim("n_prev_heads", RECORD_ARM, 0.5, why=
                 "Heads at or above the threshold: the count a reader sees. Half a head per seed on "
                 "average is the smallest change in a count that is more than rounding."),
)
"""At most three claims, fixed before the runs and corrected together with Holm; every other
comparison (other claims, other arms, other thresholds) is exploratory and uncorrected. Each SESOI
is in the claim's own unit (see `why`): a smaller true difference would not matter, so a claim that
is not significant is tested for equivalence within ±SESOI, and its power is given at the SESOI."""
if len(PRIMARY_CLAIMS) > 3:  # a fixed, small family: the point of declaring it in advance
    raise AssertionError("at most three primary claims")
SESOI = {p.measure: p.sesoi for p in reversed(PRIMARY_CLAIMS)}  # claim -> its smallest effect of interest
# exploratory: 0.01 nats/token of validation loss, ten times the record's own smear gain (3.2790 vs 3.2781)
SESOI["val_loss"] = 0.01
FREED_UP_CLAIMS = ("n_prev_heads", "prev_mass")  # "freed up" needs both lower (SPEC)

VERDICTS = ("lower", "higher", "equivalent within ±{sesoi:g}", "too few seeds to tell")


def primary_claim(claim: str, arm: str) -> PlannedClaim | None:
    """The declared primary claim for `arm` − baseline on `claim`, or None (exploratory)."""
    return next((p for p in PRIMARY_CLAIMS if p.measure == claim and p.arm == arm), None)


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "p=n/a"
    return "p<0.0001" if 0 < p < 1e-4 else f"p={p:.2g}"


def verdict(row: dict, alpha: float) -> tuple[str, bool]:
    """One of VERDICTS from a compared row: significance on the Holm p for a primary claim (the
    unadjusted p otherwise), then equivalence (TOST), else too few seeds to tell."""
    p = row["p_holm"] if row["role"] == "primary" else row["p_value"]
    if np.isfinite(p) and p < alpha and row["diff"] != 0:
        return ("lower" if row["diff"] < 0 else "higher"), True
    if np.isfinite(row["p_tost"]) and row["p_tost"] < alpha:
        return f"equivalent within ±{row['sesoi']:g}", False
    return "too few seeds to tell", False


def compare_arms(per_seed: pd.DataFrame, value_col: str, *, arm: str = RECORD_ARM, baseline: str = BASELINE,
                 sesoi: float | None = None, role: str | None = None, alpha: float = ALPHA,
                 n_boot: int = N_BOOT, rng_seed: int = BOOT_SEED) -> dict:
    """`arm` − `baseline` for one per-seed column.

    Paired by seed (the seeds both arms have, when at least 2): mean paired difference with its t 95%
    CI, paired t p, exact sign-flip p (and the smallest it can reach), the correlation within pairs,
    the SD of the differences with its 80% upper bound, and — given a SESOI — the TOST equivalence p
    and the power at the SESOI (observed and upper-bound SD). Unpaired (too few shared seeds): Welch p
    and a bootstrap CI, labelled so. `role` defaults to "primary" for a declared PRIMARY_CLAIMS entry
    and "exploratory" otherwise; the SESOI defaults to the claim's declared one (SESOI), if any. `p_holm` is the p itself here; compare_all
    adjusts the primary family together. When no test can be made the verdict says why.
    """
    if value_col not in per_seed.columns:
        raise AnalysisError(f"no per-seed column {value_col!r} (have: {', '.join(per_seed.columns)})")
    declared = primary_claim(value_col, arm)
    role = role or ("primary" if declared else "exploratory")
    if sesoi is None:  # a SESOI belongs to the measure: other arms are tested for equivalence against it too
        sesoi = declared.sesoi if declared else SESOI.get(value_col)
    df = per_seed[["arm", "seed", value_col]].dropna()
    vals = {a: df[df["arm"] == a].drop_duplicates("seed").set_index("seed")[value_col].astype(float).sort_index()
            for a in (baseline, arm)}
    b, s = vals[baseline], vals[arm]
    threshold = float(per_seed["threshold"].iloc[0]) if "threshold" in per_seed and len(per_seed) else DEFAULT_THRESHOLD
    nan = math.nan
    out = dict(claim=value_col, label=claim_label(value_col, threshold), arm=arm, baseline=baseline, role=role,
               sesoi=float(sesoi) if sesoi else nan, n_baseline=len(b), n_arm=len(s), n_pairs=0, paired=False,
               mean_baseline=float(b.mean()) if len(b) else nan, mean_arm=float(s.mean()) if len(s) else nan,
               diff=nan, sd_diff=nan, sd_diff_upper=nan, r_pairs=nan, ci_low=nan, ci_high=nan, ci_method="",
               test="", p_value=nan, p_signflip=nan, p_signflip_min=nan, p_holm=nan, p_tost=nan,
               power_obs=nan, power_upper=nan, significant=None, verdict="", note="")
    if len(b) and len(s):
        out["diff"] = out["mean_arm"] - out["mean_baseline"]
    missing = [a for a in (baseline, arm) if not len(vals[a])]
    if missing:
        why = "no values" if (per_seed["arm"] == missing[0]).any() else "no runs"
        out["verdict"] = f"absent: arm missing ({' and '.join(missing)}: {why})"
        return out

    common = b.index.intersection(s.index)
    if len(common) >= 2:
        bp, sp = b[common].to_numpy(), s[common].to_numpy()
        d = sp - bp
        n = len(d)
        sd = float(d.std(ddof=1))
        lo, hi = t_ci(d)
        out.update(paired=True, n_pairs=n, mean_baseline=float(bp.mean()), mean_arm=float(sp.mean()),
                   diff=float(d.mean()), sd_diff=sd, sd_diff_upper=sd_upper(sd, n), ci_low=lo, ci_high=hi,
                   ci_method="t, paired", test="paired t", p_value=paired_t(d), p_signflip=sign_flip_p(d),
                   p_signflip_min=sign_flip_min_p(n))
        if n >= 3 and np.ptp(bp) > 0 and np.ptp(sp) > 0:
            out["r_pairs"] = float(np.corrcoef(bp, sp)[0, 1])
        if sd == 0:
            out["note"] = "no spread in the paired differences, so the t tests are decided from the mean alone"
        if len(common) < max(len(b), len(s)):
            out["note"] = (out["note"] + "; " if out["note"] else "") + \
                f"paired on the {n} shared seeds ({_join(common)}), unpaired seeds left out"
        if sesoi:
            out.update(p_tost=tost_p(d, sesoi), power_obs=paired_power(sesoi, sd, n, alpha),
                       power_upper=paired_power(sesoi, out["sd_diff_upper"], n, alpha))
    elif min(len(b), len(s)) >= 2:
        lo, hi = bootstrap_ci(s.to_numpy(), b.to_numpy(), n_boot, rng_seed)
        out.update(ci_low=lo, ci_high=hi, ci_method="bootstrap, unpaired", test="Welch, unpaired",
                   p_value=welch_p(s.to_numpy(), b.to_numpy()),
                   note="seeds differ between the arms: compared unpaired (Welch, bootstrap)")
    else:
        out["verdict"] = (f"absent: fewer than 2 seeds per arm ({baseline} {len(b)}, {arm} {len(s)})"
                          if min(len(b), len(s)) < 2 else
                          f"absent: fewer than 2 shared seeds to pair ({baseline} {_join(b.index)}; {arm} {_join(s.index)})")
        return out
    out["p_holm"] = out["p_value"]
    out["verdict"], out["significant"] = verdict(out, alpha)
    return out



def compare_all(per_seed: pd.DataFrame, claims: Iterable[str] | None = None, *, alpha: float = ALPHA,
                **kw) -> pd.DataFrame:
    """Every non-baseline arm against the baseline on each claim with a value (default: all CLAIMS
    present), primary claims first; the primary family's p-values adjusted together (Holm)."""
    wanted = [c for c in (claims or CLAIMS) if c in per_seed.columns and per_seed[c].notna().any()]
    arms = [a for a in arm_order(per_seed["arm"]) if a != BASELINE] or [RECORD_ARM]
    rows = []
    for p in PRIMARY_CLAIMS:  # always the whole family, so Holm does not depend on what is shown
        if p.measure in per_seed.columns and per_seed[p.measure].notna().any():
            rows.append(compare_arms(per_seed, p.measure, arm=p.arm, alpha=alpha, **kw))
    primary = [r for r in rows if "p_value" in r and not r["verdict"].startswith("absent")]
    declared = len(PRIMARY_CLAIMS)
    adjusted = holm([r["p_value"] for r in primary] + [math.nan] * (declared - len(primary)))
    for r, p in zip(primary, adjusted):
        r["p_holm"] = float(p)
        r["verdict"], r["significant"] = verdict(r, alpha)
    rows = [r for r in rows if r["claim"] in wanted]
    for arm in arms:
        for c in wanted:
            if primary_claim(c, arm) is None:
                rows.append(compare_arms(per_seed, c, arm=arm, alpha=alpha, **kw))
    return pd.DataFrame(rows)


def compare_thresholds(heads: pd.DataFrame, thresholds: Iterable[float] = THRESHOLDS, **kw) -> pd.DataFrame:
    """The previous-token head count of each arm against the baseline at each threshold (exploratory)."""
    sweep = threshold_sweep(heads, thresholds)
    arms = [a for a in arm_order(sweep["arm"]) if a != BASELINE] or [RECORD_ARM]
    rows = []
    for t, g in sweep.groupby("threshold"):
        for arm in arms:
            rows.append(dict(threshold=float(t), **compare_arms(g, "n_prev_heads", arm=arm, role="exploratory", **kw)))
    return pd.DataFrame(rows)


def plan_seeds(comparisons: pd.DataFrame, power: float = 0.8, alpha: float = ALPHA) -> pd.DataFrame:
    """For each paired primary claim: the paired seeds needed for `power` at its SESOI, at the
    observed SD of the differences and at its 80% upper bound (for sizing the next study)."""
    rows = []
    for r in comparisons.to_dict("records") if len(comparisons) else []:
        if r["role"] != "primary" or not r["paired"] or not np.isfinite(r["sesoi"]):
            continue
        need = lambda sd: seeds_needed(r["sesoi"], sd, power, alpha) if np.isfinite(sd) else math.nan
        rows.append(dict(claim=r["claim"], label=r["label"], arm=r["arm"], sesoi=r["sesoi"], n_pairs=r["n_pairs"],
                         sd_diff=r["sd_diff"], sd_diff_upper=r["sd_diff_upper"], seeds_obs=need(r["sd_diff"]),
                         seeds_upper=need(r["sd_diff_upper"])))
    return pd.DataFrame(rows)


def _claim_text(r: dict) -> str:
    detail = f"Holm {_fmt_p(r['p_holm'])}" if r["role"] == "primary" else _fmt_p(r["p_value"])
    if not r["significant"] and np.isfinite(r.get("p_tost", math.nan)):
        detail += f", TOST {_fmt_p(r['p_tost'])}"
    return f"{r['label']}: {r['verdict']}" + ("" if r["verdict"].startswith("absent") else f" ({detail})")


def freed_up_verdict(comparisons: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> str:
    """The conclusion on "the smear frees up heads" that the primary comparisons support: both the
    number of previous-token heads and the previous-token mass lower in the smear arm, after Holm."""
    rows = {r["claim"]: r for r in comparisons.to_dict("records")
            if r.get("arm", RECORD_ARM) == RECORD_ARM} if len(comparisons) else {}
    for claim in FREED_UP_CLAIMS:
        if claim not in rows:
            return f"Cannot decide whether heads are freed up: no values for {claim_label(claim, threshold)}."
    used = [rows[c] for c in FREED_UP_CLAIMS]
    parts = "; ".join(_claim_text(r) for r in used)
    verdicts = [r["verdict"] for r in used]
    if any(v.startswith("absent") for v in verdicts):
        return "Cannot decide whether heads are freed up; " + "; ".join(
            _claim_text(r) for r in used if r["verdict"].startswith("absent")) + "."
    if all(v == "lower" for v in verdicts):
        return ("Heads are freed up: the smear arm has significantly fewer previous-token heads and less "
                "previous-token mass than the baseline (" + parts + ").")
    if any(v == "lower" for v in verdicts):
        return "Only partly supported — heads are not shown to be freed up, which needs both lower: " + parts + "."
    if all(v.startswith("equivalent") for v in verdicts):
        return ("Heads are not freed up: the smear arm matches the baseline within the smallest effects of "
                "interest (" + parts + ").")
    if any(v == "higher" for v in verdicts):
        return "The numbers do not show heads freed up: " + parts + "."
    return "Too few seeds to tell whether heads are freed up: " + parts + "."


@dataclass
class Summary:
    per_seed: pd.DataFrame
    comparisons: pd.DataFrame
    thresholds: pd.DataFrame
    verdict: str
    threshold: float

    @property
    def primary(self) -> pd.DataFrame:
        c = self.comparisons
        return c[c["role"] == "primary"] if len(c) else c

    @property
    def exploratory(self) -> pd.DataFrame:
        c = self.comparisons
        return c[c["role"] != "primary"] if len(c) else c


def summarize(tables: Tables, threshold: float = DEFAULT_THRESHOLD, **kw) -> Summary:
    """Everything the report and the notebooks state about the arms, from one call."""
    per_seed = per_seed_claims(tables.heads, threshold)
    if tables.losses is not None:
        per_seed = per_seed.merge(tables.losses, on="run", how="left")
    comparisons = compare_all(per_seed, **kw)
    return Summary(per_seed, comparisons, compare_thresholds(tables.heads, **kw),
                   freed_up_verdict(comparisons, threshold), threshold)

# ---------------------------------------------------------------------------------------------
# Smear gate


def smear_final(smear: pd.DataFrame) -> pd.DataFrame:
    """λ and the coefficient's summary at each smear run's last step."""
    cols = ["run", "seed", "step", "tokens", "lambda", "gate_mean", "coef_mean", "coef_p05", "coef_p50", "coef_p95"]
    return final_rows(smear[smear["arm"] == "smear"])[cols].sort_values("seed").reset_index(drop=True)


def token_class(text: str) -> str:
    """Classify a decoded token: word start (leading space), continuation, punctuation, digits, whitespace, other."""
    if not isinstance(text, str) or text == "":
        return "other"
    if text.isspace():
        return "whitespace"
    core = text.strip()
    if core.isdigit():
        return "digits"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    if text[0].isspace() and core[0].isalpha():
        return "word start"
    if text[0].isalpha():
        return "continuation"
    return "other"


def with_token_class(df: pd.DataFrame) -> pd.DataFrame:
    """The table with a `token_class` column from its `text` column."""
    out = df.copy()
    out["token_class"] = pd.Categorical([token_class(t) for t in out["text"]], categories=TOKEN_CLASSES)
    return out


def vocab_extremes(vocab: pd.DataFrame, k: int = 15) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The k tokens with the highest and the lowest coefficient (mean over seeds, with min and max)."""
    vocab = final_rows(vocab)
    vocab = vocab[np.isfinite(vocab["coefficient"].astype(float))]
    g = (vocab.groupby(["token_id", "text"], as_index=False)["coefficient"]
         .agg(coefficient="mean", lo="min", hi="max", n_seeds="count"))
    g = g.sort_values("coefficient", kind="stable")
    return g.tail(k).iloc[::-1].reset_index(drop=True), g.head(k).reset_index(drop=True)

# What `analysis.stats` (the package) re-exports: the claims, and the statistics and tables they rest on.
__all__ = [
    # array statistics (analysis.stats.inference)
    "ALPHA", "BOOT_SEED", "N_BOOT", "SD_UPPER_LEVEL", "SIGN_FLIP_DRAWS", "SIGN_FLIP_EXACT_MAX", "bootstrap_ci", "holm",
    "paired_power", "paired_t", "sd_upper", "seeds_needed", "sign_flip_min_p", "sign_flip_p", "t_ci", "tost_p",
    "welch_ci", "welch_p",
    # the tables (analysis.schema, analysis.tables)
    "HEAD_METRICS", "MECHANISM_COLUMNS", "RECORD_COLUMNS", "RUN_COLUMNS", "TABLE_COLUMNS", "ALL_COLUMNS", "ARMS",
    "BASELINE", "RECORD_ARM", "RECORD_TABLES", "Tables", "arm_order", "final_losses", "load_tables", "read_manifests",
    "validate_tables", "window_growth_tokens", "AnalysisError",
    # the claims (this module)
    "DEFAULT_THRESHOLD", "THRESHOLDS", "CLAIMS", "claim_label", "TOKEN_CLASSES", "final_rows", "head_scores",
    "baseline_prev_positions", "per_seed_claims", "threshold_sweep", "prev_mass_over_steps", "PlannedClaim",
    "PRIMARY_CLAIMS", "SESOI", "FREED_UP_CLAIMS", "VERDICTS", "primary_claim", "compare_arms", "compare_all",
    "compare_thresholds", "plan_seeds", "verdict", "freed_up_verdict", "Summary", "summarize", "smear_final", "token_class",
    "with_token_class", "vocab_extremes",
]
