"""Steps saved at matched loss: an arm's loss difference in the speedrun's currency, training steps.

A run's learning-rate and window schedules depend on its step budget, so a loss logged part way through a
run is not a shorter run's loss. The baseline is therefore trained as full runs at a few budgets around the
study's (`smearlens study --steps N`, one study per budget), and its final validation loss is fitted against
x = ln(steps) near the study's budget n0 (x0 = ln n0):

    L[s, b] = a_s + β1·(x_b − x0) + β2·(x_b − x0)²      (β2 only with ≥ 4 budgets; else a line)

by OLS with an intercept per seed: the shape β is pooled over seeds (and taken as shared by every arm: the
exchange rate), so it needs fewer seeds than an arm's contrast. The 1× point is the study's own baseline.
Each seed's curve is anchored at its own 1× baseline loss, curve_s(x) = L_base[s] + β1·u + β2·u² with
u = x − x0, so a study seed without budget runs still gets a curve, and an arm equal to its baseline is worth
exactly n0 steps. For arm A and seed s, the matched steps n* solve curve_s(ln n*) = L_A[s]: the baseline
steps that reach the arm's loss. Steps saved = n* − n0 (positive: the arm's loss is lower, so the baseline
needs more steps to reach it), also as a percentage of n0. A loss the fitted budgets do not reach (u outside
[ln(smallest budget), ln(largest budget)] − x0, or no root on the curve's branch through 1×) gets NaN and the
status "beyond the fitted budgets", never an extrapolated number.

The per-arm CI adds two independent errors in variance: the seeds' (the per-seed values' spread / √n, with
n − 1 degrees of freedom: the paired contrast) and the shape's (the delta method, gᵀ Cov(β) g with g the
mean over seeds of ∂(value)/∂β, with the fit's residual degrees of freedom), and takes a t quantile at the
Welch–Satterthwaite degrees of freedom of the sum. Why not a bootstrap: with the 2–8 seeds a budget grid
typically has, a percentile bootstrap over seeds is too narrow (it has no t correction) and degenerate at 2
seeds; the delta method is exact for the linear shape up to the exp() in the percentage, which is nearly
linear over the few percent a grid spans. The two errors share each seed's 1× baseline loss (it anchors the
curve and is one of the fit's points), a second-order term left out. Simulated (`tests/test_steps_saved.py`),
the 95% interval covers the truth 90% of the time at 2 seeds (Welch–Satterthwaite is rough at 1 degree of
freedom), 94% at 4 and 95–96% at 8.

Seeds beyond the fitted budgets are left out of an arm's mean, which then lacks its most extreme seeds: with
the powered study's noise (≈ 0.01 nats a run) single seeds often fall past a 1.08× budget. So the summary also
converts the mean paired loss difference (`loss_to_steps`: its paired t CI plus the shape's error), which
uses every seed and stays inside the budgets; simulated at that scale it covers the truth 96% of the time
where the mean over the seeds inside covers it 84%.

**The arm's own curve** (the speedrun's currency for an arm *better* than the baseline, whose loss no
baseline budget may reach: past one epoch the baseline gets worse). The speedrun cuts steps until the target
loss is barely met, so an arm trained at the same reduced budgets gets a curve of its own (same fit: a shape
shared by the arm's seeds, each seed anchored at the arm's own 1× loss), and the question turns round: the steps
n_A at which the arm's curve reaches its seed's baseline 1× loss, curve_A,s(ln n_A) = L_base[s]. Steps saved =
n0 − n_A, positive when the arm is better, as before. Every function below takes the curve from the `Shape`
(`Shape.curve`: the baseline's or an arm's), so the inversion, its CI and the tables are the same code; every
table carries a `curve` column saying whose curve it read.

Pure functions (DataFrames and arrays in, tidy DataFrames out), but for `read_study_losses`, which reads a
study folder's plan and its runs' final validation losses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.stats.inference import ALPHA, t_ci
from analysis.tables import BASELINE, RECORD_ARM, arm_order
from trainer.errors import AnalysisError, one_line

# The record (SPEC): the smear's run is 1,645 steps; its author put the smear's gain "closer to 5 steps".
RECORD_STEPS = 1645
RECORD_AUTHOR_STEPS = 5
QUADRATIC_FROM = 4  # budgets (1× included) from which the shape gets a curvature term
BEYOND = "beyond the fitted budgets"
STATUS_OK = "ok"
STATUS_NO_BASELINE = "no baseline run for this seed at 1×"
_TOL = 1e-9  # in ln(steps): an arm exactly at a budget's loss is inside the range
# what `smearlens steps-saved` writes (beside the study's report.md, which then has the section) and the figure
SUMMARY_FILE, SEEDS_FILE, RATE_FILE, BUDGETS_FILE = ("steps_saved.csv", "steps_saved_seeds.csv",
                                                     "steps_saved_rate.csv", "steps_saved_budgets.csv")
FIGURE = "steps_saved"

POINT_COLUMNS = ["seed", "steps", "val_loss"]
SEED_COLUMNS = ["arm", "curve", "seed", "baseline_loss", "arm_loss", "loss_diff", "matched_steps", "steps_saved",
                "pct_saved", "status"]
SUMMARY_COLUMNS = ["arm", "curve", "preset_steps", "n_seeds", "n", "n_beyond", "loss_diff", "loss_ci_low", "loss_ci_high",
                   "steps_saved", "ci_low", "ci_high", "pct_saved", "pct_ci_low", "pct_ci_high", "df",
                   "pct_at_mean_loss", "pct_at_mean_ci_low", "pct_at_mean_ci_high", "at_mean_status", "shape", "verdict"]
RATE_COLUMNS = ["curve", "preset_steps", "shape", "budgets", "n_seeds", "n_points", "df", "beta1", "beta1_se", "beta2",
                "beta2_se", "sigma", "nats_per_pct", "ci_low", "ci_high"]


def _t(df: float, level: float = 1 - ALPHA) -> float:
    from scipy import stats as st

    return float(st.t.ppf(0.5 + level / 2, df)) if df > 0 else math.nan


# ---------------------------------------------------------------------------------------------
# The shape: the baseline's final loss against ln(steps), pooled over seeds


@dataclass(frozen=True)
class Shape:
    """The fitted shape of a final loss in u = ln(steps / n0), shared by seeds: the baseline's (shared by every
    arm: the exchange rate) or an arm's own (`curve`, the arm's name: the speedrun's currency)."""

    n0: int  # the study's budget (1×)
    beta: np.ndarray  # [β1] or [β1, β2]
    cov: np.ndarray  # Cov(β), NaN without residual degrees of freedom
    df: int  # residual degrees of freedom of the fit
    sigma: float  # residual SD (nats)
    budgets: tuple[int, ...]  # the step counts fitted, 1× included
    n_seeds: int
    n_points: int
    curve: str = BASELINE  # whose runs the shape was fitted on

    @property
    def sign(self) -> int:
        """+1 on the baseline's curve (steps saved = n* − n0), −1 on an arm's own (steps saved = n0 − n_A)."""
        return 1 if self.curve == BASELINE else -1

    def pct_saved(self, u: np.ndarray | float) -> np.ndarray:
        """The percentage of n0 saved when the matched steps are n0·e^u on this curve."""
        return self.sign * 100 * np.expm1(np.asarray(u, float))

    def u_at_pct(self, pct: np.ndarray | float) -> np.ndarray:
        """The inverse of `pct_saved`."""
        return np.log1p(self.sign * np.asarray(pct, float) / 100)

    @property
    def degree(self) -> int:
        return len(self.beta)

    @property
    def b1(self) -> float:
        return float(self.beta[0])

    @property
    def b2(self) -> float:
        return float(self.beta[1]) if self.degree > 1 else 0.0

    @property
    def u_range(self) -> tuple[float, float]:
        """ln(smallest budget / n0), ln(largest budget / n0): where the fit has data."""
        return math.log(min(self.budgets) / self.n0), math.log(max(self.budgets) / self.n0)

    @property
    def turning_steps(self) -> float:
        """The steps, strictly inside the fitted budgets, at which the quadratic curve turns (NaN where it is
        monotone over them). The final loss is then no one-to-one function of the budget: a loss read off the
        branch through 1× is also reached beyond the turn, so the steps saved there are to the nearest budget
        that reaches it, not the fewest."""
        if self.b2 == 0:
            return math.nan
        u = -self.b1 / (2 * self.b2)
        lo, hi = self.u_range
        return self.n0 * math.exp(u) if lo < u < hi else math.nan

    def describe(self) -> str:
        kind = "quadratic" if self.degree > 1 else "linear"
        text = f"{kind} in ln(steps), {len(self.budgets)} budgets ({', '.join(map(str, self.budgets))})"
        turn = self.turning_steps
        return text + (f"; not monotone: it turns at {turn:,.0f} steps, inside the budgets" if math.isfinite(turn)
                       else "")

    def delta(self, u: np.ndarray | float) -> np.ndarray:
        """curve(x0 + u) − curve(x0): the loss change from 1× to steps n0·e^u."""
        u = np.asarray(u, float)
        return self.b1 * u + self.b2 * u * u


