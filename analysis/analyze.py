"""`smearlens analyze RUN_OR_CHECKPOINT ...`: probe every complete checkpoint of the named runs.

Writes tidy tables to --out (default `checkpoints/analysis/`, beside the run folders; a glob such
as `checkpoints/*` that names it skips it), as parquet and, with --csv, CSV:

- `heads`: run, preset, arm, seed, step, tokens, layer, head, metric, value, for the metrics
  prev_token, entropy, distance, bos (patterns on validation data), induction, duplicate_token
  (repeated random tokens), ablation_zero, ablation_mean (loss increase on validation data).
  Layers without attention have no rows.
- `smear`: run, preset, arm, seed, step, tokens, lambda, gate_mean, coef_mean, coef_std, coef_p05,
  coef_p50, coef_p95 over every position of the validation data (every arm whose term is
  λ · gate · h[i−1]: smear, its variants, doses, Smear-MTP; trainer/arms.py).
- `smear_vocab`: run, preset, arm, seed, step, token_id, text, gate, coefficient for every token id,
  sorted by coefficient, largest first (the last named checkpoint of each run of an arm whose gate
  reads the current token alone: smear, smear-xonly).
- `smear_tokens`: run, preset, arm, seed, step, sample, position, token_id, text, prev_token_id,
  prev_text, gate, coefficient for every position t ≥ 1 of the validation data (same checkpoint).
- `paths` (metric "paths"; the last named checkpoint of each run): run, preset, arm, seed, step,
  offset, path, layer, head, source, part, gate, metric, value: causal path attribution of token
  i−offset to the prediction at i (see analysis/mechanism/paths.py): path total, smear, rest, leftover (layer,
  head, source = −1, part = "") and head edges (layer, head, the key/value position i−source, part
  kv, key, value, value_resid, value_ve); gate all, or open / closed (smear coefficient above / below
  λ/2, smear models only); metrics kl, dlogp, share (Fisher-linear, adds up; NaN where nothing reaches
  i), fisher, n. --path-positions positions (default 256) × --path-draws replacement tokens (default
  4), drawn from the validation data with a fixed seed: the same interventions for every run.
- `offsets` (same checkpoints): run, preset, arm, seed, step, layer, head, key (i, i-1, i-2, bos),
  gate, metric (mass: attention of query i on that key; written: mass × output gate × ‖W_O v‖; n).

For the last named checkpoint of every run (both arms), the mechanism tables:

- `readout`: run, preset, arm, seed, step, layer, target, metric, value: linear-probe accuracy for
  token i−1 (prev) and the controls i (curr) and i−2 (prev2) at each layer's residual input and
  the final residual (layer = n_layers), the backward-bigram baseline and the accuracy above it
  (analysis.mechanism.readout; fit and scored on disjoint validation documents).
- `knockouts`: run, preset, arm, seed, step, k, heads, head_ablation, smear_ablation, metric, value:
  the 2×2 of losses (neither, top-k previous-token heads, smear, both knocked out) on the
  ablation tokens and the interaction (analysis.mechanism.knockout).
- `composition`: run, preset, arm, seed, step, layer, head, metric, value: for each induction head,
  its attention to the induction target with the key recomputed through one route (smear,
  previous-token heads, all) seeing a resampled previous token (analysis.mechanism.composition); a row
  n_induction_heads (layer = head = −1) always, 0 when the model has none.
- `key_shares`, `induction_knockouts`, `head_roles` (the induction circuit, analysis.mechanism.induction_circuit,
  on BOS + R + R rows at the held-out lengths 11/19/27/40 and the ablation tokens): per induction head and
  route, the drop of its attention logit when that route alone sees a resampled previous token and its share
  (shares add up to 1 with `other`); per knock-out condition (previous-token heads mean-ablated, the arm's
  mixing removed, both) the best induction head's score and the copy and text losses; per head, attention by
  offset, induction and duplicate-token scores and what ablating it costs.

`tokens` is the number of training tokens the checkpoint had seen. The validation data are the
first --tokens tokens of the run's validation split, in rows of --seq-len tokens (default: the
run's training row, cut to its longest document); the ablations, which run the model twice per
head, use the first --ablation-tokens of them. One folder's tables all come from the same such
settings (`analysis.json` records them). What a table already holds (keyed by run, step and, for
`heads`, metric) is skipped, so a second run is a no-op; tables are rewritten atomically after
each checkpoint, so an interrupted run (or one stopped by a full disk) resumes where it stopped.
Two `analyze` runs may write to one folder at once: each table write takes the folder's lock
(`.analyze.lock`) and merges with what is on disk, so every key is stored once and none is lost.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from analysis.measures import canon, probes
from analysis.mechanism import composition, induction_circuit, knockout, readout
from analysis.mechanism import paths as path_attribution
from analysis.loading import RunTarget, load_checkpoint_model, resolve_targets, validation_tokens
from analysis.measures.recorder import head_rows, smear_row
from analysis.schema import MECHANISM_COLUMNS, TABLE_COLUMNS
from trainer import checkpoint as ckpt
from trainer.arms import arm_spec
from trainer.data import validation_batches
from trainer.errors import AnalysisError, DiskFullError
from trainer.io import atomic_path, atomic_write_text
from trainer.model import GPT

DEFAULT_OUT = Path("checkpoints") / "analysis"
DEFAULT_TOKENS = 16_384
# cpu-small at one thread: 2·heads·layers + 1 = 21 forwards over 4,096 tokens take ~7 s a checkpoint,
# over all 16,384 tokens ~30 s; the loss differences are paired (same tokens), so 4,096 resolve them.
DEFAULT_ABLATION_TOKENS = 4096
SETTINGS_FILE = "analysis.json"
PATTERN_BUDGET = 2**26  # numbers in one layer's (B, H, T, T) pattern: sets the rows per forward
MECHANISM = tuple(MECHANISM_COLUMNS)  # readout, knockouts, composition, canon, the circuit's: one table each, final checkpoints
# "smear": the three smear tables; "paths": paths and offsets; the mechanism tables one each
METRICS = (*probes.HEAD_METRICS, "smear", "paths", *MECHANISM)
COLUMNS = {**TABLE_COLUMNS, **MECHANISM_COLUMNS}
# What `analyze` computes (and skips) as one piece: a table holds each such group once.
GROUP_KEYS = {"heads": ["run", "step", "metric"], "smear": ["run", "step"], "smear_vocab": ["run", "step"],
              "smear_tokens": ["run", "step"], "paths": ["run", "step"],
              "offsets": ["run", "step"], **{name: ["run", "step"] for name in MECHANISM}}
# Tables are written in one row order, whatever order their runs' analyses finished in: by their group
# keys, except smear_tokens, where every run's row for one token occurrence sits with the others: the
# token columns then repeat and compress (2.5 MB -> 0.8 MB for 16 runs: a study carried in git stays small).
ROW_ORDER = {"smear_tokens": ["step", "sample", "position", "run"]}
LOCK_FILE = ".analyze.lock"  # taken by each table write, so concurrent `analyze` runs on one folder merge
LOCK_TIMEOUT = 600  # seconds; a write holds it for well under one


class Tables:
    """The tables in `out`: what they hold, what this call adds, and atomic rewrites.

    Several `analyze` processes may share one folder: each write takes the folder's lock, re-reads the
    table from disk and adds only the (run, step[, metric]) groups it does not hold yet, so every key
    is stored once and no process's rows are lost; `has` sees what the others have written."""

    def __init__(self, out: Path, csv: bool):
        self.out, self.csv = out, csv
        self.lock = folder_lock(out)
        self.frames: dict[str, pd.DataFrame] = {}
        self.stamps: dict[str, tuple | None] = {}
        for name in COLUMNS:
            self.refresh(name)
        self.added = {name: 0 for name in COLUMNS}

    def path(self, name: str, suffix: str = "parquet") -> Path:
        return self.out / f"{name}.{suffix}"

    def _stamp(self, name: str) -> tuple | None:
        """Changes whenever the table is rewritten (an atomic rewrite is a new inode)."""
        try:
            st = self.path(name).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self, name: str) -> None:
        """Read the table again if another process has rewritten it since this one last did."""
        if name not in self.frames or self._stamp(name) != self.stamps[name]:
            self.frames[name], self.stamps[name] = self._read(name)

    def _read(self, name: str) -> tuple[pd.DataFrame, tuple | None]:
        """The table on disk and the stamp of the very file read (None: no table yet)."""
        path = self.path(name)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return pd.DataFrame(columns=COLUMNS[name]), None
        # One open file: read by its path, pyarrow opens it more than once, and another process's rewrite
        # (a rename) in between mixes two files' bytes into one read ("Page was smaller than expected").
        with f:
            st = os.fstat(f.fileno())
            try:
                frame = pd.read_parquet(f)
            except Exception as e:  # pyarrow raises several types for a damaged file
                raise AnalysisError(f"{path}: not a readable parquet table ({e}); delete it to recompute") from None
        missing = set(COLUMNS[name]) - set(frame.columns)
        if missing:
            raise AnalysisError(f"{path}: table lacks columns {sorted(missing)}; delete it to recompute")
        return frame, (st.st_ino, st.st_mtime_ns, st.st_size)

    def has(self, name: str, run: str, step: int, metric: str | None = None) -> bool:
        self.refresh(name)
        f = self.frames[name]
        hit = (f["run"] == run) & (f["step"] == step)
        if metric is not None:
            hit &= f["metric"] == metric
        return bool(hit.any())

    def add(self, name: str, rows: pd.DataFrame) -> None:
        """Merge `rows` into the table on disk, leaving out the groups it already holds."""
        if not len(rows):
            return
        rows = rows[COLUMNS[name]]
        with self.lock:
            self.refresh(name)
            frame = self.frames[name]
            keys = GROUP_KEYS[name]
            if not frame.empty:
                held = pd.MultiIndex.from_frame(frame[keys].drop_duplicates())
                rows = rows[~pd.MultiIndex.from_frame(rows[keys]).isin(held)]
            if len(rows):
                self.write(name, rows if frame.empty else pd.concat([frame, rows], ignore_index=True))
                self.added[name] += len(rows)

    @staticmethod
    def ordered(name: str, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` with its rows in the table's fixed order."""
        return frame.sort_values(ROW_ORDER.get(name, GROUP_KEYS[name]), kind="stable", ignore_index=True)

    def write(self, name: str, frame: pd.DataFrame) -> None:
        """Replace the table (and its CSV) by `frame`, its rows in a fixed order; the caller holds the lock."""
        frame = self.ordered(name, frame)
        with atomic_path(self.path(name)) as tmp:
            frame.to_parquet(tmp, index=False, compression="zstd")
        self.frames[name], self.stamps[name] = frame, self._stamp(name)
        if self.csv:
            self.write_csv(name)

    def write_csv(self, name: str) -> None:
        with atomic_path(self.path(name, "csv")) as tmp:
            self.frames[name].to_csv(tmp, index=False)

    def rewrite(self) -> None:
        """Write again every table not in the fixed row order, e.g. one an older version wrote. Tables already
        in order stay byte for byte (a carried study copied again is no churn in git, whatever pandas wrote it)."""
        with self.lock:
            for name in COLUMNS:
                self.refresh(name)
                frame = self.frames[name]
                if self.stamps[name] is not None and not self.ordered(name, frame).equals(frame):
                    self.write(name, frame)

    def finish(self) -> None:
        """Every table exists afterwards (empty when nothing belongs in it), and its CSV when asked,
        no older than the table (a CSV write that failed, e.g. on a full disk, is redone)."""
        with self.lock:
            for name in COLUMNS:
                self.refresh(name)
                csv = self.path(name, "csv")
                if self.stamps[name] is None:
                    self.write(name, self.frames[name])
                elif self.csv and (not csv.exists() or csv.stat().st_mtime_ns < self.stamps[name][1]):
                    self.write_csv(name)


def merge_tables(part: str | Path, out: str | Path, csv: bool = False) -> dict[str, int]:
    """Add the tables an `analyze` wrote into `part` (a folder of their own: one run's, analysed on a cluster
    node without any lock across machines) to those in `out`, as if that `analyze` had written into `out`:
    its settings checked against out's, the groups out holds left out. Returns the rows added to each table."""
    part, out = Path(part), Path(out)
    try:
        flags = json.loads((part / SETTINGS_FILE).read_text())
    except (OSError, ValueError) as e:
        raise AnalysisError(f"{part / SETTINGS_FILE}: not an analysis folder's settings ({e})") from None
    out.mkdir(parents=True, exist_ok=True)
    Settings(**{flag[2:].replace("-", "_"): value for flag, value in flags.items()}).check(out)
    source, tables = Tables(part, csv=False), Tables(out, csv)
    for name in COLUMNS:
        if source.stamps[name] is not None:
            tables.add(name, source.frames[name])
    tables.finish()
    return tables.added


def folder_lock(out: Path) -> FileLock:
    return FileLock(out / LOCK_FILE, timeout=LOCK_TIMEOUT)


@dataclass(frozen=True)
class Settings:
    """What data the probes see: one output folder's tables must all share them to compare."""

    tokens: int = DEFAULT_TOKENS
    ablation_tokens: int = DEFAULT_ABLATION_TOKENS
    seq_len: int | None = None
    data: str | None = None
    path_positions: int = path_attribution.DEFAULT_POSITIONS
    path_draws: int = path_attribution.DEFAULT_DRAWS

    def validate(self) -> "Settings":
        for flag, value in self.flags().items():
            least = 1 if flag.startswith("--path") else 2
            if isinstance(value, int) and value < least:
                raise AnalysisError(f"{flag} {value} must be at least {least}")
        return self

    def flags(self) -> dict:
        return {"--tokens": self.tokens, "--ablation-tokens": self.ablation_tokens, "--seq-len": self.seq_len,
                "--data": self.data, "--path-positions": self.path_positions, "--path-draws": self.path_draws}

    def check(self, out: Path) -> None:
        """Record the settings in `out`, or check them against those recorded there (under the folder's
        lock: of two runs starting together with different settings, the second is refused)."""
        path = out / SETTINGS_FILE
        with folder_lock(out):
            if not path.exists():
                atomic_write_text(path, json.dumps(self.flags(), indent=1))
                return
            old = ckpt.read_json(path, "analysis settings", AnalysisError)
            if set(self.flags()) - set(old):  # a folder from before a setting existed holds no rows that used it
                old |= {f: v for f, v in self.flags().items() if f not in old}
                atomic_write_text(path, json.dumps(old, indent=1))
        for flag, value in self.flags().items():
            if old.get(flag) != value:
                raise AnalysisError(f"{out}: its tables were made with {flag} {old.get(flag)}, not {value}; "
                                    f"use the same setting or another --out")


def data_batches(meta: dict, tokens: int, seq_len: int | None, data: str | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `tokens` validation tokens of the checkpoint's run (or as many as the split holds) as
    (inputs, targets) rows of T tokens, batched so one layer's pattern stays near PATTERN_BUDGET."""
    train, model = meta["train_config"], meta["model_config"]
    T = min(seq_len or min(train["seq_len"], train.get("max_doc_len") or train["seq_len"]), tokens)
    rows = list(itertools.islice(validation_batches(validation_tokens(meta, data), model["bos_id"], 1, T,
                                                    max_doc_len=train.get("max_doc_len")), max(1, tokens // T)))
    per_batch = max(1, PATTERN_BUDGET // (model["n_heads"] * T * T))
    return [(torch.cat([x for x, _ in rows[i:i + per_batch]]), torch.cat([y for _, y in rows[i:i + per_batch]]))
            for i in range(0, len(rows), per_batch)]


def first_tokens(batches: list[tuple[torch.Tensor, torch.Tensor]], tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The leading rows of `batches` that hold about `tokens` tokens (at least one row)."""
    rows = max(1, tokens // batches[0][0].size(1))
    x, y = torch.cat([x for x, _ in batches])[:rows], torch.cat([y for _, y in batches])[:rows]
    return [(x, y)]


def base_columns(meta: dict) -> dict:
    return dict(run=meta["run"], preset=meta["preset"], arm=meta["arm"], seed=meta["seed"], step=meta["step"],
                tokens=meta["tokens"])


def vocab_text(model: GPT) -> np.ndarray:
    tok = model.tokenizer
    if tok is None:
        raise AnalysisError("the run folder has no tokenizer.json: cannot decode tokens for the smear tables")
    return np.array([tok.decode_token(i) for i in range(model.config.vocab_size)], dtype=object)


def head_table(model: GPT, batches, metrics: Sequence[str], base: dict, ablation_tokens: int) -> pd.DataFrame:
    """The `heads` rows of one checkpoint for `metrics`."""
    results: dict[str, torch.Tensor] = {}
    pattern = [m for m in metrics if m in probes.PATTERN_METRICS]
    if pattern:
        results |= probes.data_pattern_metrics(model, (x for x, _ in batches), pattern)
    repeat = [m for m in metrics if m in probes.REPEAT_METRICS]
    if repeat:
        results |= probes.repeat_metrics(model, repeat)
    ablations = {probes.ABLATIONS[m]: m for m in metrics if m in probes.ABLATIONS}
    if ablations:
        losses = probes.ablation_losses(model, first_tokens(batches, ablation_tokens), list(ablations))
        results |= {ablations[k]: v for k, v in losses.items()}
    return pd.DataFrame([row for m in metrics for row in head_rows(results[m], m, base)], columns=COLUMNS["heads"])


def smear_tables(model: GPT, batches, base: dict, per_token: bool) -> dict[str, pd.DataFrame]:
    """`smear` (statistics over the data); with per_token also `smear_vocab` and `smear_tokens`."""
    lam = probes.smear_lambda(model)
    inputs = torch.cat([x for x, _ in batches])
    gates = torch.cat([probes.smear_gates(model, x) for x, _ in batches])  # (N, T−1)
    out = {"smear": pd.DataFrame([dict(base, **smear_row(lam, gates))])}
    if per_token:
        text = vocab_text(model)
        gate, coef = probes.smear_vocab(model)
        vocab = pd.DataFrame(dict(base, token_id=np.arange(len(gate)), text=text, gate=gate.double().numpy(),
                                  coefficient=coef.double().numpy()))
        out["smear_vocab"] = vocab.sort_values("coefficient", ascending=False, kind="stable").reset_index(drop=True)
        N, T = inputs.shape
        tok, prev = inputs[:, 1:].flatten().numpy(), inputs[:, :-1].flatten().numpy()
        g = gates.flatten().double().numpy()
        out["smear_tokens"] = pd.DataFrame(dict(
            base, sample=np.repeat(np.arange(N), T - 1), position=np.tile(np.arange(1, T), N), token_id=tok,
            text=text[tok], prev_token_id=prev, prev_text=text[prev], gate=g, coefficient=lam * g))
    return out


def analyze(paths: Sequence[str | Path], out: str | Path = DEFAULT_OUT, metrics: Sequence[str] = METRICS,
            tokens: int = DEFAULT_TOKENS, ablation_tokens: int = DEFAULT_ABLATION_TOKENS, seq_len: int | None = None,
            data: str | None = None, device: str | None = None, csv: bool = False, progress: bool = True,
            path_positions: int = path_attribution.DEFAULT_POSITIONS,
            path_draws: int = path_attribution.DEFAULT_DRAWS, final_only: Sequence[str] = ()) -> dict[str, int]:
    """Evaluate every complete checkpoint of the runs in `paths` into the tables in `out`; returns
    the number of rows added to each table (all zero when everything was already done).

    `final_only`: head metrics (of `metrics`) measured at each run's final checkpoint only (a study
    ablates only there: 21 forwards a checkpoint that feed only final-step figures). The mechanism
    measures are always final-only."""
    metrics = probes.check_metrics(metrics, METRICS)
    final_only = set(probes.check_metrics(final_only, probes.HEAD_METRICS, "head"))
    settings = Settings(tokens, ablation_tokens, seq_len, data, path_positions, path_draws).validate()
    out = Path(out)
    targets = resolve_targets(list(paths), skip=out)
    if not targets:
        raise AnalysisError("no run folder or checkpoint to analyse")
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    head_metrics = [m for m in metrics if m in probes.HEAD_METRICS]
    try:
        settings.check(out)
        tables = Tables(out, csv)
        samples: dict = {}  # path-attribution samples per data folder: the same for every run on it
        for target in targets:
            analyze_run(target, tables, head_metrics, "smear" in metrics, "paths" in metrics, settings, device,
                        progress, samples, [m for m in metrics if m in MECHANISM], final_only)
        tables.finish()
    except DiskFullError as e:
        raise DiskFullError(f"{e}; the tables keep every checkpoint analysed before; free space and run "
                            f"analyze again to continue") from None
    except Timeout:
        raise AnalysisError(f"{out / LOCK_FILE}: another process has held this lock for over {LOCK_TIMEOUT} s; "
                            f"is an analyze on {out} stuck?") from None
    return tables.added


def path_tables(model: GPT, samples: path_attribution.PathSamples, base: dict) -> dict[str, pd.DataFrame]:
    """`paths` and `offsets` rows of one checkpoint."""
    measured = path_attribution.measure(model, samples)
    return {"paths": path_attribution.path_frame(measured, base), "offsets": path_attribution.offset_frame(measured, base)}


def analyze_run(target: RunTarget, tables: Tables, head_metrics: list[str], smear: bool, paths: bool,
                settings: Settings, device: str, progress: bool, samples: dict,
                mechanism: Sequence[str] = (), final_only: set[str] = frozenset()) -> None:
    batches = None
    bar = tqdm(target.checkpoints, desc=target.run_dir.name, unit="ckpt", disable=not progress, dynamic_ncols=True)
    for path in bar:
        meta = ckpt.read_meta(path)
        run, step = meta.get("run", target.run_dir.name), meta["step"]
        bar.set_postfix(step=step)
        final = path == target.checkpoints[-1]
        todo = [m for m in head_metrics if (final or m not in final_only) and not tables.has("heads", run, step, m)]
        spec = arm_spec(meta["arm"])  # any arm whose term is λ · gate · h[i−1] has the smear tables
        is_smear = smear and spec.coefficient
        per_token = is_smear and spec.vocab_gate and final
        smear_todo = (is_smear and not tables.has("smear", run, step)) or (per_token and not (
            tables.has("smear_vocab", run, step) and tables.has("smear_tokens", run, step)))
        mech_todo = [name for name in mechanism if final and (name != "canon" or spec.mix == "canon")
                     and not tables.has(name, run, step)]
        # the slot method follows positions mixed in attention and hook_smear_out only: a key arm mixes inside
        # the keys, which it cannot patch (analysis/mechanism/paths.py), so those runs have no path tables
        paths_todo = (paths and final and spec.key_mix is None
                      and not (tables.has("paths", run, step) and tables.has("offsets", run, step)))
        if not todo and not smear_todo and not mech_todo and not paths_todo:
            continue
        model, meta = load_checkpoint_model(path, device)
        meta.setdefault("run", run)
        base = base_columns(meta)
        if batches is None:
            batches = data_batches(meta, settings.tokens, settings.seq_len, settings.data)
        if todo:
            tables.add("heads", head_table(model, batches, todo, base, settings.ablation_tokens))
        if smear_todo:
            for name, frame in smear_tables(model, batches, base, per_token).items():
                if not tables.has(name, run, step):
                    tables.add(name, frame)
        for name, frame in mechanism_tables(model, batches, mech_todo, tables, base, settings).items():
            tables.add(name, frame)
        if paths_todo:
            where = str(settings.data or meta.get("data"))
            if where not in samples:
                samples[where] = path_attribution.sample_positions(
                    validation_tokens(meta, settings.data), meta["model_config"]["bos_id"], settings.path_positions,
                    settings.path_draws)
            base = {k: v for k, v in base.items() if k != "tokens"}
            for name, frame in path_tables(model, samples[where], base).items():
                if not tables.has(name, run, step):
                    tables.add(name, frame)
    bar.close()


def _head_metric(model: GPT, tables: Tables, base: dict, metric: str, compute) -> torch.Tensor:
    """(n_layers, n_heads) `metric` of this checkpoint from the heads table when it holds it (NaN for
    layers without attention), else computed."""
    f = tables.frames["heads"]
    rows = f[(f["run"] == base["run"]) & (f["step"] == base["step"]) & (f["metric"] == metric)]
    if rows.empty:
        return compute()
    out = probes.absent(model)
    for r in rows.itertuples():
        out[int(r.layer), int(r.head)] = float(r.value)
    return out


def mechanism_tables(model: GPT, batches, names: Sequence[str], tables: Tables, base: dict,
                     settings: Settings) -> dict[str, pd.DataFrame]:
    """The mechanism tables in `names` for one (final) checkpoint, each with the run columns first.
    Previous-token and induction scores come from the heads table when it has them."""
    if not names:
        return {}
    ids = {k: base[k] for k in COLUMNS["readout"][:5]}
    prev = _head_metric(model, tables, base, "prev_token", lambda: probes.data_pattern_metrics(
        model, (x for x, _ in batches), ["prev_token"])["prev_token"])
    out = {}
    if "readout" in names:
        out["readout"] = readout.readout(model, torch.cat([x for x, _ in batches]))
    if "knockouts" in names:
        out["knockouts"] = knockout.knockout_table(model, first_tokens(batches, settings.ablation_tokens), prev)
    if "composition" in names:
        induction = _head_metric(model, tables, base, "induction",
                                 lambda: probes.repeat_metrics(model, ["induction"])["induction"])
        out["composition"] = composition.composition_table(model, prev, induction)
    if "canon" in names:
        out["canon"] = canon.canon_table(model, first_tokens(batches, settings.ablation_tokens)[0][0])
    circuit = [name for name in names if name in induction_circuit.TABLES]
    if circuit:  # the ablations' text: the same tokens as the knock-outs'
        out |= induction_circuit.circuit_tables(model, first_tokens(batches, settings.ablation_tokens), prev, circuit)
    return {name: frame.assign(**ids)[COLUMNS[name]] for name, frame in out.items()}


__all__ = ["analyze", "merge_tables", "Settings", "mechanism_tables", "MECHANISM", "DEFAULT_OUT", "DEFAULT_TOKENS",
           "DEFAULT_ABLATION_TOKENS", "METRICS", "COLUMNS"]
