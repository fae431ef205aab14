"""The size sweep: learned smear vs baseline at several widths, one study folder each.

Per size: the shapes (d_model, heads, head size) and parameters (all, and without the token and value
embeddings and the head), the tokens trained and tokens per parameter; the paired (by seed) smear −
baseline difference of previous-token mass, best head and validation loss at the end (the study's own
final-checkpoint tables, `stats.compare_arms`) and at MATCHED validation loss; and the learned λ and
mean coefficient λ·gate (`stats.smear_final`) with a t CI over seeds.

Matched loss, per seed: the level both arms reach is the higher of their two final validation losses;
each arm's step at that level is where its validation curve (linear between logged points) first gets
there; the previous-token measures of the recorder (`record_heads`, every `record_every` steps) are
interpolated linearly at those steps. A smear that only trains faster would show a difference at the
end and none at matched loss.

Across sizes (`size_trends`, exploratory): each paired difference and the learned coefficient against
log2 of the parameter count, an OLS line over the runs (sizes differ in shape, so their seeds share no
weights: every point is its own), its slope per doubling of parameters with a t CI.

`load_size_study` reads one finished study folder; everything else is pure (tables in, tables out).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from analysis import stats
from analysis.stats.inference import t_ci
from trainer.config import ModelConfig, TrainConfig, from_dict, get_preset
from trainer.errors import AnalysisError, ConfigError, one_line
from trainer.model import GPT

RECORD_PRESET = "speedrun-124m"
RECORD_COEF = 0.07  # the record's learned mix, `token + 0.07·prior_token` (SPEC)
END_MEASURES = ("prev_mass", "best_prev", "val_loss")
MATCHED_MEASURES = ("prev_mass", "best_prev")
MEASURE_LABELS = {"prev_mass": "previous-token mass", "best_prev": "best head's previous-token score",
                  "val_loss": "validation loss", "coef_mean": "mean coefficient λ·gate", "lambda": "λ"}
EMBEDDING_PREFIXES = ("embed.", "value_embeds.", "lm_head.")  # not counted in the non-embedding parameters


# ---------------------------------------------------------------------------------------------
# Sizes


def param_counts(model: ModelConfig) -> dict[str, int]:
    """All parameters of the one model definition (built on the meta device: no memory, no init cost),
    and those outside the token embedding, value embeddings and head (padded vocabulary included)."""
    with torch.device("meta"):
        gpt = GPT(model)
    total = embed = 0
    for name, p in gpt.named_parameters():
        total += p.numel()
        embed += p.numel() if name.startswith(EMBEDDING_PREFIXES) else 0
    return {"params_total": int(total), "params_nonembed": int(total - embed)}


def size_row(size: str, preset: str, model: ModelConfig, tokens: int) -> dict:
    """One size's shapes, parameters and tokens per parameter (tokens: those each run trained on)."""
    counts = param_counts(model)
    return dict(size=size, preset=preset, d_model=model.d_model, n_heads=model.n_heads, d_head=model.d_head,
                n_layers=model.n_layers, attn_scale=model.attn_scale, **counts, tokens=int(tokens),
                tokens_per_param=tokens / counts["params_total"],
                tokens_per_nonembed_param=tokens / counts["params_nonembed"])


def record_reference() -> dict:
    """The record's 124M model and its learned coefficient, for the figure's reference point."""
    model = dataclasses.replace(get_preset(RECORD_PRESET).model, arm=stats.BASELINE)  # counted as the sizes are
    return dict(size="record (speedrun-124m)", coef_mean=RECORD_COEF, **param_counts(model))


# ---------------------------------------------------------------------------------------------
# Matched validation loss


def crossing_step(steps: Sequence[float], losses: Sequence[float], level: float) -> float:
    """The first step at which the validation loss, linear between logged points, is at or below
    `level`; NaN when it never gets there."""
    s, v = np.asarray(steps, float), np.asarray(losses, float)
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    hit = np.flatnonzero(v <= level)
    if not len(hit) or not math.isfinite(level):
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(s[0])
    # v[i-1] > level >= v[i]: the segment crosses the level once
    return float(s[i - 1] + (v[i - 1] - level) / (v[i - 1] - v[i]) * (s[i] - s[i - 1]))


