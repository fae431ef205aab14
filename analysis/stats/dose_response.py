"""Dose-response: what a fixed smear `dose-<c>` (c · e[i−1], no gate) does, as c grows.

Per run at its final step (`dose_table`): the dose c, the measured mean coefficient on data, the smear
path's share of token i−1's effect (`smear_all`, the *measured* dose: the learned arm is gated per token,
the doses are not), previous-token mass, best head, heads ≥ the threshold and validation loss. Each
measure is fitted against ln c over the fixed doses and against the measured share over baseline +
doses (`fit_dose_response`), with a random intercept per seed (every arm reuses the baseline's seeds,
so a seed's runs share initial weights and data order). The fixed effects' CIs and p-values use t with
n_obs − n_fixed − (n_seeds − 1) degrees of freedom: with 3 seeds the normal approximation statsmodels
reports would be too narrow. When MixedLM fails, does not converge or puts the seed variance on its
boundary (0), the fit falls back to OLS with seed fixed effects (sum-coded, so the intercept is the
mean seed's) and says so in `method`; statsmodels' warnings are kept out of the output and summarised
in `note`. Validation loss is also fitted with a quadratic, whose vertex in ln c is the dose of lowest
loss (`lowest_loss_dose`, delta-method CI); beside it, the dose of lowest mean paired loss − baseline.
The learned arms are set against the doses' share curve, seed by seed (`learned_vs_curve`).

Several studies' dose tables can be pooled (`pool_dose_tables`): a seed's runs pair within the study that
trained them, so the pairing unit (`unit`, the random intercept's group) is the seed in the first study and
`<study>:<seed>` in the others (the same seed trained again, e.g. on another machine kind, is another run).

Pure functions (Tables or DataFrames in, DataFrames or dicts out); too few doses raise AnalysisError.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.stats import mechanism_stats as mech
from analysis import stats
from analysis.stats import ALPHA, BASELINE, DEFAULT_THRESHOLD, Tables, final_rows
from trainer.arms import arm_spec
from trainer.errors import AnalysisError, ConfigError

# measure -> (label, number format); the order of the figure's rows and the report's columns
MEASURES: dict[str, tuple[str, str]] = {
    "prev_mass": ("total previous-token mass", "{:.3f}"),
    "best_prev": ("best head's previous-token score", "{:.3f}"),
    "n_prev_heads": ("previous-token heads (≥ {t:g})", "{:.2f}"),
    "share": ("smear path's share of token i−1's effect", "{:.3f}"),
    "val_loss": ("validation loss (nats/token)", "{:.4f}"),
}
XS = {"log_c": "ln c (fixed doses)", "share": "measured share (baseline + doses)"}
MIN_DOSES = 2
GRID = 60  # points of each fitted curve
SINGULAR_RE = 1e-3  # a seed variance below this fraction of the residual variance is on the boundary (SD ratio 3%)
SESOI = {**stats.SESOI, "share": mech.SESOI["share"]}


def measure_label(measure: str, threshold: float = DEFAULT_THRESHOLD) -> str:
    return MEASURES[measure][0].format(t=threshold) if measure in MEASURES else measure


def arm_kind(arm: str) -> tuple[str | None, float]:
    """("baseline", 0) | ("dose", c) for a fixed dose | ("learned", NaN) for an arm with a learned smear
    coefficient | (None, NaN) for every other arm (canon, annealed doses, arms this version does not know)."""
    if arm == BASELINE:
        return "baseline", 0.0
    try:
        spec = arm_spec(arm)
    except ConfigError:
        return None, math.nan
    if spec.fixed_dose is not None:
        return "dose", float(spec.fixed_dose)
    return ("learned" if spec.learned_lambda else None), math.nan


def fixed_doses(arms) -> list[str]:
    """The fixed-dose arms among `arms` (c > 0), by c."""
    doses = [(arm_kind(str(a))[1], str(a)) for a in set(map(str, arms)) if arm_kind(str(a))[0] == "dose"]
    return [a for c, a in sorted(doses) if c > 0]


def has_doses(tables: Tables) -> bool:
    """Whether the tables hold the ≥ 2 fixed doses a dose-response needs."""
    return tables.heads is not None and len(fixed_doses(tables.heads["arm"].unique())) >= MIN_DOSES


def dose_table(tables: Tables, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """One row per run (baseline, fixed doses and learned arms) at its final step: run, arm, seed, kind, c,
    log_c, coef_mean, share and the measures (NaN where a table is missing)."""
    per_seed = stats.per_seed_claims(tables.heads, threshold)
    kinds = {a: arm_kind(a) for a in per_seed["arm"].astype(str).unique()}
    keep = per_seed["arm"].astype(str).map(lambda a: kinds[a][0] is not None)
    df = per_seed.loc[keep, ["run", "arm", "seed", "step", "prev_mass", "best_prev", "n_prev_heads"]].copy()
    df["run"], df["arm"] = df["run"].astype(str), df["arm"].astype(str)
    df["unit"] = df["seed"].astype(int).astype(str)
    df["kind"] = df["arm"].map(lambda a: kinds[a][0])
    df["c"] = df["arm"].map(lambda a: kinds[a][1])
    df["log_c"] = np.where(df["c"] > 0, np.log(df["c"].where(df["c"] > 0, 1.0)), math.nan)
    smear = tables.get("smear")
    coef = (final_rows(smear).groupby("run")["coef_mean"].mean() if smear is not None else pd.Series(dtype=float))
    df["coef_mean"] = df["run"].map(coef).astype(float)
    df.loc[df["kind"] == "baseline", "coef_mean"] = 0.0  # no term at all
    shares = pd.Series(dtype=float)
    if tables.get("paths") is not None:
        try:
            sp = mech.share_per_seed(tables.paths)
            shares = sp.set_index(sp["run"].astype(str))["smear_all"]
        except AnalysisError:
            pass  # no offset-1 rows: the share stays NaN
    df["share"] = df["run"].map(shares).astype(float)
    df.loc[df["kind"] == "baseline", "share"] = 0.0  # exactly: float noise leaves the measured one ~1e-9
    losses = tables.losses
    df["val_loss"] = (df["run"].map(losses.set_index(losses["run"].astype(str))["val_loss"]).astype(float)
                      if losses is not None and len(losses) else math.nan)
    df["n_prev_heads"] = df["n_prev_heads"].astype(float)
    order = {"baseline": 0, "dose": 1, "learned": 2}
    df = df.assign(_k=df["kind"].map(order)).sort_values(["_k", "c", "arm", "seed"]).drop(columns="_k")
    return df[COLUMNS].reset_index(drop=True)


COLUMNS = ["run", "arm", "seed", "unit", "step", "kind", "c", "log_c", "coef_mean", "share"] + [
    m for m in MEASURES if m != "share"]


def units(df: pd.DataFrame) -> pd.Series:
    """Each run's pairing unit: the `unit` column, or the seed in a table that has none."""
    return df["unit"].astype(str) if "unit" in df else df["seed"].astype(int).astype(str)


