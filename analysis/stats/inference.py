"""Paired-seed statistics: pure functions of arrays (paired t, exact sign flips, t CI, TOST, power,
the upper bound on a spread, seeds needed, Holm; Welch and the bootstrap for unpaired arms).

`analysis.stats` applies them to the tables; these know nothing of runs or arms.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np

from trainer.errors import AnalysisError

ALPHA = 0.05
N_BOOT = 10_000
BOOT_SEED = 0  # fixed so a report is reproducible to the digit




def _st():
    from scipy import stats as st  # imported here: scipy.stats costs ~0.5 s and few callers need it

    return st


def paired_t(d: np.ndarray) -> float:
    """Two-sided paired t p-value of the paired differences `d` (scipy's ttest_rel on the pairs).

    Without spread in `d` the t statistic is undefined; the p-value is then decided from the mean
    alone: 0 when it is not 0, else 1.
    """
    d = np.asarray(d, float)
    if len(d) < 2:
        return math.nan
    if np.ptp(d) == 0:
        return 0.0 if d[0] != 0 else 1.0
    with warnings.catch_warnings():  # near-identical differences warn about precision; the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(_st().ttest_1samp(d, 0.0).pvalue)  # identical to ttest_rel(arm, baseline)


SIGN_FLIP_EXACT_MAX = 40  # up to here every one of the 2ⁿ sign patterns is counted (meet in the middle)
SIGN_FLIP_DRAWS = 2**20  # above it, this many random patterns (fixed RNG seed)


def _pattern_sums(x: np.ndarray) -> np.ndarray:
    """Σ ±x_i over all 2^len(x) sign patterns."""
    sums = np.zeros(1)
    for v in x:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def sign_flip_p(d: np.ndarray, rng_seed: int = BOOT_SEED) -> float:
    """Two-sided sign-flip permutation p-value of the mean paired difference.

    Under "no effect" each pair's difference is as likely to have either sign, so the p-value is the
    share of the 2ⁿ sign patterns whose |Σ ±dᵢ| reaches the observed |Σ dᵢ| (the observed pattern
    included; a zero difference flips to itself, so it counts twice, as in a plain enumeration).
    Exact up to SIGN_FLIP_EXACT_MAX pairs: the sums of each half's patterns are enumerated and paired
    by sorting. Above that, SIGN_FLIP_DRAWS random patterns estimate it. NaN with no pairs.
    """
    d = np.asarray(d, float)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.sum())
    thr = observed - 1e-9 * max(np.abs(d).sum(), 1e-300)  # the same sum in another order may round differently
    if thr <= 0:
        return 1.0  # every pattern reaches a zero sum
    if n > SIGN_FLIP_EXACT_MAX:
        rng = np.random.default_rng(rng_seed)
        hits = 0
        for _ in range(SIGN_FLIP_DRAWS // 2**14):
            signs = rng.choice((-1.0, 1.0), size=(2**14, n))
            hits += int((np.abs(signs @ d) >= thr).sum())
        return (hits + 1) / (SIGN_FLIP_DRAWS + 1)
    a, b = _pattern_sums(d[: n // 2]), np.sort(_pattern_sums(d[n // 2:]))
    # |a + b| ≥ thr  ⇔  b ≥ thr − a  or  b ≤ −thr − a (disjoint, as thr > 0)
    upper = len(b) - np.searchsorted(b, thr - a, side="left")
    lower = np.searchsorted(b, -thr - a, side="right")
    return float((upper.sum() + lower.sum()) / 2.0**n)


def sign_flip_min_p(n: int) -> float:
    """The smallest p-value the two-sided sign-flip test can give with n pairs: 2 / 2ⁿ (0.25 at 3)."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else math.nan


def t_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """t-based confidence interval of the mean of `d` (NaN with fewer than 2 values)."""
    d = np.asarray(d, float)
    if len(d) < 2:
        return math.nan, math.nan
    half = _st().t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def tost_p(d: np.ndarray, sesoi: float) -> float:
    """Equivalence p-value (two one-sided t tests) that the mean of `d` lies within ±sesoi.

    The larger of the p-values of H0: μ ≤ −sesoi and H0: μ ≥ +sesoi; below α means the 90% t CI
    lies inside ±sesoi. Without spread: 0 when |mean| < sesoi, else 1.
    """
    d = np.asarray(d, float)
    if len(d) < 2 or not sesoi > 0:
        return math.nan
    mean, n = float(d.mean()), len(d)
    if np.ptp(d) == 0:
        return 0.0 if abs(mean) < sesoi else 1.0
    st = _st()
    se = d.std(ddof=1) / math.sqrt(n)
    p_low = st.t.sf((mean + sesoi) / se, n - 1)  # against μ ≤ −sesoi
    p_high = st.t.cdf((mean - sesoi) / se, n - 1)  # against μ ≥ +sesoi
    return float(max(p_low, p_high))


def paired_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t test at level α to detect a mean difference `effect` with n
    pairs whose differences have standard deviation `sd` (noncentral t)."""
    if n < 2 or not np.isfinite(sd) or not np.isfinite(effect):
        return math.nan
    if sd == 0:
        return 1.0 if effect != 0 else alpha
    st = _st()
    df, nc = n - 1, abs(effect) * math.sqrt(n) / sd
    crit = st.t.ppf(1 - alpha / 2, df)
    upper, wrong_side = st.nct.sf(crit, df, nc), st.nct.cdf(-crit, df, nc)
    # scipy's far tail can come back NaN at a large noncentrality, where it is ~0 (rejecting the wrong way)
    return float(min(1.0, upper + (wrong_side if np.isfinite(wrong_side) else 0.0)))


SD_UPPER_LEVEL = 0.8


def sd_upper(sd: float, n: int, level: float = SD_UPPER_LEVEL) -> float:
    """One-sided `level` upper confidence bound of σ from a sample SD of n values:
    s·√((n−1)/χ²₁₋level(n−1)). With 3 values the bound is 2.1 × s at 80%: their spread is barely known."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    return float(sd * math.sqrt((n - 1) / _st().chi2.ppf(1 - level, n - 1)))


def seeds_needed(effect: float, sd: float, power: float = 0.8, alpha: float = ALPHA, max_n: int = 1_000_000) -> int:
    """Planning: the fewest paired seeds for the two-sided paired t test to reach `power` at a true
    mean difference `effect` when the paired differences have standard deviation `sd`.

    E.g. effect 0.1 at σ 0.086 needs 8 pairs, at σ 0.182 (the 80% upper bound from 3 pairs) 28.
    """
    if not (effect and np.isfinite(effect) and np.isfinite(sd) and sd >= 0 and 0 < power < 1):
        raise AnalysisError(f"seeds_needed: needs a non-zero effect, a finite sd ≥ 0 and 0 < power < 1 "
                            f"(got effect={effect}, sd={sd}, power={power})")
    if paired_power(effect, sd, 2, alpha) >= power:
        return 2
    lo, hi = 2, 4  # power rises with n: double until reached, then bisect
    while paired_power(effect, sd, hi, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > max_n:
            raise AnalysisError(f"seeds_needed: more than {max_n:,} pairs for effect {effect} at sd {sd}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if paired_power(effect, sd, mid, alpha) >= power else (mid, hi)
    return hi


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-adjusted p-values (step-down, monotone, capped at 1). A NaN p (a claim that could not be
    tested) counts as p = 1 among the family, so it still takes its share of α; its adjusted p stays NaN."""
    p = np.asarray(list(pvalues), float)
    filled = np.where(np.isfinite(p), p, 1.0)
    m = len(p)
    order = np.argsort(filled, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * filled[order]))
    out = np.empty(m)
    out[order] = adj
    return np.where(np.isfinite(p), out, math.nan)


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t p-value for unpaired arms (no spread in either: from the means alone)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        return math.nan
    if a.var() == 0 and b.var() == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(_st().ttest_ind(a, b, equal_var=False).pvalue)


def welch_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Welch t confidence interval of mean(a) − mean(b) for unpaired samples (NaN with fewer than 2 in either)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2 or (a.var() == 0 and b.var() == 0):
        return math.nan, math.nan
    ci = _st().ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return float(ci.low), float(ci.high)


def bootstrap_ci(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, rng_seed: int = BOOT_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a) − mean(b), resampling each (unpaired) arm on its own."""
    rng = np.random.default_rng(rng_seed)
    a, b = np.asarray(a, float), np.asarray(b, float)
    boots = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(axis=1)
             - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(axis=1))
    lo, hi = np.percentile(boots, [50 - 50 * level, 50 + 50 * level])
    return float(lo), float(hi)