def value_at(steps: Sequence[float], values: Sequence[float], at: float) -> float:
    """`values` linear between `steps`, at step `at`; NaN outside the steps (no extrapolation)."""
    s, v = np.asarray(steps, float), np.asarray(values, float)
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if not len(s) or not math.isfinite(at) or at < s.min() or at > s.max():
        return math.nan
    order = np.argsort(s, kind="stable")
    return float(np.interp(at, s[order], v[order]))


def prev_over_steps(record_heads: pd.DataFrame) -> pd.DataFrame:
    """arm, seed, step, prev_mass (sum of the heads' previous-token scores), best_prev (the highest), per recorded step."""
    df = record_heads[record_heads["metric"] == "prev_token"]
    g = df.groupby(["arm", "seed", "step"], as_index=False)["value"]
    return g.sum().rename(columns={"value": "prev_mass"}).merge(
        g.max().rename(columns={"value": "best_prev"}), on=["arm", "seed", "step"])


def matched_loss(val: pd.DataFrame, prev: pd.DataFrame, *, arm: str = stats.RECORD_ARM,
                 baseline: str = stats.BASELINE) -> pd.DataFrame:
    """Per seed with both arms, one row per arm: the matched loss level (the higher of the two final
    validation losses), the step the arm first reaches it, and its previous-token measures there.

    `val`: arm, seed, step, val_loss (the logged validation points); `prev`: arm, seed, step and
    MATCHED_MEASURES columns (`prev_over_steps`). Steps outside the recorded range give NaN."""
    rows = []
    val = val.dropna(subset=["val_loss"])
    seeds = sorted(set(val.loc[val["arm"] == arm, "seed"]) & set(val.loc[val["arm"] == baseline, "seed"]))
    for seed in seeds:
        curves = {a: val[(val["arm"] == a) & (val["seed"] == seed)].sort_values("step") for a in (baseline, arm)}
        level = max(float(c["val_loss"].iloc[-1]) for c in curves.values())
        for a, c in curves.items():
            step = crossing_step(c["step"], c["val_loss"], level)
            p = prev[(prev["arm"] == a) & (prev["seed"] == seed)]
            row = dict(arm=a, seed=int(seed), loss_level=level, step=step, final_step=int(c["step"].iloc[-1]),
                       final_val_loss=float(c["val_loss"].iloc[-1]))
            for m in MATCHED_MEASURES:
                row[m] = value_at(p["step"], p[m], step) if len(p) else math.nan
                # the same probe at the run's end: matched vs end on one probe batch, like for like
                row[f"{m}_end"] = value_at(p["step"], p[m], row["final_step"]) if len(p) else math.nan
            rows.append(row)
    cols = ["arm", "seed", "loss_level", "step", "final_step", "final_val_loss", *MATCHED_MEASURES,
            *(f"{m}_end" for m in MATCHED_MEASURES)]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------
# Comparisons per size

COMPARE_COLUMNS = ["size", "when", "measure", "label", "n_pairs", "mean_baseline", "mean_arm", "diff", "ci_low",
                   "ci_high", "p_value", "sesoi", "verdict", "note"]