def sorted_units(values) -> list[str]:
    """Distinct units, the first study's seeds first, each study's in seed order."""
    split = lambda u: (u.rsplit(":", 1)[0], int(u.rsplit(":", 1)[1])) if ":" in u else ("", int(u))
    return sorted(set(map(str, values)), key=split)


def pool_dose_tables(studies: list[tuple[str, pd.DataFrame]], arms: list[str] | None = None) -> pd.DataFrame:
    """Several studies' dose tables (`dose_table`'s columns; `unit` may be absent) as one, with a `study` column.
    Units: the seed in the first study, `<study>:<seed>` in the others, so a seed's runs pair within the study
    that trained them (the same seed trained again elsewhere, e.g. on another machine kind, is another unit).
    `arms` keeps only those arms (each must be found); every unit must keep its baseline run."""
    if not studies:
        raise AnalysisError("no dose tables to pool")
    need = [c for c in COLUMNS if c != "unit"]
    parts = []
    for i, (name, df) in enumerate(studies):
        missing = [c for c in need if c not in df]
        if missing:
            raise AnalysisError(f"{name}: not a dose table (missing columns: {', '.join(missing)})")
        df = df[df["arm"].astype(str).isin(arms)].copy() if arms is not None else df.copy()
        seeds = df["seed"].astype(int).astype(str)
        df["unit"] = seeds if i == 0 else f"{name}:" + seeds
        parts.append(df[COLUMNS].assign(study=name))
    pooled = pd.concat(parts, ignore_index=True)
    absent = sorted(set(arms or []) - set(pooled["arm"].astype(str)))
    if absent:
        raise AnalysisError(f"arms {', '.join(absent)}: in none of the studies ({', '.join(n for n, _ in studies)})")
    lone = sorted(set(pooled["unit"]) - set(pooled.loc[pooled["kind"] == "baseline", "unit"]))
    if lone:  # the paired comparisons and the share fits need each unit's baseline
        raise AnalysisError(f"no baseline run for seed(s) {', '.join(lone[:5])} in their study: a unit's runs are "
                            "paired with its own study's baseline")
    return pooled


