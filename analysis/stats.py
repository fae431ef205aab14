"""Statistics over the analysis tables: does the smear arm have fewer previous-token heads?

Per-seed values of each claim at each run's final step, then the smear − baseline comparison:
a bootstrap 95% CI of the difference of means (resampling seeds, paired when both arms have the
same seeds) and a Welch t-test p-value, with a verdict in words. A comparison that cannot be made
says why in its verdict ("arm missing", "fewer than 2 seeds per arm") instead of raising.

Pure functions (DataFrames in, DataFrames or dicts out), except `load_tables`, which reads the
parquet files. Tables that cannot be analysed raise `AnalysisError` with a message to act on.
"""

from __future__ import annotations

import json
import math
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from analysis.schema import HEAD_METRICS, RUN_COLUMNS, TABLE_COLUMNS  # noqa: F401 (re-exported)
from trainer.config import TrainConfig, from_dict
from trainer.errors import AnalysisError, ConfigError, one_line
from trainer.optim import window_blocks

ARMS = ("baseline", "smear")
DEFAULT_THRESHOLD = 0.4
THRESHOLDS = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.2 … 0.8
ALPHA = 0.05
N_BOOT = 10_000
BOOT_SEED = 0  # fixed so a report is reproducible to the digit

RECORD_TABLES = {"record_heads": "heads", "record_smear": "smear"}  # written per run folder during training

# Each claim: the per-seed column, what it means, and the format of its numbers.
CLAIMS: dict[str, tuple[str, str]] = {
    "n_prev_heads": ("previous-token heads (score ≥ {t:g})", "{:.2f}"),
    "prev_mass": ("total previous-token mass (sum of scores)", "{:.3f}"),
    "best_prev": ("best head's previous-token score", "{:.3f}"),
    "ablation_mean_at_prev": ("loss increase, mean-ablating the baseline's previous-token heads (per head)", "{:.4f}"),
    "ablation_zero_at_prev": ("loss increase, zero-ablating the baseline's previous-token heads (per head)", "{:.4f}"),
    "induction_at_prev": ("induction score at the baseline's previous-token heads", "{:.3f}"),
}
PRIMARY_CLAIMS = ("n_prev_heads", "prev_mass")  # "freed up" needs both (SPEC)



def claim_label(claim: str, threshold: float = DEFAULT_THRESHOLD) -> str:
    """A claim's description in words, with its threshold filled in."""
    return CLAIMS[claim][0].format(t=threshold) if claim in CLAIMS else claim


TOKEN_CLASSES = ("word start", "continuation", "punctuation", "digits", "whitespace", "other")


@dataclass
class Tables:
    """The analysis tables of one preset; optional ones are None when absent."""

    heads: pd.DataFrame
    smear: pd.DataFrame | None = None
    smear_vocab: pd.DataFrame | None = None
    smear_tokens: pd.DataFrame | None = None
    paths: pd.DataFrame | None = None  # path attribution (analysis/paths.py), last checkpoints
    offsets: pd.DataFrame | None = None
    record_heads: pd.DataFrame | None = None
    record_smear: pd.DataFrame | None = None
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)  # what validation found that limits the analysis
    configs: dict[str, dict] = field(default_factory=dict)  # run -> its run.json, where found

    def get(self, name: str) -> pd.DataFrame | None:
        df = getattr(self, name)
        return df if df is not None and len(df) else None

    @property
    def preset(self) -> str:
        presets = sorted(set(self.heads["preset"].astype(str)))
        return presets[0] if len(presets) == 1 else ", ".join(presets)

    def seeds(self, arm: str) -> list[int]:
        return sorted(int(s) for s in self.heads.loc[self.heads["arm"] == arm, "seed"].unique())


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _read_parquet(path: Path, kind: str) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
        table.validate(full=True)  # e.g. invalid UTF-8 in a string column fails here, not deep in pandas later
        df = table.to_pandas()
    except Exception as e:  # pyarrow raises several types for a bad file; all mean the same to a user
        raise AnalysisError(f"{path}: not a readable parquet table ({type(e).__name__}: {one_line(e)})") from None
    missing = [c for c in TABLE_COLUMNS[kind] if c not in df.columns]
    if missing:
        raise AnalysisError(f"{path}: the {kind} table lacks column(s) {', '.join(missing)} "
                            f"(expected {', '.join(TABLE_COLUMNS[kind])})")
    return df


