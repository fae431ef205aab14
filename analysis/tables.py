"""The analysis tables of one preset: reading them (the tables folder's parquet files, the run folders'
record_*.parquet, run.json and loss.csv) and checking they can be analysed together.

`analysis.stats` re-exports every name here: it stays the statistics' one way in for the notebooks.
Tables that cannot be read or analysed raise `AnalysisError` with a message to act on.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from analysis.schema import MECHANISM_COLUMNS, RECORD_COLUMNS, TABLE_COLUMNS
from trainer.config import TrainConfig, from_dict
from trainer.errors import AnalysisError, ConfigError, one_line
from trainer.io import atomic_write_bytes, atomic_write_text
from trainer.optim import window_blocks

BASELINE = "baseline"
RECORD_ARM = "smear"  # the record's arm: the primary claims are about it
ARMS = (BASELINE, RECORD_ARM)  # the two arms every study has; tables may hold more (e.g. "dose-0.8")

RECORD_TABLES = {"record_heads": "heads", "record_smear": "smear", "record_lambda": "lambda",
                 "record_context": "context"}  # per run folder, in training
ALL_COLUMNS = {**TABLE_COLUMNS, **MECHANISM_COLUMNS}  # every table `load_tables` reads from the tables folder


def arm_order(arms: Iterable[str]) -> list[str]:
    """Arms in display order: baseline, then smear, then the others alphabetically."""
    arms = set(map(str, arms))
    return [a for a in ARMS if a in arms] + sorted(arms - set(ARMS))


@dataclass
class Tables:
    """The analysis tables of one preset; optional ones are None when absent."""

    heads: pd.DataFrame
    smear: pd.DataFrame | None = None
    smear_vocab: pd.DataFrame | None = None
    smear_tokens: pd.DataFrame | None = None
    paths: pd.DataFrame | None = None  # path attribution (analysis/mechanism/paths.py), last checkpoints
    offsets: pd.DataFrame | None = None
    readout: pd.DataFrame | None = None  # the mechanism tables (MECHANISM_COLUMNS), last checkpoints
    knockouts: pd.DataFrame | None = None
    composition: pd.DataFrame | None = None
    canon: pd.DataFrame | None = None  # canon arms: what each offset mixes in (analysis/measures/canon.py)
    key_shares: pd.DataFrame | None = None  # the induction circuit (analysis/mechanism/induction_circuit.py)
    induction_knockouts: pd.DataFrame | None = None
    head_roles: pd.DataFrame | None = None
    record_heads: pd.DataFrame | None = None
    record_smear: pd.DataFrame | None = None
    record_lambda: pd.DataFrame | None = None  # λ and dL/dλ every step (analysis/measures/lambda_grad.py)
    record_context: pd.DataFrame | None = None  # in-context score and copy losses (analysis/measures/recorder.py)
    losses: pd.DataFrame | None = None  # run, val_loss: each run's final validation loss (its loss.csv)
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

    @property
    def arms(self) -> list[str]:
        """The arms in the heads table, baseline first, then smear, then the others."""
        return arm_order(self.heads["arm"]) if self.heads is not None else []

    def seeds(self, arm: str) -> list[int]:
        return sorted(int(s) for s in self.heads.loc[self.heads["arm"] == arm, "seed"].unique())


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _read_parquet(path: Path, kind: str) -> pd.DataFrame:
    try:
        with open(path, "rb") as f:  # one open file: see analysis.analyze.Tables._read
            table = pq.read_table(f)
        table.validate(full=True)  # e.g. invalid UTF-8 in a string column fails here, not deep in pandas later
        df = table.to_pandas()
    except Exception as e:  # pyarrow raises several types for a bad file; all mean the same to a user
        raise AnalysisError(f"{path}: not a readable parquet table ({type(e).__name__}: {one_line(e)})") from None
    columns = ALL_COLUMNS[kind] if kind in ALL_COLUMNS else RECORD_COLUMNS[kind]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AnalysisError(f"{path}: the {kind} table lacks column(s) {', '.join(missing)} "
                            f"(expected {', '.join(columns)})")
    return df


def read_manifests(runs: Iterable[str], runs_dir: Path) -> dict[str, dict]:
    """Each run's manifest (`run.json` in its run folder under `runs_dir`); runs without one are left out."""
    out = {}
    for run in sorted(set(map(str, runs))):
        try:
            manifest = json.loads((runs_dir / run / "run.json").read_text())
        except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or bad UTF-8
            continue  # provenance is optional: the report says which runs lack it
        if isinstance(manifest, dict):
            out[run] = manifest
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