# ---------------------------------------------------------------------------------------------
# Fits with a per-seed random intercept


@dataclass
class Fit:
    """A polynomial fit of `y` on `x` (degree 1 or 2): fixed effects `params` (intercept, x, x²) with their
    covariance, each seed's own offset (random intercept, or the fixed seed effect in the fallback)."""

    y: str
    x: str
    degree: int
    params: np.ndarray
    cov: np.ndarray
    df_resid: float
    method: str
    note: str
    n_obs: int
    n_seeds: int
    x_range: tuple[float, float]
    seed_effects: dict[str, float] = field(default_factory=dict)  # keyed by unit (the seed, as text)

    @property
    def t_crit(self) -> float:
        from scipy import stats as st

        return float(st.t.ppf(1 - ALPHA / 2, self.df_resid)) if self.df_resid > 0 else math.nan

    def design(self, x) -> np.ndarray:
        x = np.asarray(x, float)
        return np.column_stack([x ** p for p in range(self.degree + 1)])

    def predict(self, x, unit: str | int | None = None) -> np.ndarray:
        """The fitted mean at `x` (the mean seed's; `unit`'s own offset added when it was in the fit)."""
        return self.design(x) @ self.params + (self.seed_effects.get(str(unit), 0.0) if unit is not None else 0.0)

    def band(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fit and pointwise 95% CI of the mean curve (fixed effects only)."""
        X = self.design(x)
        fit = X @ self.params
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", X, self.cov, X), 0))
        return fit, fit - self.t_crit * se, fit + self.t_crit * se

    def terms(self) -> pd.DataFrame:
        from scipy import stats as st

        names = ["intercept", "x", "x^2"][: self.degree + 1]
        se = np.sqrt(np.maximum(np.diag(self.cov), 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self.params / se
        p = np.where(se > 0, 2 * st.t.sf(np.abs(t), self.df_resid), math.nan) if self.df_resid > 0 else \
            np.full(len(se), math.nan)
        return pd.DataFrame(dict(measure=self.y, x=self.x, model="linear" if self.degree == 1 else "quadratic",
                                 term=names, estimate=self.params, se=se, ci_lo=self.params - self.t_crit * se,
                                 ci_hi=self.params + self.t_crit * se, p=p, n_obs=self.n_obs, n_seeds=self.n_seeds,
                                 df=self.df_resid, method=self.method, note=self.note))


def _short(messages: list, keep: int = 2) -> str:
    """The first `keep` distinct messages, shortened, and how many more there were."""
    seen: list[str] = []
    for m in messages:
        m = " ".join(str(m).split())
        m = m if len(m) <= 90 else m[:89] + "…"
        if m not in seen:
            seen.append(m)
    return "; ".join(seen[:keep]) + (f" (+{len(seen) - keep} more)" if len(seen) > keep else "")


def _mixed(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[tuple | None, str]:
    """statsmodels MixedLM (REML, random intercept per group): (fixed effects, their covariance, each group's
    offset) and the warnings it gave, or None and why it is not usable."""
    import statsmodels.api as sm

    # on a standardised y: the optimiser's tolerances are absolute, and a loss varies by 0.01 nats
    mu, sd = float(y.mean()), float(y.std())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = sm.MixedLM((y - mu) / sd, X, groups).fit(reml=True)
            fe, fe_cov = np.asarray(res.fe_params, float), np.asarray(res.cov_params(), float)
        except Exception as e:  # singular matrices, failed optimisers: every one means "use the fallback"
            return None, f"MixedLM failed ({type(e).__name__}: {_short([e])})"
    k = X.shape[1]
    trouble = _short([w.message for w in caught])
    re_var = float(np.asarray(res.cov_re)[0, 0]) if np.size(res.cov_re) else math.nan
    if not res.converged:
        return None, "MixedLM did not converge" + (f" ({trouble})" if trouble else "")
    if not (np.isfinite(fe).all() and np.isfinite(fe_cov[:k, :k]).all()):
        return None, "MixedLM gave non-finite estimates" + (f" ({trouble})" if trouble else "")
    if not np.isfinite(re_var) or re_var <= SINGULAR_RE * max(float(res.scale), 1e-300):
        return None, f"MixedLM: seed variance on the boundary ({re_var * sd ** 2:.2g}), a singular fit"
    if "not positive definite" in trouble:  # its standard errors come from that Hessian
        return None, f"MixedLM: {trouble}"
    params = fe * sd + np.r_[mu, np.zeros(k - 1)]
    effects = {str(g): float(np.asarray(v)[0]) * sd for g, v in res.random_effects.items()}
    return (params, fe_cov[:k, :k] * sd ** 2, effects), trouble


def fit(df: pd.DataFrame, y: str, x: str, degree: int = 1) -> Fit:
    """`y ~ x (+ x²)` with a random intercept per seed (MixedLM, REML), else OLS with seed fixed effects."""
    import statsmodels.api as sm

    if y not in df or x not in df:
        raise AnalysisError(f"dose-response: no column {y if y not in df else x!r} (have: {', '.join(df.columns)})")
    d = df[[x, y]].astype(float).assign(unit=units(df))
    d = d[np.isfinite(d[x]) & np.isfinite(d[y])]
    k = degree + 1
    what = f"{y} against {x}"
    if d[x].nunique() < k:
        raise AnalysisError(f"{what}: {d[x].nunique()} distinct x value(s) with a value; a degree-{degree} fit "
                            f"needs ≥ {k}")
    seeds = sorted(d["unit"].unique())
    X = np.column_stack([d[x].to_numpy() ** p for p in range(k)])
    yv, groups = d[y].to_numpy(), d["unit"].to_numpy()
    n, m = len(d), len(seeds)
    df_resid = n - k - (m - 1)
    if df_resid < 1:
        raise AnalysisError(f"{what}: {n} runs over {m} seed(s) leave no degrees of freedom for a degree-{degree} "
                            "fit with a seed effect")
    common = dict(y=y, x=x, degree=degree, n_obs=n, n_seeds=m, x_range=(float(d[x].min()), float(d[x].max())))
    if np.ptp(yv) == 0:  # every run the same: nothing to estimate a spread from
        return Fit(params=np.r_[yv[0], np.zeros(degree)], cov=np.zeros((k, k)), df_resid=df_resid,
                   method="none (constant)", note=f"every run has {y} = {yv[0]:g}: no spread, no CI", **common)
    why = "1 seed"
    if m >= 2:
        res, why = _mixed(X, yv, groups)
        if res is not None:
            params, cov, effects = res
            return Fit(params=params, cov=cov, df_resid=df_resid, method="MixedLM (REML), random intercept per seed",
                       note=why, seed_effects=effects, **common)
    # seed fixed effects, sum-coded: the last seed's effect is minus the sum of the others'
    S = np.column_stack([(groups == s).astype(float) - (groups == seeds[-1]) for s in seeds[:-1]]) if m > 1 \
        else np.zeros((n, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ols = sm.OLS(yv, np.column_stack([X, S])).fit()
    params = np.asarray(ols.params, float)
    effects = dict(zip(seeds, list(params[k:]) + [-float(params[k:].sum())])) if m > 1 else {}
    exact = float(ols.ssr) <= 1e-20 * max(float(np.sum((yv - yv.mean()) ** 2)), 1e-300)
    return Fit(params=params[:k], cov=np.asarray(ols.cov_params())[:k, :k], df_resid=float(ols.df_resid),
               method="OLS" + (", seed fixed effects" if m > 1 else "") + " (fallback)",
               note=why + ("; exact fit, no residual spread: CIs of width 0" if exact else ""),
               seed_effects=effects, **common)


def fits(dose: pd.DataFrame) -> dict[tuple[str, str, int], Fit | str]:
    """Every fit the dose-response shows, keyed (measure, x, degree): each measure against ln c over the
    fixed doses and against the measured share over baseline + doses; val_loss also quadratic. A fit that
    cannot be made holds the reason instead."""
    n_doses = dose.loc[dose["kind"] == "dose", "c"].nunique()
    if n_doses < MIN_DOSES:
        raise AnalysisError(f"a dose-response needs ≥ {MIN_DOSES} fixed doses (dose-<c> arms); these tables hold "
                            f"{n_doses}")
    doses, with_base = dose[dose["kind"] == "dose"], dose[dose["kind"].isin(["baseline", "dose"])]
    out: dict[tuple[str, str, int], Fit | str] = {}
    for y in MEASURES:
        for x, data in (("log_c", doses), ("share", with_base)):
            if x == y:
                continue  # the share against itself is the identity
            for degree in (1, 2) if y == "val_loss" else (1,):
                try:
                    out[(y, x, degree)] = fit(data, y, x, degree)
                except AnalysisError as e:
                    out[(y, x, degree)] = str(e)
    return out


def fit_table(fitted: dict[tuple[str, str, int], Fit | str]) -> pd.DataFrame:
    """Tidy: measure, x, model, term, estimate, se, ci_lo, ci_hi, p, n_obs, n_seeds, df, method, note."""
    parts = []
    for (y, x, degree), f in fitted.items():
        if isinstance(f, Fit):
            parts.append(f.terms())
        else:
            parts.append(pd.DataFrame([dict(measure=y, x=x, model="linear" if degree == 1 else "quadratic", term="",
                                            method="not fitted", note=f)]))
    return pd.concat(parts, ignore_index=True)


def curves(fitted: dict[tuple[str, str, int], Fit | str], n: int = GRID) -> pd.DataFrame:
    """Each fitted mean curve on a grid over its x range with the pointwise 95% CI: measure, x, model, at,
    fit, lo, hi."""
    rows = []
    for (y, x, degree), f in fitted.items():
        if not isinstance(f, Fit):
            continue
        at = np.linspace(*f.x_range, n)
        mean, lo, hi = f.band(at)
        rows.append(pd.DataFrame(dict(measure=y, x=x, model="linear" if degree == 1 else "quadratic", at=at,
                                      fit=mean, lo=lo, hi=hi)))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["measure", "x", "model", "at", "fit", "lo", "hi"])


# ---------------------------------------------------------------------------------------------
# The dose of lowest loss, and the learned arm against the doses' curve


def lowest_loss_dose(dose: pd.DataFrame, quadratic: Fit | str | None = None) -> dict:
    """The vertex c* of the quadratic of val_loss in ln c with its 95% CI (delta method on the fixed effects'
    covariance; NaN with a `note` when the curvature is not significantly > 0 or c* lies outside the doses
    tried), and beside it the fixed dose of lowest mean paired loss − baseline with its paired t CI."""
    nan = math.nan
    out = dict(c_star=nan, c_lo=nan, c_hi=nan, log_c_star=nan, log_c_se=nan, curvature=nan, curvature_lo=nan,
               curvature_hi=nan, curvature_p=nan, method="", note="", best_arm="", best_c=nan, best_diff=nan,
               best_lo=nan, best_hi=nan, best_p=nan, best_n=0, paired_note="")
    if quadratic is None:
        try:
            quadratic = fit(dose[dose["kind"] == "dose"], "val_loss", "log_c", 2)
        except AnalysisError as e:
            quadratic = str(e)
    if isinstance(quadratic, str):
        out["note"] = f"no quadratic fit: {quadratic}"
    else:
        q = quadratic
        terms = q.terms().iloc[2]
        b0, b1, b2 = q.params
        out.update(curvature=b2, curvature_lo=terms["ci_lo"], curvature_hi=terms["ci_hi"], curvature_p=terms["p"],
                   method=q.method)
        lo, hi = q.x_range
        if not (b2 > 0 and terms["ci_lo"] > 0):
            out["note"] = (f"the curvature in ln c is not significantly > 0 ({b2:.3g}, 95% CI [{terms['ci_lo']:.3g}, "
                           f"{terms['ci_hi']:.3g}]): no minimum inside the doses is shown")
        else:
            x = -b1 / (2 * b2)
            grad = np.array([0.0, -1 / (2 * b2), b1 / (2 * b2 ** 2)])
            se = float(math.sqrt(max(grad @ q.cov @ grad, 0)))
            if not lo <= x <= hi:
                out["note"] = (f"the fitted minimum, c = {math.exp(x):.3g}, lies outside the doses tried "
                               f"({math.exp(lo):g}–{math.exp(hi):g}): not a dose of lowest loss")
            else:
                t = q.t_crit
                out.update(c_star=math.exp(x), log_c_star=x, log_c_se=se, c_lo=math.exp(x - t * se),
                           c_hi=math.exp(x + t * se))
                if x - t * se < lo or x + t * se > hi:
                    out["note"] = (f"the CI reaches beyond the doses tried ({math.exp(lo):g}–{math.exp(hi):g}): "
                                   "that part is extrapolated")
    per_seed = dose[["arm", "val_loss"]].assign(seed=units(dose))  # paired by unit
    rows = [stats.compare_arms(per_seed, "val_loss", arm=a, role="exploratory") for a in fixed_doses(dose["arm"])]
    rows = [r for r in rows if r["paired"] and math.isfinite(r["diff"])]
    if rows:
        best = min(rows, key=lambda r: r["diff"])
        out.update(best_arm=best["arm"], best_c=arm_kind(best["arm"])[1], best_diff=best["diff"],
                   best_lo=best["ci_low"], best_hi=best["ci_high"], best_p=best["p_value"], best_n=best["n_pairs"])
    else:
        out["paired_note"] = "no dose has ≥ 2 seeds paired with the baseline and a validation loss"
    return out


def learned_vs_curve(dose: pd.DataFrame, fitted: dict[tuple[str, str, int], Fit | str]) -> pd.DataFrame:
    """Each learned arm against the doses' curve at its measured share: per seed, observed − predicted (the
    seed's own offset where the seed was in the fit; val_loss from the quadratic), then the mean with its t
    CI over seeds (mechanism_stats.one_sample: t p, sign-flip p, TOST at the measure's SESOI). The CI counts
    the seed-to-seed spread of the differences, not the curve's own uncertainty."""
    rows = []
    for arm in sorted(dose.loc[dose["kind"] == "learned", "arm"].unique()):
        runs = dose[dose["arm"] == arm]
        for y in (m for m in MEASURES if m != "share"):
            f = fitted.get((y, "share", 2 if y == "val_loss" else 1))
            base = dict(arm=arm, measure=y, model="quadratic" if y == "val_loss" else "linear",
                        share=float(runs["share"].mean()))
            if not isinstance(f, Fit):
                rows.append(dict(base, n=0, verdict=f"no curve ({f or 'not fitted'})"))
                continue
            ok = runs[np.isfinite(runs["share"]) & np.isfinite(runs[y])]
            pred = np.array([f.predict([s], unit)[0] for s, unit in zip(ok["share"], units(ok))])
            diff = ok[y].to_numpy(float) - pred
            r = mech.one_sample(diff, SESOI.get(y))
            beyond = bool(len(ok)) and not (f.x_range[0] <= ok["share"].mean() <= f.x_range[1])
            rows.append(dict(base, observed=float(ok[y].mean()) if len(ok) else math.nan,
                             predicted=float(pred.mean()) if len(pred) else math.nan,
                             extrapolated=beyond, **r))
    return pd.DataFrame(rows)


def arm_summary(dose: pd.DataFrame) -> pd.DataFrame:
    """Per arm and measure (with coef_mean, and val_loss − baseline paired by seed): n, mean, t 95% CI. Tidy:
    arm, kind, c, measure, n, mean, ci_lo, ci_hi."""
    rows = []
    arms = dose.drop_duplicates("arm")[["arm", "kind", "c"]].to_dict("records")
    unit = units(dose)
    base = dose.loc[dose["kind"] == "baseline", "val_loss"].set_axis(unit[dose["kind"] == "baseline"])
    for a in arms:
        runs = dose[dose["arm"] == a["arm"]]
        cols = {m: runs[m] for m in ["coef_mean", *MEASURES]}
        paired = runs["val_loss"].set_axis(unit[runs.index]) - base
        cols["val_loss_vs_baseline"] = paired.dropna() if a["kind"] != "baseline" else pd.Series(dtype=float)
        for m, v in cols.items():
            v = v.astype(float).dropna()
            lo, hi = stats.t_ci(v.to_numpy())
            rows.append(dict(a, measure=m, n=len(v), mean=float(v.mean()) if len(v) else math.nan, ci_lo=lo, ci_hi=hi))
    return pd.DataFrame(rows)


@dataclass
class DoseResponse:
    """Everything the figure and the report show about the doses, from one call (`dose_response`)."""

    table: pd.DataFrame  # dose_table (pooled: with a `study` column)
    fits: dict  # (measure, x, degree) -> Fit or why not
    fit_table: pd.DataFrame
    curves: pd.DataFrame
    optimum: dict  # lowest_loss_dose
    learned: pd.DataFrame  # learned_vs_curve
    arms: pd.DataFrame  # arm_summary
    threshold: float

    @property
    def n_units(self) -> int:
        return int(units(self.table).nunique())


def dose_response_of(table: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> DoseResponse:
    """The dose-response of a dose table (one study's `dose_table`, or `pool_dose_tables` of several)."""
    fitted = fits(table)
    return DoseResponse(table=table, fits=fitted, fit_table=fit_table(fitted), curves=curves(fitted),
                        optimum=lowest_loss_dose(table, fitted.get(("val_loss", "log_c", 2))),
                        learned=learned_vs_curve(table, fitted), arms=arm_summary(table), threshold=threshold)


def dose_response(tables: Tables, threshold: float = DEFAULT_THRESHOLD) -> DoseResponse:
    """The dose-response of the tables' fixed doses; AnalysisError with fewer than 2 of them."""
    doses = fixed_doses(tables.heads["arm"].unique()) if tables.heads is not None else []
    if len(doses) < MIN_DOSES:
        raise AnalysisError(f"no dose-response: it needs ≥ {MIN_DOSES} fixed doses (dose-<c> arms), the tables "
                            f"hold {len(doses)}" + (f" ({', '.join(doses)})" if doses else ""))
    return dose_response_of(dose_table(tables, threshold), threshold)


__all__ = ["COLUMNS", "MEASURES", "XS", "DoseResponse", "Fit", "arm_kind", "arm_summary", "curves", "dose_response",
           "dose_response_of", "dose_table", "fit", "fit_table", "fits", "fixed_doses", "has_doses", "learned_vs_curve",
           "lowest_loss_dose", "measure_label", "pool_dose_tables", "sorted_units", "units"]
