"""Per-seed numbers and paired statistics of the mechanism tables: where the previous token travels.

- path shares (`paths`): the Fisher-linear share of token i−offset's effect on the prediction at i that
  goes through the smear term, through everything else (rest) and their interaction (leftover),
  per run and gate (all / open / closed); per head, the share of each key/value edge;
- read-out (`readout`): linear-probe accuracy for token i−1 above the backward-bigram baseline, by layer;
- knock-outs (`knockouts`): the loss increase when the smear term is knocked out (zero / mean), when the
  top-k previous-token heads are ablated, and the interaction of the two.

Arms of one seed share initial weights and data, so arms are compared as pairs by seed
(`stats.compare_arms`: paired t, sign-flip, t CI, TOST at the measure's SESOI); a quantity measured
within each run (a loss increase, open − closed) is tested against 0 across seeds the same way
(`one_sample`). Verdicts use stats.VERDICTS: "higher" / "lower", "equivalent within ±SESOI", "too
few seeds to tell". Everything here is exploratory (not in the primary family, not Holm-corrected).
Pure functions: DataFrames in, DataFrames or dicts out; a missing table raises AnalysisError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import stats
from analysis.stats import ALPHA, BASELINE, RECORD_ARM, Tables, arm_order, final_rows
from trainer.arms import arm_spec
from trainer.errors import AnalysisError, ConfigError

PATHS = ("smear", "rest", "leftover")  # they add up to the total (share 1)
GATES = ("all", "open", "closed")
# Smallest effects of interest, in each measure's unit (exploratory: TOST and "equivalent within ±X")
SESOI = {
    "share": 0.05,  # of the previous token's effect: a twentieth moved from one route to another
    "readout": 0.02,  # probe accuracy above the bigram baseline: two points of held-out accuracy
    "knockout": 0.01,  # nats/token: about the spread of the val loss between seeds at the tiny preset
}
KNOCKOUT_EFFECTS = ("smear", "head", "both", "interaction")  # increases over the loss with nothing knocked out
RUN_KEYS = ["run", "preset", "arm", "seed", "step"]


def _need(df: pd.DataFrame | None, what: str) -> pd.DataFrame:
    if df is None or not len(df):
        raise AnalysisError(f"no {what} table (run `smearlens analyze` on the runs' final checkpoints)")
    return df


def mixes_previous_token(arm: str, values: pd.Series) -> bool:
    """Whether `arm`'s model has a smear-type term: by its registered definition (the baseline has none,
    though float noise can leave its measured share a hair off 0), else by a non-zero value in some run."""
    try:
        return arm_spec(arm).mix is not None
    except ConfigError:  # an arm this version does not know (tables from elsewhere)
        return bool(np.nanmax(np.abs(values.to_numpy(float)), initial=0) > 0)


def arms_with_smear(paths: pd.DataFrame) -> set[str]:
    """Arms whose models have a smear term, so their smear path is measured."""
    sm = paths[(paths["path"] == "smear") & (paths["metric"] == "share")]
    return {str(a) for a, v in sm.groupby("arm")["value"] if mixes_previous_token(str(a), v)}


# ---------------------------------------------------------------------------------------------
# Tests across seeds


def one_sample(values, sesoi: float | None = None, alpha: float = ALPHA) -> dict:
    """Mean of per-seed values (each already a within-run difference, e.g. a loss increase) against 0:
    t 95% CI, t p, exact sign-flip p (and the smallest it can reach), TOST at ±sesoi, verdict."""
    d = np.asarray(pd.Series(values, dtype=float).dropna(), float)
    n, nan = len(d), math.nan
    out = dict(n=n, mean=float(d.mean()) if n else nan, sd=float(d.std(ddof=1)) if n > 1 else nan,
               ci_low=nan, ci_high=nan, p_value=nan, p_signflip=nan, p_signflip_min=stats.sign_flip_min_p(n),
               p_tost=nan, sesoi=float(sesoi) if sesoi else nan, significant=None, verdict="")
    if n < 2:
        out["verdict"] = f"too few seeds to tell ({n} seed{'s' if n != 1 else ''})"
        return out
    out["ci_low"], out["ci_high"] = stats.t_ci(d)
    out.update(p_value=stats.paired_t(d), p_signflip=stats.sign_flip_p(d))
    if sesoi:
        out["p_tost"] = stats.tost_p(d, sesoi)
    row = dict(out, role="exploratory", p_holm=out["p_value"], diff=out["mean"])
    out["verdict"], out["significant"] = stats.verdict(row, alpha)
    return out


def compare(per_seed: pd.DataFrame, column: str, arm: str, reference: str = BASELINE,
            sesoi: float | None = None, label: str | None = None) -> dict:
    """`arm` − `reference` on one per-seed column, paired by seed (stats.compare_arms), exploratory."""
    r = stats.compare_arms(per_seed, column, arm=arm, baseline=reference, sesoi=sesoi, role="exploratory")
    r["label"] = label or column
    return r


# ---------------------------------------------------------------------------------------------
# Path shares


def path_shares(paths: pd.DataFrame | None, offset: int = 1, metric: str = "share") -> pd.DataFrame:
    """Per run and gate: the total, smear, rest and leftover paths of token i−offset (tidy: run columns,
    offset, gate, path, value, n). Final checkpoint of each run."""
    paths = _need(paths, "paths")
    df = final_rows(paths[(paths["offset"] == offset) & (paths["layer"] == -1)])
    if df.empty:
        raise AnalysisError(f"the paths table has no offset-{offset} rows")
    n = df[df["metric"] == "n"].groupby(RUN_KEYS + ["gate", "path"])["value"].first().rename("n")
    out = df[df["metric"] == metric].groupby(RUN_KEYS + ["gate", "path"])["value"].mean().to_frame().join(n)
    return out.reset_index().assign(offset=offset)[RUN_KEYS + ["offset", "gate", "path", "value", "n"]]


def share_per_seed(paths: pd.DataFrame | None, offset: int = 1) -> pd.DataFrame:
    """One row per run: `{path}_{gate}` share columns (e.g. smear_all, smear_open, rest_closed) and
    n_{gate} (positions in each gate group); NaN where a gate group is absent."""
    tidy = path_shares(paths, offset)
    wide = tidy.pivot_table(index=RUN_KEYS, columns=["path", "gate"], values="value", aggfunc="mean")
    wide.columns = [f"{p}_{g}" for p, g in wide.columns]
    n = tidy[tidy["path"] == "total"].pivot_table(index=RUN_KEYS, columns="gate", values="n", aggfunc="first")
    n.columns = [f"n_{g}" for g in n.columns]
    out = wide.join(n).reset_index()
    for p in ("total",) + PATHS:
        for g in GATES:
            out[f"{p}_{g}"] = out.get(f"{p}_{g}", math.nan)
    for g in GATES:
        out[f"n_{g}"] = out.get(f"n_{g}", math.nan)
    return out.sort_values(["arm", "seed"]).reset_index(drop=True)


def share_tests(paths: pd.DataFrame | None, offset: int = 1, reference: str = RECORD_ARM) -> pd.DataFrame:
    """The smear path's share per arm with a smear term (mean, t CI over seeds); the gate's effect within
    each run (open − closed share, tested against 0 across seeds); and each other arm with a smear term
    against `reference` (paired by seed)."""
    per_seed = share_per_seed(paths, offset)
    smeared = arms_with_smear(paths)
    rows = []
    for arm in arm_order(per_seed["arm"]):
        if arm not in smeared:
            continue
        a = per_seed[per_seed["arm"] == arm]
        split = a["smear_open"].notna().any() and a["smear_closed"].notna().any()  # a fixed dose is always open
        for gate in GATES if split else ("all",):
            if a[f"smear_{gate}"].notna().any():
                rows.append(dict(kind="share", arm=arm, reference="", gate=gate,
                                 label=f"smear share of token i−{offset}'s effect (gate {gate})",
                                 **one_sample(a[f"smear_{gate}"], SESOI["share"])))
        diff = (a["smear_open"] - a["smear_closed"]).dropna()
        if len(diff):
            rows.append(dict(kind="open_minus_closed", arm=arm, reference="", gate="open − closed",
                             label="smear share, gate open − closed (within each run)",
                             **one_sample(diff, SESOI["share"])))
    if reference in smeared:
        for arm in arm_order(smeared):
            if arm != reference:
                r = compare(per_seed, "smear_all", arm, reference, SESOI["share"],
                            f"smear share of token i−{offset}'s effect (gate all)")
                rows.append(dict(kind="vs_reference", gate="all", **_comparison(r)))
    return pd.DataFrame(rows)


def _comparison(r: dict) -> dict:
    """A stats.compare_arms row in the columns of the one-sample rows (mean = the mean paired difference)."""
    return dict(arm=r["arm"], reference=r["baseline"], label=r["label"], n=r["n_pairs"] if r["paired"] else 0,
                mean=r["diff"], sd=r["sd_diff"], ci_low=r["ci_low"], ci_high=r["ci_high"], p_value=r["p_value"],
                p_signflip=r["p_signflip"], p_signflip_min=r["p_signflip_min"], p_tost=r["p_tost"],
                sesoi=r["sesoi"], significant=r["significant"], verdict=r["verdict"],
                mean_reference=r["mean_baseline"], mean_arm=r["mean_arm"], paired=r["paired"])


def edge_shares(paths: pd.DataFrame | None, offset: int = 1, source: int | None = None, part: str = "kv",
                gate: str = "all", metric: str = "share") -> pd.DataFrame:
    """Per arm, layer and head: the share of token i−offset's effect through that head's key and value
    at position i−source (default source = offset: the head reading the replaced token itself), as
    the mean, min and max over seeds (final checkpoints)."""
    paths = _need(paths, "paths")
    source = offset if source is None else source
    df = final_rows(paths[(paths["path"] == "head") & (paths["offset"] == offset) & (paths["source"] == source)
                          & (paths["part"] == part) & (paths["gate"] == gate) & (paths["metric"] == metric)])
    if df.empty:
        raise AnalysisError(f"the paths table has no head edges for offset {offset}, source i−{source}, part {part}")
    g = df.groupby(["arm", "layer", "head"])["value"]
    out = g.agg(mean="mean", lo="min", hi="max", n_seeds="count").reset_index()
    return out.assign(offset=offset, source=source, part=part)


# ---------------------------------------------------------------------------------------------
# Read-out


def readout_per_seed(readout: pd.DataFrame | None, target: str = "prev", metric: str = "above_baseline") -> pd.DataFrame:
    """Per run and layer: the probe's `metric` for `target` (layer = n_layers is the final residual)."""
    readout = _need(readout, "readout")
    df = final_rows(readout[(readout["target"] == target) & (readout["metric"] == metric)])
    if df.empty:
        raise AnalysisError(f"the readout table has no {metric} rows for target {target!r}")
    return df.groupby(RUN_KEYS + ["layer"], as_index=False)["value"].mean()