def read_manifests(runs: Iterable[str], runs_dir: Path) -> dict[str, dict]:
    """Each run's manifest (`run.json` in its run folder under `runs_dir`); runs without one are left out."""
    out = {}
    for run in sorted(set(map(str, runs))):
        try:
            out[run] = json.loads((runs_dir / run / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue  # provenance is optional: the report says which runs lack it
    return out


def window_growth_tokens(configs: dict[str, dict]) -> list[int]:
    """Training tokens after which the attention windows grow (YaRN), over the runs' manifests;
    empty when no manifest has a readable train config."""
    points: set[int] = set()
    needed = {"steps", "batch_size", "seq_len", "ws_schedule"}  # no defaults: a partial config says nothing
    for manifest in configs.values():
        train = manifest.get("train_config") if isinstance(manifest, dict) else None
        if not isinstance(train, dict) or not needed <= set(train):
            continue
        try:
            cfg = from_dict(TrainConfig, train)
        except (TypeError, ValueError, ConfigError):
            continue
        blocks = [window_blocks(step, cfg) for step in range(cfg.steps)]
        points |= {step * cfg.batch_size * cfg.seq_len for step in range(1, cfg.steps) if blocks[step] != blocks[step - 1]}
    return sorted(points)


def load_tables(folder: str | Path, runs_dir: str | Path | None = None, preset: str | None = None,
                validate: bool = True) -> Tables:
    """Read heads/smear/smear_vocab/smear_tokens from `folder` and the runs' record_*.parquet.

    Record tables are looked for in `folder` and in each run folder under `runs_dir` (default: the
    parent of `folder`, where the training writes run folders), keeping only the runs in the heads
    table. `preset` keeps one preset's rows when the folder mixes several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AnalysisError(f"{folder}: no such tables folder (the analysis writes heads.parquet and "
                            "smear*.parquet there)")
    if not (folder / "heads.parquet").exists():
        found = sorted(p.name for p in folder.glob("*.parquet"))
        raise AnalysisError(f"{folder}: no heads.parquet here (found: {', '.join(found) or 'no parquet files'})")
    frames: dict[str, pd.DataFrame | None] = {}
    for kind in TABLE_COLUMNS:
        path = folder / f"{kind}.parquet"
        frames[kind] = _read_parquet(path, kind) if path.exists() else None

    runs = set(frames["heads"]["run"].astype(str))
    runs_dir = Path(runs_dir) if runs_dir is not None else folder.parent
    for name, kind in RECORD_TABLES.items():
        paths = [folder / f"{name}.parquet"] + sorted(runs_dir.glob(f"*/{name}.parquet"))
        parts = [_read_parquet(p, kind) for p in paths if p.exists()]
        parts = [p[p["run"].astype(str).isin(runs)] for p in parts]  # stale runs in the folder are not ours
        parts = [p for p in parts if len(p)]
        frames[name] = pd.concat(parts, ignore_index=True).drop_duplicates() if parts else None

    if preset is not None:
        available = sorted(set(frames["heads"]["preset"].astype(str)))
        if preset not in available:
            raise AnalysisError(f"{folder}: no runs of preset {preset!r} (the tables hold: {', '.join(available)})")
        frames = {k: (v[v["preset"].astype(str) == preset].reset_index(drop=True) if v is not None else None)
                  for k, v in frames.items()}
    tables = Tables(**frames, folder=folder, configs=read_manifests(frames["heads"]["run"], runs_dir))
    if validate:
        tables.notes = validate_tables(tables)
    return tables


def validate_tables(tables: Tables) -> list[str]:
    """Check the tables can be analysed together; return notes on what limits the analysis.

    Raises AnalysisError when nothing sound can come out: presets mixed, unknown arms, one run
    labelled with two arms or seeds, two runs for one (arm, seed), no previous-token rows. Returns
    notes (an arm missing, fewer than 2 seeds, unmatched seeds, runs ending at different steps,
    non-finite values) that the notebooks and the report show. Non-finite head values are dropped
    from `tables.heads`, the one change it makes.
    """
    heads = tables.heads
    if heads is None or not len(heads):
        raise AnalysisError("the heads table is empty: no runs to analyse")
    present = {k: v for k, v in vars(tables).items() if isinstance(v, pd.DataFrame) and len(v)}

    by_preset: dict[str, set[str]] = {}
    for df in present.values():
        for p, runs in df.groupby(df["preset"].astype(str))["run"]:
            by_preset.setdefault(p, set()).update(runs.astype(str))
    if len(by_preset) > 1:
        detail = "; ".join(f"{p!r} (runs {', '.join(sorted(r)[:4])}{', …' if len(r) > 4 else ''})"
                           for p, r in sorted(by_preset.items()))
        raise AnalysisError(f"the tables mix runs of different presets: {detail}. Analyse one preset at a "
                            "time (pass preset=… / --preset, or separate the tables folders)")

    for name, df in present.items():
        bad = sorted(set(df["arm"].astype(str)) - set(ARMS))
        if bad:
            raise AnalysisError(f"the {name} table has unknown arm(s) {', '.join(map(repr, bad))} "
                                f"(expected {' or '.join(ARMS)})")
    ident = heads.groupby("run")[["arm", "seed"]].nunique()
    ambiguous = ident[(ident > 1).any(axis=1)].index.tolist()
    if ambiguous:
        raise AnalysisError(f"run(s) {', '.join(map(str, ambiguous))} carry several arm or seed labels in the heads table")
    runs = heads.drop_duplicates("run")[["run", "arm", "seed"]]
    dup = runs[runs.duplicated(["arm", "seed"], keep=False)]
    if len(dup):
        detail = "; ".join(f"{a} seed {s}: {', '.join(sorted(g['run'].astype(str)))}"
                           for (a, s), g in dup.groupby(["arm", "seed"]))
        raise AnalysisError(f"several runs for the same arm and seed ({detail}): keep one per seed")
    if not (heads["metric"] == "prev_token").any():
        raise AnalysisError("the heads table has no prev_token rows: nothing to measure")

    notes: list[str] = []
    values = pd.to_numeric(heads["value"], errors="coerce").astype(float)  # text or None become NaN
    finite = np.isfinite(values)
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} non-finite value(s) in the heads table were left out")
    if (~finite).any() or heads["value"].dtype != float:
        tables.heads = heads = heads.assign(value=values)[finite].reset_index(drop=True)
    seeds = {arm: tables.seeds(arm) for arm in ARMS}
    for arm in ARMS:
        if not seeds[arm]:
            other = [a for a in ARMS if a != arm][0]
            notes.append(f"the {arm} arm is missing (only {other} runs): the arms cannot be compared")
        elif len(seeds[arm]) < 2:
            notes.append(f"the {arm} arm has 1 seed ({seeds[arm][0]}): no significance test (needs ≥ 2 seeds per arm)")
    if all(seeds.values()) and seeds["baseline"] != seeds["smear"]:
        notes.append(f"seeds differ between arms (baseline {_join(seeds['baseline'])}; smear {_join(seeds['smear'])}): "
                     "the bootstrap resamples each arm on its own instead of pairing seeds")
    last = heads.groupby("run")["step"].max()
    if last.nunique() > 1:
        notes.append("runs end at different steps (" + ", ".join(f"{r}: {s}" for r, s in last.items())
                     + "): each run is compared at its own last step")
    if seeds["smear"] and tables.get("smear") is None and tables.get("record_smear") is None:
        notes.append("no smear table: the smear-gate figures are left out")
    return notes


def _join(xs: Iterable) -> str:
    return ", ".join(str(x) for x in xs)


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


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "p=n/a"
    return "p<0.0001" if 0 < p < 1e-4 else f"p={p:.2g}"


def compare_arms(per_seed: pd.DataFrame, value_col: str, *, alpha: float = ALPHA, n_boot: int = N_BOOT,
                 rng_seed: int = BOOT_SEED) -> dict:
    """smear − baseline for one per-seed column: means, difference, bootstrap 95% CI, Welch p, verdict.

    The CI resamples seeds: seed-paired differences when both arms have the same seeds, each arm on
    its own otherwise. Significant means p < alpha and a CI that excludes 0. When the test cannot be
    made the verdict says why, and the CI and p are NaN.
    """
    if value_col not in per_seed.columns:
        raise AnalysisError(f"no per-seed column {value_col!r} (have: {', '.join(per_seed.columns)})")
    df = per_seed[["arm", "seed", value_col]].dropna()
    vals = {arm: df[df["arm"] == arm].sort_values("seed") for arm in ARMS}
    b, s = (vals[a][value_col].to_numpy(float) for a in ARMS)
    threshold = float(per_seed["threshold"].iloc[0]) if "threshold" in per_seed and len(per_seed) else DEFAULT_THRESHOLD
    out = dict(claim=value_col, label=claim_label(value_col, threshold),
               n_baseline=len(b), n_smear=len(s),
               mean_baseline=float(b.mean()) if len(b) else math.nan,
               mean_smear=float(s.mean()) if len(s) else math.nan,
               diff=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan,
               paired=False, significant=None, note="")
    if len(b) and len(s):
        out["diff"] = out["mean_smear"] - out["mean_baseline"]
    missing = [a for a in ARMS if not len(vals[a])]
    if missing:
        why = "no values" if (per_seed["arm"] == missing[0]).any() else "no runs"
        out["verdict"] = f"absent: arm missing ({' and '.join(missing)}: {why})"
        return out
    if min(len(b), len(s)) < 2:
        out["verdict"] = f"absent: fewer than 2 seeds per arm (baseline {len(b)}, smear {len(s)})"
        return out

    rng = np.random.default_rng(rng_seed)
    seeds_b, seeds_s = (vals[a]["seed"].to_numpy() for a in ARMS)
    paired = len(seeds_b) == len(seeds_s) and (seeds_b == seeds_s).all()
    if paired:
        d = s - b
        boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    else:
        boots = (s[rng.integers(0, len(s), (n_boot, len(s)))].mean(axis=1)
                 - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(axis=1))
    lo, hi = np.percentile(boots, [2.5, 97.5])

    if b.var() == 0 and s.var() == 0:
        # Welch's t is undefined without spread; scipy gives inf/NaN. Decide from the means alone.
        p = 0.0 if out["diff"] != 0 else 1.0
        out["note"] = "no spread within either arm, so Welch's t is degenerate"
    else:
        from scipy import stats as st  # imported here: scipy.stats costs ~0.5 s and few callers need it

        with warnings.catch_warnings():  # near-identical seeds warn about precision; the p-value stands
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(st.ttest_ind(s, b, equal_var=False).pvalue)
    significant = bool(p < alpha and (lo > 0 or hi < 0))
    out.update(ci_low=float(lo), ci_high=float(hi), p_value=p, paired=bool(paired), significant=significant)
    p_text = _fmt_p(p) + ("; no spread within arms" if out["note"] else "")
    if significant:
        out["verdict"] = f"smear arm {'lower' if out['diff'] < 0 else 'higher'}, significant ({p_text})"
    elif p < alpha:
        out["verdict"] = f"no significant difference ({p_text}, but the bootstrap CI includes 0)"
    else:
        out["verdict"] = f"no significant difference ({p_text})"
    return out


def compare_all(per_seed: pd.DataFrame, claims: Iterable[str] | None = None, **kw) -> pd.DataFrame:
    """compare_arms for each claim that has at least one value (default: all CLAIMS present)."""
    claims = [c for c in (claims or CLAIMS) if c in per_seed.columns and per_seed[c].notna().any()]
    return pd.DataFrame([compare_arms(per_seed, c, **kw) for c in claims])


def compare_thresholds(heads: pd.DataFrame, thresholds: Iterable[float] = THRESHOLDS, **kw) -> pd.DataFrame:
    """The previous-token head count compared at each threshold."""
    sweep = threshold_sweep(heads, thresholds)
    rows = []
    for t, g in sweep.groupby("threshold"):
        rows.append(dict(threshold=float(t), **compare_arms(g, "n_prev_heads", **kw)))
    return pd.DataFrame(rows)


def freed_up_verdict(comparisons: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> str:
    """The conclusion on "the smear frees up heads" that the two primary comparisons support."""
    rows = {r["claim"]: r for r in comparisons.to_dict("records")} if len(comparisons) else {}
    parts = []
    for claim in PRIMARY_CLAIMS:
        if claim not in rows:
            return f"Cannot decide whether heads are freed up: no values for {claim_label(claim, threshold)}."
        r = rows[claim]
        parts.append(f"{claim_label(claim, threshold)}: {r['verdict']}")
    absent = [p for p in parts if ": absent:" in p]
    if absent:
        return "Cannot decide whether heads are freed up; " + "; ".join(absent) + "."
    lower = [rows[c]["significant"] and rows[c]["diff"] < 0 for c in PRIMARY_CLAIMS]
    if all(lower):
        return ("Heads are freed up: the smear arm has significantly fewer previous-token heads and less "
                "previous-token mass than the baseline (" + "; ".join(parts) + ").")
    if any(lower):
        return ("Only partly supported — heads are not shown to be freed up, which needs both: "
                + "; ".join(parts) + ".")
    return "The numbers do not show heads freed up: " + "; ".join(parts) + "."


@dataclass
class Summary:
    per_seed: pd.DataFrame
    comparisons: pd.DataFrame
    thresholds: pd.DataFrame
    verdict: str
    threshold: float


def summarize(tables: Tables, threshold: float = DEFAULT_THRESHOLD, **kw) -> Summary:
    """Everything the report and the notebooks state about the arms, from one call."""
    per_seed = per_seed_claims(tables.heads, threshold)
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