def fit_shape(points: pd.DataFrame, n0: int, degree: int | None = None, curve: str = BASELINE) -> Shape:
    """OLS of one curve's final losses (`seed`, `steps`, `val_loss`: one row a run; the baseline's unless
    `curve` names an arm) on u = ln(steps/n0) (and u² with ≥ QUADRATIC_FROM budgets, unless `degree` says) with
    an intercept per seed."""
    missing = [c for c in POINT_COLUMNS if c not in points.columns]
    if missing:
        raise AnalysisError(f"budget points lack column(s) {', '.join(missing)}")
    df = points[POINT_COLUMNS].dropna()
    if (df["steps"] <= 0).any():
        raise AnalysisError("budget points: steps must be positive")
    if df.duplicated(["seed", "steps"]).any():
        dup = df[df.duplicated(["seed", "steps"], keep=False)].drop_duplicates(["seed", "steps"])
        raise AnalysisError(f"several {curve} runs for one seed and budget: "
                            + ", ".join(f"seed {s} at {n} steps" for s, n in zip(dup["seed"], dup["steps"])))
    budgets = tuple(sorted(int(b) for b in df["steps"].unique()))
    if len(budgets) < 2:
        raise AnalysisError(f"{len(budgets)} budget(s) ({', '.join(map(str, budgets)) or 'none'}): "
                            "the shape needs at least 2 step counts")
    per_seed = df.groupby("seed")["steps"].nunique()
    if not (per_seed >= 2).any():
        raise AnalysisError("no seed has runs at 2 or more budgets: the shape within a seed cannot be fitted")
    degree = degree or (2 if len(budgets) >= QUADRATIC_FROM else 1)
    if degree not in (1, 2) or (degree == 2 and len(budgets) < 3):
        raise AnalysisError(f"a shape of degree {degree} needs {'3' if degree == 2 else '1–2'} or more budgets")
    seeds = sorted(df["seed"].unique())
    u = np.log(df["steps"].to_numpy(float) / n0)
    onehot = (df["seed"].to_numpy()[:, None] == np.array(seeds)[None, :]).astype(float)
    shape_cols = np.column_stack([u ** (k + 1) for k in range(degree)])
    X = np.hstack([onehot, shape_cols])
    y = df["val_loss"].to_numpy(float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    rank = np.linalg.matrix_rank(X)
    dof = len(y) - rank
    resid = y - X @ coef
    k = len(seeds)
    sigma = float(np.sqrt(resid @ resid / dof)) if dof > 0 else math.nan
    cov = (sigma ** 2 * np.linalg.pinv(X.T @ X))[k:, k:] if dof > 0 else np.full((degree, degree), math.nan)
    return Shape(n0=int(n0), beta=coef[k:], cov=cov, df=int(dof), sigma=sigma, budgets=budgets,
                 n_seeds=k, n_points=len(y), curve=curve)


def exchange_rate(shape: Shape, level: float = 1 - ALPHA) -> pd.DataFrame:
    """The exchange rate at 1× on the shape's curve: nats of validation loss that 1% more steps lowers it by
    (−dL/d% = −β1/100, since d ln(steps) = 0.01 per 1% at 1×), with a t CI at the fit's residual degrees of
    freedom."""
    se = np.sqrt(np.diag(shape.cov))
    rate, rate_se = -shape.b1 / 100, float(se[0]) / 100
    half = _t(shape.df, level) * rate_se
    return pd.DataFrame([dict(curve=shape.curve, preset_steps=shape.n0, shape=shape.describe(),
                              budgets=" ".join(map(str, shape.budgets)), n_seeds=shape.n_seeds,
                              n_points=shape.n_points, df=shape.df, beta1=shape.b1, beta1_se=float(se[0]),
                              beta2=shape.b2 if shape.degree > 1 else math.nan,
                              beta2_se=float(se[1]) if shape.degree > 1 else math.nan, sigma=shape.sigma,
                              nats_per_pct=rate, ci_low=rate - half, ci_high=rate + half)], columns=RATE_COLUMNS)


# ---------------------------------------------------------------------------------------------
# The inversion


def matched_log_steps(loss_diff: np.ndarray | float, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """For a loss difference arm − baseline at 1×: u = ln(n/n0) on the curve's branch through 1×, where the
    baseline's curve reaches the arm's loss (curve(x0 + u) − curve(x0) = loss_diff) or, on an arm's own curve,
    where the arm reaches the baseline's (= −loss_diff); and a status per value: "ok", or BEYOND (with which
    end) where the fitted budgets do not reach that loss."""
    d = shape.sign * np.atleast_1d(np.asarray(loss_diff, float))
    b1, b2 = shape.b1, shape.b2
    disc = b1 * b1 + 4 * b2 * d
    with np.errstate(invalid="ignore", divide="ignore"):
        # the root through u = 0 at d = 0, in the form that stays exact as β2 → 0
        u = 2 * d / (b1 + math.copysign(1.0, b1) * np.sqrt(disc))
    lo, hi = shape.u_range
    status = np.full(d.shape, STATUS_OK, dtype=object)
    lower = b1 < 0  # the usual case: more steps, lower loss
    # no root: past the curve's turning point (the loss is one the curve never reaches)
    none = ~np.isfinite(u) & np.isfinite(d)
    status[none] = f"{BEYOND} (the fitted curve never reaches this loss)"
    below, above = u < lo - _TOL, u > hi + _TOL
    few, many = (f"{BEYOND} (above the smallest budget's loss)", f"{BEYOND} (below the largest budget's loss)")
    status[below] = few if lower else many
    status[above] = many if lower else few
    status[np.isnan(d)] = "no loss"
    u = np.where(status == STATUS_OK, u, np.nan)
    return u, status


def _grad(u: np.ndarray, shape: Shape) -> np.ndarray:
    """∂(pct saved)/∂β per value: from β1·u + β2·u² = ±d, ∂u/∂βk = −u^k / (β1 + 2β2·u); ∂pct/∂u = ±100·e^u."""
    slope = shape.b1 + 2 * shape.b2 * u
    cols = [-(u ** (k + 1)) / slope for k in range(shape.degree)]
    return (shape.sign * 100 * np.exp(u))[:, None] * np.column_stack(cols)


def loss_to_steps(loss_diff: float, shape: Shape, ci_low: float | None = None, ci_high: float | None = None,
                  df: float | None = None, level: float = 1 - ALPHA) -> dict:
    """Any loss difference (arm − baseline at 1×, nats; negative: the arm is better) as steps: the matched
    steps on the shape's curve (the baseline steps n* that reach the arm's loss, or the arm's steps n_A that
    reach the baseline's), steps saved (n* − n0, or n0 − n_A) and their percentage of n0, with a CI. Given the loss's CI
    (a t CI with `df` degrees of freedom, or a normal one without), its error and the shape's are added in
    variance (module docstring); without it, the CI carries the shape's error alone."""
    u, status = matched_log_steps(loss_diff, shape)
    u0, s0 = float(u[0]), str(status[0])
    out = dict(loss_diff=float(loss_diff), matched_steps=math.nan, steps_saved=math.nan, ci_low=math.nan,
               ci_high=math.nan, pct_saved=math.nan, pct_ci_low=math.nan, pct_ci_high=math.nan, status=s0)
    if s0 != STATUS_OK:
        return out
    pct = float(shape.pct_saved(u0))
    g = _grad(u, shape)[0]
    parts = [(float(g @ shape.cov @ g), shape.df)]
    if ci_low is not None and ci_high is not None:
        z = _t(df, level) if df is not None else _normal(level)
        se_d = (ci_high - ci_low) / (2 * z)
        dpct = 100 * math.exp(u0) / (shape.b1 + 2 * shape.b2 * u0)  # ∂pct/∂d: the two signs cancel
        parts.append((dpct ** 2 * se_d ** 2, df if df is not None else math.inf))
    lo, hi, _ = _combined_ci(pct, parts, level)
    out.update(matched_steps=shape.n0 * math.exp(u0), pct_saved=pct, pct_ci_low=lo, pct_ci_high=hi,
               steps_saved=shape.n0 * pct / 100, ci_low=shape.n0 * lo / 100, ci_high=shape.n0 * hi / 100)
    return out


def _normal(level: float) -> float:
    from scipy import stats as st

    return float(st.norm.ppf(0.5 + level / 2))


def _combined_ci(mean: float, parts: Sequence[tuple[float, float]], level: float) -> tuple[float, float, float]:
    """mean ± t·√(Σ var) at the Welch–Satterthwaite degrees of freedom of the variances (var, df) summed;
    returns (low, high, df). NaN where a variance is unknown."""
    var = sum(v for v, _ in parts)
    if not math.isfinite(var):
        return math.nan, math.nan, math.nan
    if var == 0:
        return mean, mean, math.inf
    denom = sum(v * v / d for v, d in parts if v > 0 and d > 0 and math.isfinite(d))
    dof = var * var / denom if denom > 0 else math.inf
    q = _t(dof, level) if math.isfinite(dof) else _normal(level)
    return mean - q * math.sqrt(var), mean + q * math.sqrt(var), dof


# ---------------------------------------------------------------------------------------------
# Per seed and per arm


def per_seed_steps(losses: pd.DataFrame, shape: Shape, baseline: str = BASELINE) -> pd.DataFrame:
    """Per arm (but the baseline; on an arm's own curve, that arm alone) and seed, from the study's final
    losses (`arm`, `seed`, `val_loss` at n0): the loss difference from the seed's baseline, the matched steps on
    the shape's curve, the steps saved and their percentage of n0 (NaN, with the status saying why, beyond the
    fitted budgets or without a baseline)."""
    base = losses[losses["arm"] == baseline].drop_duplicates("seed").set_index("seed")["val_loss"]
    arms = [a for a in arm_order(losses["arm"]) if a != baseline]
    rows = []
    for arm in arms if shape.curve == baseline else [a for a in arms if a == shape.curve]:
        own = losses[losses["arm"] == arm].drop_duplicates("seed").sort_values("seed")
        for seed, loss in zip(own["seed"], own["val_loss"].astype(float)):
            b = float(base.get(seed, math.nan))
            d = loss - b
            row = dict(arm=arm, curve=shape.curve, seed=seed, baseline_loss=b, arm_loss=loss, loss_diff=d, matched_steps=math.nan,
                       steps_saved=math.nan, pct_saved=math.nan, status=STATUS_NO_BASELINE)
            if math.isfinite(b):
                u, status = matched_log_steps(d, shape)
                row["status"] = str(status[0])
                if row["status"] == STATUS_OK:
                    pct = float(shape.pct_saved(u[0]))
                    row.update(matched_steps=shape.n0 * math.exp(float(u[0])), steps_saved=shape.n0 * pct / 100,
                               pct_saved=pct)
            rows.append(row)
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


def summarize_steps(seeds: pd.DataFrame, shape: Shape, level: float = 1 - ALPHA) -> pd.DataFrame:
    """Per arm: the mean steps saved over the seeds with a value, its CI (the seeds' t error plus the shape's,
    module docstring), the percentage of n0 with its CI, the mean loss difference with its paired t CI over
    every paired seed, how many seeds lie beyond the fitted budgets, and a verdict in words."""
    rows = []
    for arm in arm_order(seeds["arm"]) if len(seeds) else []:
        g = seeds[seeds["arm"] == arm]
        paired = g[g["status"] != STATUS_NO_BASELINE]
        ok = paired[paired["status"] == STATUS_OK]
        n, n_beyond = len(ok), int(paired["status"].str.startswith(BEYOND).sum())
        d = paired["loss_diff"].to_numpy(float)
        d = d[np.isfinite(d)]
        dlo, dhi = t_ci(d, level)
        pct, lo, hi, dof = math.nan, math.nan, math.nan, math.nan
        if n:
            p = ok["pct_saved"].to_numpy(float)
            pct = float(p.mean())
            u = shape.u_at_pct(p)
            g_mean = _grad(u, shape).mean(axis=0)
            var_shape = float(g_mean @ shape.cov @ g_mean)
            var_seed = float(p.var(ddof=1)) / n if n >= 2 else math.nan
            lo, hi, dof = _combined_ci(pct, [(var_seed, n - 1), (var_shape, shape.df)], level)
        # the mean loss difference converted: it stays inside the budgets when single seeds' noise does not
        at_mean = (loss_to_steps(float(d.mean()), shape, dlo, dhi, len(d) - 1, level) if len(d) >= 2 else
                   loss_to_steps(float(d.mean()), shape) if len(d) else None)
        rows.append(dict(arm=arm, curve=shape.curve, preset_steps=shape.n0, n_seeds=len(paired), n=n, n_beyond=n_beyond,
                         loss_diff=float(d.mean()) if len(d) else math.nan, loss_ci_low=dlo, loss_ci_high=dhi,
                         steps_saved=shape.n0 * pct / 100, ci_low=shape.n0 * lo / 100, ci_high=shape.n0 * hi / 100,
                         pct_saved=pct, pct_ci_low=lo, pct_ci_high=hi, df=dof,
                         pct_at_mean_loss=at_mean["pct_saved"] if at_mean else math.nan,
                         pct_at_mean_ci_low=at_mean["pct_ci_low"] if at_mean else math.nan,
                         pct_at_mean_ci_high=at_mean["pct_ci_high"] if at_mean else math.nan,
                         at_mean_status=at_mean["status"] if at_mean else "no loss", shape=shape.describe(),
                         verdict=steps_verdict(at_mean, n, n_beyond, len(paired), shape)))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def steps_verdict(at_mean: dict | None, n: int, n_beyond: int, n_seeds: int, shape: Shape) -> str:
    """The per-arm verdict in words. It reads the headline, the mean paired loss difference converted
    (`at_mean`, `loss_to_steps`' result: every seed in it), and says which side of 0 steps its CI lies; then
    what the seeds beyond the fitted budgets do to the per-seed mean, which leaves them out and is biased by it
    (an arm better than the baseline in some seeds and worse in others keeps only its worse seeds)."""
    if n_seeds == 0:
        return "no seed with a baseline run at 1×"
    status = at_mean["status"] if at_mean else "no loss"
    if status != STATUS_OK:
        head = f"the mean loss difference is {status}: no number"
    elif not math.isfinite(at_mean["pct_ci_low"]):
        head = f"no CI ({'the fit has no residual degrees of freedom' if not shape.df else '1 seed'})"
    elif at_mean["pct_ci_low"] > 0:
        head = "saves steps (95% CI above 0)"
    elif at_mean["pct_ci_high"] < 0:
        head = "costs steps (95% CI below 0)"
    else:
        head = "not distinguishable from 0 steps (95% CI spans 0)"
    if n == 0 and n_beyond:
        text = f"{BEYOND} for every seed ({n_beyond}): no number" + (f"; {head}" if status == STATUS_OK else "")
    elif n_beyond:
        text = (f"{head}; {n_beyond} of {n_seeds} seeds {BEYOND}, left out: the per-seed mean is over the other {n}, "
                "biased by it (the verdict reads the mean loss difference converted, every seed in it)")
    else:
        text = head
    if math.isfinite(shape.turning_steps):
        text += (f"; read on the branch through 1×: the fitted curve turns at {shape.turning_steps:,.0f} steps, and "
                 "budgets below the turn may reach the same loss in fewer steps")
    return text


def _falls(shape: Shape) -> None:
    if shape.b1 >= 0:
        raise AnalysisError(f"the {shape.curve}'s final loss does not fall with more steps at {shape.n0} (slope "
                            f"{shape.b1:+.4g} nats per unit of ln steps over budgets "
                            f"{', '.join(map(str, shape.budgets))}): no exchange rate")


def _curve_points(points: pd.DataFrame, arm: str) -> pd.DataFrame:
    """One curve's rows of `points` (all of them where `points` has no `arm` column: the baseline's)."""
    return points[points["arm"] == arm] if "arm" in points.columns else points if arm == BASELINE else points.iloc[:0]


def steps_saved_tables(points: pd.DataFrame, losses: pd.DataFrame, n0: int, degree: int | None = None
                ) -> tuple[Shape, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Everything at once on the baseline's curve: the shape fitted on the baseline's `points` (its runs at
    every budget, the study's 1× runs included; rows of other arms, where `points` has an `arm` column, are
    `arm_curve_tables`'), the exchange rate, the per-seed table and the per-arm summary for the study's
    `losses`."""
    shape = fit_shape(_curve_points(points, BASELINE), n0, degree)
    _falls(shape)
    seeds = per_seed_steps(losses, shape)
    return shape, exchange_rate(shape), seeds, summarize_steps(seeds, shape)


def arm_curve_tables(points: pd.DataFrame, losses: pd.DataFrame, n0: int, degree: int | None = None
                     ) -> tuple[dict[str, Shape], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The same on each arm's own curve, for every arm (but the baseline) that `points` (with an `arm` column)
    has runs of at a budget other than n0: its shapes by arm, and the rate, per-seed and summary tables of them
    all (empty, with their columns, when no arm has its own budget runs)."""
    shapes: dict[str, Shape] = {}
    if "arm" in points.columns:
        for arm in arm_order(points["arm"]):
            own = points[points["arm"] == arm]
            if arm != BASELINE and (own["steps"] != n0).any():
                shapes[arm] = fit_shape(own, n0, degree, curve=arm)
                _falls(shapes[arm])
    seeds = [per_seed_steps(losses, shape) for shape in shapes.values()]
    return (shapes,
            pd.concat([exchange_rate(sh) for sh in shapes.values()], ignore_index=True) if shapes else
            pd.DataFrame(columns=RATE_COLUMNS),
            pd.concat(seeds, ignore_index=True) if seeds else pd.DataFrame(columns=SEED_COLUMNS),
            pd.concat([summarize_steps(t, sh) for t, sh in zip(seeds, shapes.values())], ignore_index=True)
            if seeds else pd.DataFrame(columns=SUMMARY_COLUMNS))


def record_author_pct() -> float:
    """The record's author's estimate of the smear's gain, as a percentage of the record's training steps."""
    return 100 * RECORD_AUTHOR_STEPS / RECORD_STEPS


def fitted_points(points: pd.DataFrame, shape: Shape, anchors: pd.Series) -> pd.DataFrame:
    """The shape's own budget points (`arm`, the shape's curve: the baseline's unless it is an arm's) with each
    seed's anchored curve at them (`fitted`: its 1× loss, `anchors` by seed, plus the shape's change; NaN for a
    seed without a 1× run), for the table and the figure."""
    out = _curve_points(points, shape.curve)[POINT_COLUMNS].copy()
    base = out["seed"].map(anchors).astype(float)
    out.insert(0, "arm", shape.curve)
    out["fitted"] = base + shape.delta(np.log(out["steps"].to_numpy(float) / shape.n0))
    return out.sort_values(["steps", "seed"]).reset_index(drop=True)


def shape_from_tables(rate: pd.DataFrame, budgets: pd.DataFrame | None = None) -> Shape:
    """The fitted shape of `smearlens steps-saved` from its tables: refitted on the budget points
    (`steps_saved_budgets.csv`: exact, covariance included) where given, checked against the rate table;
    else rebuilt from the rate table alone, which holds the whole covariance only for a linear shape."""
    missing = [c for c in RATE_COLUMNS if c not in rate.columns]
    if missing or not len(rate):
        raise AnalysisError(f"{RATE_FILE}: not an exchange-rate table"
                            + (f" (lacks {', '.join(missing)})" if missing else " (no rows)"))
    rate = rate[rate["curve"] == BASELINE]  # arms' own curves convert nothing here
    if not len(rate):
        raise AnalysisError(f"{RATE_FILE}: no row for the baseline's curve")
    r = rate.iloc[0]
    n0, quadratic = int(r["preset_steps"]), bool(np.isfinite(float(r["beta2"])))
    if budgets is not None:
        if "arm" in budgets.columns:
            budgets = budgets[budgets["arm"] == BASELINE]
        shape = fit_shape(budgets, n0, 2 if quadratic else 1)
        if not math.isclose(shape.b1, float(r["beta1"]), rel_tol=1e-6, abs_tol=1e-9):
            raise AnalysisError(f"{BUDGETS_FILE} refits to a slope of {shape.b1:+.6g}, but {RATE_FILE} has "
                                f"{float(r['beta1']):+.6g}: the two are from different fits (rerun `smearlens steps-saved`)")
        return shape
    if quadratic:
        raise AnalysisError(f"{RATE_FILE} holds a quadratic shape, whose covariance needs {BUDGETS_FILE} "
                            "(rerun `smearlens steps-saved`)")
    budgets_steps = tuple(int(b) for b in str(r["budgets"]).split())
    return Shape(n0=n0, beta=np.array([float(r["beta1"])]), cov=np.array([[float(r["beta1_se"]) ** 2]]),
                    df=int(r["df"]), sigma=float(r["sigma"]), budgets=budgets_steps, n_seeds=int(r["n_seeds"]),
                    n_points=int(r["n_points"]))


# ---------------------------------------------------------------------------------------------
# Reading a study folder


@dataclass
class StudyLosses:
    """A study folder's plan and its finished runs' final validation losses."""

    folder: Path
    preset: str
    steps: int
    plan: dict  # study.json
    runs: pd.DataFrame  # run, arm, seed, steps, val_loss: finished runs only


def read_study_losses(folder: str | Path, arms: Iterable[str] | None = None) -> StudyLosses:
    """The plan (study.json) and, per run of the plan that finished (its loss.csv validates at the plan's
    last step), its final validation loss. Unfinished runs are left out; an unreadable plan or loss log is
    an AnalysisError naming the file."""
    folder = Path(folder)
    path = folder / "study.json"
    if not path.is_file():
        raise AnalysisError(f"{folder}: no study.json here: not a study folder (`smearlens study --out {folder} …`)")
    try:
        plan = json.loads(path.read_text())
        preset, steps = str(plan["preset"]), int(plan["steps"])
        planned_arms, seeds = list(map(str, plan["arms"])), [int(s) for s in plan["seeds"]]
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as e:
        raise AnalysisError(f"{path}: not a study plan ({one_line(e)})") from None
    wanted = set(arms) if arms is not None else set(planned_arms)
    rows = []
    for arm in [a for a in planned_arms if a in wanted]:
        for seed in seeds:
            log = folder / f"{preset}-s{seed}-{arm}" / "loss.csv"  # the study's run folder name (run_name)
            if not log.is_file():
                continue
            try:
                val = pd.read_csv(log, usecols=["step", "val_loss"]).dropna()
            except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise AnalysisError(f"{log}: not a training loss log ({one_line(e)})") from None
            last = val[val["step"] == steps]
            if len(last):
                rows.append(dict(run=log.parent.name, arm=arm, seed=seed, steps=steps,
                                 val_loss=float(last["val_loss"].iloc[-1])))
    runs = pd.DataFrame(rows, columns=["run", "arm", "seed", "steps", "val_loss"])
    return StudyLosses(folder=folder, preset=preset, steps=steps, plan=plan, runs=runs)


__all__ = ["RECORD_STEPS", "RECORD_AUTHOR_STEPS", "QUADRATIC_FROM", "BEYOND", "SUMMARY_FILE", "SEEDS_FILE", "RATE_FILE",
           "BUDGETS_FILE", "FIGURE", "STATUS_OK", "STATUS_NO_BASELINE",
           "POINT_COLUMNS", "SEED_COLUMNS", "SUMMARY_COLUMNS", "RATE_COLUMNS", "Shape", "fit_shape", "exchange_rate",
           "matched_log_steps", "loss_to_steps", "per_seed_steps", "summarize_steps", "steps_verdict", "steps_saved_tables",
           "arm_curve_tables", "shape_from_tables",
           "record_author_pct", "fitted_points", "StudyLosses", "read_study_losses"]