def compare_size(size: str, per_seed: pd.DataFrame, matched: pd.DataFrame, *, arm: str = stats.RECORD_ARM,
                 baseline: str = stats.BASELINE) -> pd.DataFrame:
    """arm − baseline, paired by seed, at the end (`per_seed`: stats.per_seed_claims with val_loss) and at
    matched validation loss (`matched_loss`), on each measure; all exploratory. "end (recorder)" is the
    end on the recorder's probe batch, which the matched-loss values also use."""
    rows = []
    recorded_end = matched.drop(columns=list(MATCHED_MEASURES)).rename(columns=lambda c: c.removesuffix("_end"))
    for when, df, measures in (("end", per_seed, END_MEASURES), ("end (recorder)", recorded_end, MATCHED_MEASURES),
                               ("matched loss", matched, MATCHED_MEASURES)):
        for m in measures:
            if m not in df.columns or not df[m].notna().any():
                continue
            r = stats.compare_arms(df, m, arm=arm, baseline=baseline, role="exploratory")
            rows.append(dict({k: r[k] for k in COMPARE_COLUMNS if k in r}, size=size, when=when, measure=m,
                             label=MEASURE_LABELS[m]))
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def coefficient_summary(size: str, smear_final: pd.DataFrame) -> list[dict]:
    """Mean over seeds of the final λ and mean coefficient λ·gate, with a t 95% CI (NaN under 2 seeds)."""
    rows = []
    for m in ("lambda", "coef_mean"):
        v = smear_final[m].astype(float).dropna().to_numpy() if m in smear_final else np.array([])
        lo, hi = t_ci(v)
        rows.append(dict(size=size, measure=m, label=MEASURE_LABELS[m], n_seeds=len(v),
                         mean=float(v.mean()) if len(v) else math.nan, ci_low=lo, ci_high=hi,
                         seeds=", ".join(f"{x:.4f}" for x in v)))
    return rows


TREND_COLUMNS = ["measure", "label", "when", "n_points", "n_sizes", "slope", "ci_low", "ci_high", "p_value",
                 "verdict"]


def _paired(df: pd.DataFrame, measure: str, arm: str, baseline: str) -> pd.DataFrame:
    """size, seed, value: arm − baseline per seed with both."""
    wide = df.pivot_table(index=["size", "seed"], columns="arm", values=measure, aggfunc="first")
    if arm not in wide or baseline not in wide:
        return pd.DataFrame(columns=["size", "seed", "value"])
    return (wide[arm] - wide[baseline]).dropna().rename("value").reset_index()


def size_trends(per_seed: pd.DataFrame, matched: pd.DataFrame, sizes: pd.DataFrame, *,
                arm: str = stats.RECORD_ARM, baseline: str = stats.BASELINE) -> pd.DataFrame:
    """Each paired difference (at the end; previous-token measures also at matched loss) and the arm's mean
    coefficient against log2(total parameters): OLS slope per doubling with its t 95% CI and p. A slope
    needs ≥ 2 sizes and ≥ 3 points; its CI says only whether a trend is shown, at these few sizes."""
    from scipy import stats as st

    log2p = np.log2(sizes.set_index("size")["params_total"].astype(float))
    series = [(m, "end", _paired(per_seed, m, arm, baseline)) for m in END_MEASURES if m in per_seed]
    series += [(m, "matched loss", _paired(matched, m, arm, baseline)) for m in MATCHED_MEASURES if m in matched]
    if "coef_mean" in per_seed:
        coef = per_seed.loc[per_seed["arm"] == arm, ["size", "seed", "coef_mean"]]
        series.append(("coef_mean", "end", coef.rename(columns={"coef_mean": "value"}).dropna()))
    rows = []
    for m, when, d in series:
        x, y = d["size"].map(log2p).to_numpy(float), d["value"].to_numpy(float)
        row = dict(measure=m, label=MEASURE_LABELS[m] + ("" if m == "coef_mean" else f" ({arm} − {baseline})"),
                   when=when, n_points=len(d), n_sizes=d["size"].nunique(), slope=math.nan, ci_low=math.nan,
                   ci_high=math.nan, p_value=math.nan)
        if row["n_sizes"] < 2 or len(d) < 3:
            rows.append(dict(row, verdict="too few sizes or runs for a slope"))
            continue
        fit = st.linregress(x, y)
        half = float(st.t.ppf(0.975, len(d) - 2)) * fit.stderr
        row.update(slope=fit.slope, ci_low=fit.slope - half, ci_high=fit.slope + half, p_value=fit.pvalue)
        verdict = ("grows with size" if row["ci_low"] > 0 else "shrinks with size" if row["ci_high"] < 0 else
                   "no trend shown: the slope's CI includes 0 (too few sizes and seeds to tell)")
        rows.append(dict(row, verdict=verdict))
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


# ---------------------------------------------------------------------------------------------
# One study folder per size