def readout_tests(readout: pd.DataFrame | None, target: str = "prev") -> pd.DataFrame:
    """At each layer, every non-baseline arm − baseline on the accuracy above the bigram baseline
    (paired by seed), with each arm's mean."""
    per = readout_per_seed(readout, target)
    n_layers = int(per["layer"].max())
    rows = []
    for layer, g in per.groupby("layer"):
        where = "final residual" if layer == n_layers else f"layer {int(layer)} input"
        for arm in [a for a in arm_order(g["arm"]) if a != BASELINE]:
            r = compare(g.rename(columns={"value": "above"}), "above", arm, BASELINE, SESOI["readout"],
                        f"token i−1 read-out above the bigram baseline, {where}")
            rows.append(dict(kind="vs_reference", layer=int(layer), final=layer == n_layers, **_comparison(r)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Knock-outs


def knockout_per_seed(knockouts: pd.DataFrame | None, head_ablation: str = "mean") -> pd.DataFrame:
    """Per run: the loss increases (nats/token) of each knock-out, tidy: run columns, effect, k,
    smear_ablation, value. Effects: `smear` (the smear term knocked out; one per smear_ablation),
    `head` (the top-k previous-token heads ablated, `head_ablation`), `both`, `interaction`
    (both − head − smear + neither: positive when the two routes stand in for each other)."""
    knockouts = _need(knockouts, "knockouts")
    df = final_rows(knockouts[(knockouts["head_ablation"] == head_ablation)
                              & knockouts["metric"].isin(KNOCKOUT_EFFECTS)])
    if df.empty:
        raise AnalysisError(f"the knockouts table has no {head_ablation}-ablation rows")
    df = df.rename(columns={"metric": "effect"})
    smear = df[df["effect"] == "smear"].groupby(RUN_KEYS + ["smear_ablation"], as_index=False)["value"].first()
    smear = smear.assign(effect="smear", k=0)  # the smear knock-out does not depend on k
    head = df[df["effect"] == "head"].groupby(RUN_KEYS + ["k"], as_index=False)["value"].first()
    head = head.assign(effect="head", smear_ablation="")  # nor the heads' on the smear knock-out
    rest = df[df["effect"].isin(["both", "interaction"])][RUN_KEYS + ["effect", "k", "smear_ablation", "value"]]
    cols = RUN_KEYS + ["effect", "k", "smear_ablation", "value"]
    return pd.concat([smear[cols], head[cols], rest[cols]], ignore_index=True)


def knockout_label(effect: str, k: int, smear_ablation: str) -> str:
    heads = f"top-{k} previous-token head{'s' if k != 1 else ''}"
    return {"smear": f"smear knocked out ({smear_ablation})", "head": f"{heads} ablated",
            "both": f"{heads} and smear ({smear_ablation}) knocked out",
            "interaction": f"interaction, {heads} × smear ({smear_ablation})"}[effect]


def knockout_tests(knockouts: pd.DataFrame | None, head_ablation: str = "mean",
                   smeared: set[str] | None = None) -> pd.DataFrame:
    """Each arm's loss increase of each knock-out against 0 (one-sample across seeds); the smear and
    interaction rows only for arms with a smear term (`smeared`; default: arms whose smear knock-out
    changes the loss in some run). Then, paired by seed: every non-baseline arm − baseline on the heads'
    ablation, and every other smeared arm − smear on the smear knock-out."""
    per = knockout_per_seed(knockouts, head_ablation)
    if smeared is None:
        sm = per[per["effect"] == "smear"]
        smeared = {str(a) for a, v in sm.groupby("arm")["value"] if mixes_previous_token(str(a), v)}
    rows = []
    keys = per[["effect", "k", "smear_ablation"]].drop_duplicates()
    order = {e: i for i, e in enumerate(KNOCKOUT_EFFECTS)}
    keys = keys.assign(o=keys["effect"].map(order)).sort_values(["o", "k", "smear_ablation"]).drop(columns="o")
    for arm in arm_order(per["arm"]):
        for effect, k, kind in keys.itertuples(index=False):
            if effect != "head" and arm not in smeared:
                continue
            v = per[(per["arm"] == arm) & (per["effect"] == effect) & (per["k"] == k) & (per["smear_ablation"] == kind)]
            if len(v):
                rows.append(dict(kind="vs_zero", arm=arm, reference="", effect=effect, k=int(k), smear_ablation=kind,
                                 label=knockout_label(effect, int(k), kind), **one_sample(v["value"], SESOI["knockout"])))
    for effect, k, kind in keys.itertuples(index=False):
        sel = per[(per["effect"] == effect) & (per["k"] == k) & (per["smear_ablation"] == kind)]
        if effect == "head":
            pairs = [(a, BASELINE) for a in arm_order(sel["arm"]) if a != BASELINE]
        elif effect == "smear" and RECORD_ARM in smeared:
            pairs = [(a, RECORD_ARM) for a in arm_order(smeared) if a != RECORD_ARM]
        else:
            continue
        for arm, ref in pairs:
            r = compare(sel.rename(columns={"value": "increase"}), "increase", arm, ref, SESOI["knockout"],
                        knockout_label(effect, int(k), kind))
            rows.append(dict(kind="vs_reference", effect=effect, k=int(k), smear_ablation=kind, **_comparison(r)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Everything, for the report and the notebook


@dataclass
class MechanismSummary:
    """The tables of each part, or why a part is absent (`missing`: part -> message)."""

    shares: pd.DataFrame | None = None  # share_per_seed, offset 1
    share_tests: pd.DataFrame | None = None
    readout: pd.DataFrame | None = None  # readout_per_seed
    readout_tests: pd.DataFrame | None = None
    knockouts: pd.DataFrame | None = None  # knockout_per_seed
    knockout_tests: pd.DataFrame | None = None
    missing: dict[str, str] = field(default_factory=dict)


def summarize_mechanism(tables: Tables) -> MechanismSummary:
    """Every mechanism table and test the tables allow; a part whose table is missing says why."""
    out = MechanismSummary()
    smeared = None
    try:
        out.shares = share_per_seed(tables.get("paths"))
        out.share_tests = share_tests(tables.get("paths"))
        smeared = arms_with_smear(tables.get("paths"))
    except AnalysisError as e:
        out.missing["paths"] = str(e)
    try:
        out.readout = readout_per_seed(tables.get("readout"))
        out.readout_tests = readout_tests(tables.get("readout"))
    except AnalysisError as e:
        out.missing["readout"] = str(e)
    try:
        out.knockouts = knockout_per_seed(tables.get("knockouts"))
        out.knockout_tests = knockout_tests(tables.get("knockouts"), smeared=smeared)
    except AnalysisError as e:
        out.missing["knockouts"] = str(e)
    return out


# ---------------------------------------------------------------------------------------------
# What the freed heads do (the head_roles table, analysis.mechanism.induction_circuit)

FREED_COLUMNS = [*RUN_KEYS, "layer", "head", "baseline_prev", "metric", "value"]


def freed_head_roles(heads: pd.DataFrame, roles: pd.DataFrame,
                     threshold: float = stats.DEFAULT_THRESHOLD) -> pd.DataFrame:
    """The roles of the freed heads: for every run of every arm, the `head_roles` rows (its final step) of
    the (layer, head) places that are previous-token heads (prev_token ≥ `threshold`, final step) in the
    baseline run of the same seed, with that baseline score as `baseline_prev`. Seeds without a baseline run
    give no rows (a place is a seed's own: unlike the claims, no other seed's places stand in). The baseline's
    own rows are kept: they are what the heads did before they were freed. Columns FREED_COLUMNS."""
    for df, what, need in ((heads, "heads", {"arm", "seed", "run", "step", "layer", "head", "metric", "value"}),
                           (roles, "head_roles", set(FREED_COLUMNS) - {"baseline_prev"})):
        missing = need - set(_need(df, what).columns)
        if missing:
            raise AnalysisError(f"freed head roles: the {what} table lacks column(s) {', '.join(sorted(missing))}")
    places = stats.baseline_prev_positions(heads, threshold).rename(columns={"score": "baseline_prev"})
    out = final_rows(roles).merge(places, on=["seed", "layer", "head"], how="inner")
    return out[FREED_COLUMNS].sort_values([*RUN_KEYS, "layer", "head", "metric"], ignore_index=True)


__all__ = ["SESOI", "PATHS", "GATES", "KNOCKOUT_EFFECTS", "one_sample", "compare", "path_shares", "share_per_seed",
           "share_tests", "edge_shares", "readout_per_seed", "readout_tests", "knockout_per_seed", "knockout_label",
           "knockout_tests", "MechanismSummary", "summarize_mechanism", "FREED_COLUMNS", "freed_head_roles"]