def final_losses(runs: Iterable[str], runs_dir: Path) -> pd.DataFrame | None:
    """run, val_loss: the last validation loss in each run folder's loss.csv (runs without one left out)."""
    rows = []
    for run in sorted(set(map(str, runs))):
        path = runs_dir / run / "loss.csv"
        if path.exists():
            try:
                val = pd.read_csv(path, usecols=["step", "val_loss"]).dropna()
            except (ValueError, pd.errors.ParserError) as e:
                raise AnalysisError(f"{path}: not a training loss log ({one_line(e)})") from None
            if len(val):
                rows.append(dict(run=run, val_loss=float(val.sort_values("step")["val_loss"].iloc[-1])))
    return pd.DataFrame(rows) if rows else None


def load_tables(folder: str | Path, runs_dir: str | Path | None = None, preset: str | None = None,
                validate: bool = True) -> Tables:
    """Read the analysis tables (heads, smear*, paths, offsets, the mechanism tables of MECHANISM_COLUMNS) from `folder`
    and the runs' record_*.parquet.

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
    for kind in ALL_COLUMNS:
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
    tables.losses = final_losses(frames["heads"]["run"], runs_dir)  # keyed by run, not validated as tidy
    return tables


def write_table(df: pd.DataFrame, folder: Path, name: str) -> None:
    """A result table as `name`.parquet (for code) and `name`.csv (for eyes), each written atomically."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(folder / f"{name}.parquet", buf.getvalue())
    atomic_write_text(folder / f"{name}.csv", df.to_csv(index=False))


def validate_tables(tables: Tables) -> list[str]:
    """Check the tables can be analysed together; return notes on what limits the analysis.

    Raises AnalysisError when nothing sound can come out: presets mixed, rows without an arm, one run
    labelled with two arms or seeds, two runs for one (arm, seed), no previous-token rows. Returns
    notes (an arm missing, fewer than 2 seeds, unmatched seeds, runs ending at different steps,
    non-finite values) that the notebooks and the report show. Non-finite head values are dropped
    from `tables.heads`, the one change it makes.
    """
    heads = tables.heads
    if heads is None or not len(heads):
        raise AnalysisError("the heads table is empty: no runs to analyse")
    present = {k: v for k, v in vars(tables).items() if isinstance(v, pd.DataFrame) and len(v) and k != "losses"}

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
        labels = df["arm"]
        if labels.isna().any() or (labels.astype(str).str.strip() == "").any():
            raise AnalysisError(f"the {name} table has rows without an arm label (expected e.g. "
                                f"{' or '.join(ARMS)}; other arms are compared with {BASELINE!r})")
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
    arms = tables.arms
    seeds = {arm: tables.seeds(arm) for arm in arm_order(set(arms) | set(ARMS))}
    for arm in seeds:
        if not seeds[arm]:
            others = ", ".join(a for a in arms if a != arm)
            notes.append(f"the {arm} arm is missing (only {others} runs): "
                         + ("no arm can be compared" if arm == BASELINE else "the record's claims cannot be tested"))
        elif len(seeds[arm]) < 2:
            notes.append(f"the {arm} arm has 1 seed ({seeds[arm][0]}): no significance test (needs ≥ 2 seeds per arm)")
    base = set(seeds[BASELINE])
    for arm in (a for a in arms if a != BASELINE):
        if base and seeds[arm] and set(seeds[arm]) != base:
            shared = sorted(base & set(seeds[arm]))
            how = (f"the paired tests use the {len(shared)} shared seeds ({_join(shared)})" if len(shared) >= 2 else
                   "too few shared seeds to pair: compared unpaired (Welch, bootstrap)")
            notes.append(f"seeds differ between arms ({BASELINE} {_join(seeds[BASELINE])}; {arm} {_join(seeds[arm])}): {how}")
    last = heads.groupby("run")["step"].max()
    if last.nunique() > 1:
        notes.append("runs end at different steps (" + ", ".join(f"{r}: {s}" for r, s in last.items())
                     + "): each run is compared at its own last step")
    if seeds[RECORD_ARM] and tables.get("smear") is None and tables.get("record_smear") is None:
        notes.append("no smear table: the smear-gate figures are left out")
    return notes


def _join(xs: Iterable) -> str:
    return ", ".join(str(x) for x in xs)