@dataclass
class SizeStudy:
    """One size of the sweep: a finished study folder, read."""

    size: str  # its label: the study folder's name
    folder: Path
    preset: str
    model: ModelConfig  # the runs' model, arm set to the baseline (parameters counted without the smear's 12)
    tokens: int  # tokens each run trained on
    tables: stats.Tables
    val: pd.DataFrame  # run, arm, seed, step, val_loss: every logged validation point
    notes: list[str] = field(default_factory=list)


def _val_points(runs: pd.DataFrame, folder: Path) -> pd.DataFrame:
    parts = []
    for run, arm, seed in runs[["run", "arm", "seed"]].itertuples(index=False):
        path = folder / str(run) / "loss.csv"
        if not path.exists():
            continue
        try:
            v = pd.read_csv(path, usecols=["step", "val_loss"]).dropna()
        except (ValueError, pd.errors.ParserError) as e:
            raise AnalysisError(f"{path}: not a training loss log ({one_line(e)})") from None
        parts.append(v.assign(run=str(run), arm=str(arm), seed=int(seed)))
    cols = ["run", "arm", "seed", "step", "val_loss"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def load_size_study(folder: str | Path, size: str | None = None) -> SizeStudy:
    """Read a finished study folder (`smearlens study`): its tables, its runs' manifests and loss logs.
    One size per folder: runs of several presets or model shapes are an AnalysisError naming them."""
    folder = Path(folder)
    if not (folder / "analysis" / "heads.parquet").exists():
        raise AnalysisError(f"{folder}: not a finished study folder (no analysis/heads.parquet); run "
                            f"`smearlens study --out {folder} ...` first")
    tables = stats.load_tables(folder / "analysis", runs_dir=folder)
    preset = tables.preset
    plan_path = folder / "study.json"
    if plan_path.exists():
        try:
            planned = json.loads(plan_path.read_text()).get("preset")
        except (OSError, ValueError, RecursionError, AttributeError) as e:
            raise AnalysisError(f"{plan_path}: not a study plan ({one_line(e)})") from None
        if planned != preset:
            raise AnalysisError(f"{folder}: study.json plans preset {planned!r} but the tables hold runs of {preset!r}")
    runs = tables.heads.drop_duplicates("run")[["run", "arm", "seed"]]
    missing = sorted(set(runs["run"].astype(str)) - set(tables.configs))
    if missing:
        raise AnalysisError(f"{folder}: no run.json for run(s) {', '.join(missing)}: the size of a run is read from it")
    shapes: dict[ModelConfig, list[str]] = {}
    tokens: dict[int, list[str]] = {}
    for run, manifest in sorted(tables.configs.items()):
        try:
            model = dataclasses.replace(from_dict(ModelConfig, manifest["model_config"]), arm=stats.BASELINE)
            train = from_dict(TrainConfig, manifest["train_config"])
        except (KeyError, TypeError, ConfigError) as e:
            raise AnalysisError(f"{folder / run / 'run.json'}: no readable model and train config ({one_line(e)})") from None
        shapes.setdefault(model, []).append(run)
        tokens.setdefault(train.steps * train.batch_size * train.seq_len, []).append(run)
    if len(shapes) > 1:
        detail = "; ".join(f"d_model {m.d_model}, {m.n_heads} heads of {m.d_head}, {m.n_layers} layers: "
                           f"{', '.join(r[:3])}" for m, r in shapes.items())
        raise AnalysisError(f"{folder}: runs of different model shapes ({detail}); one size per study folder")
    notes = list(tables.notes)
    if len(tokens) > 1:
        notes.append(f"{folder.name}: runs trained on different token counts "
                     + "; ".join(f"{t:,}: {', '.join(r[:3])}" for t, r in tokens.items()) + " (the largest is used)")
    return SizeStudy(size=size or folder.name, folder=folder, preset=preset, model=next(iter(shapes)),
                     tokens=max(tokens), tables=tables, val=_val_points(runs, folder), notes=notes)


# ---------------------------------------------------------------------------------------------
# The sweep's tables


@dataclass
class SweepTables:
    sizes: pd.DataFrame  # one row per size: shapes, parameters, tokens, tokens per parameter
    comparisons: pd.DataFrame  # size × when (end, matched loss) × measure: paired smear − baseline
    matched: pd.DataFrame  # size × seed × arm: the matched loss level, the step there, prev measures there
    coefficients: pd.DataFrame  # size × (lambda, coef_mean): mean over seeds with CI
    per_seed: pd.DataFrame  # size × run at the end: prev_mass, best_prev, val_loss, lambda, coef_mean
    trends: pd.DataFrame  # measure × when: slope per doubling of parameters across sizes (size_trends)
    notes: list[str]

    def with_sizes(self, name: str) -> pd.DataFrame:
        """Table `name` with each size's parameters and tokens per parameter joined on."""
        cols = ["size", "d_model", "d_head", "params_total", "params_nonembed", "tokens_per_param"]
        return getattr(self, name).merge(self.sizes[cols], on="size", how="left")


def sweep_tables(studies: Iterable[SizeStudy], *, arm: str = stats.RECORD_ARM,
                 baseline: str = stats.BASELINE) -> SweepTables:
    """Every table of the sweep, the sizes ordered by parameter count."""
    studies = list(studies)
    labels = [s.size for s in studies]
    if len(set(labels)) != len(labels):
        raise AnalysisError(f"two studies share a size label ({', '.join(labels)}): name the folders apart")
    sizes, comparisons, matched, coefs, per_seed, notes = [], [], [], [], [], []
    for s in studies:
        sizes.append(size_row(s.size, s.preset, s.model, s.tokens))
        seeds = stats.per_seed_claims(s.tables.heads)
        if s.tables.losses is not None:
            seeds = seeds.merge(s.tables.losses, on="run", how="left")
        smear = s.tables.get("smear") if s.tables.get("smear") is not None else s.tables.get("record_smear")
        final = stats.smear_final(smear) if smear is not None else pd.DataFrame(columns=["run", "lambda", "coef_mean"])
        seeds = seeds.merge(final[["run", "lambda", "coef_mean"]], on="run", how="left")
        per_seed.append(seeds.assign(size=s.size))
        rec = s.tables.get("record_heads")
        prev = prev_over_steps(rec) if rec is not None else pd.DataFrame(columns=["arm", "seed", "step", *MATCHED_MEASURES])
        m = matched_loss(s.val, prev, arm=arm, baseline=baseline).assign(size=s.size)
        matched.append(m)
        comparisons.append(compare_size(s.size, seeds, m, arm=arm, baseline=baseline))
        coefs += coefficient_summary(s.size, final)
        notes += [f"{s.size}: {n}" for n in s.notes]
        if rec is None:
            notes.append(f"{s.size}: no record_heads.parquet in the run folders: no matched-loss comparison")
        elif m["step"].notna().any() and m[list(MATCHED_MEASURES)].isna().any().any():
            notes.append(f"{s.size}: a matched-loss step lies outside the recorded steps: left out (NaN)")
        if s.val.groupby("run").size().min() < 3 if len(s.val) else True:
            notes.append(f"{s.size}: fewer than 3 validation points in a run: matched-loss steps are coarse "
                         "(train with --set val_every=N)")
    size_df = pd.DataFrame(sizes).sort_values("params_total", kind="stable").reset_index(drop=True)
    order = {s: i for i, s in enumerate(size_df["size"])}

    def ordered(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
        if not len(df):
            return df
        return df.assign(_o=df["size"].map(order)).sort_values(["_o", *by], kind="stable").drop(columns="_o") \
            .reset_index(drop=True)

    cat = lambda parts: pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame()
    per_seed_df, matched_df = ordered(cat(per_seed), ["arm", "seed"]), ordered(cat(matched), ["seed", "arm"])
    return SweepTables(sizes=size_df, comparisons=ordered(cat(comparisons), []), matched=matched_df,
                       coefficients=ordered(pd.DataFrame(coefs), []), per_seed=per_seed_df,
                       trends=size_trends(per_seed_df, matched_df, size_df, arm=arm, baseline=baseline), notes=notes)


__all__ = ["SizeStudy", "SweepTables", "crossing_step", "value_at", "matched_loss", "prev_over_steps",
           "compare_size", "coefficient_summary", "param_counts", "size_row", "record_reference",
           "load_size_study", "size_trends", "sweep_tables", "RECORD_COEF"]
