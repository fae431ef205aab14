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

`tokens` is the number of training tokens the checkpoint had seen. The validation data are the
first --tokens tokens of the run's validation split, in rows of --seq-len tokens (default: the
run's training row, cut to its longest document); the ablations, which run the model twice per
head, use the first --ablation-tokens of them. One folder's tables all come from the same such
settings (`analysis.json` records them). What a table already holds (keyed by run, step and, for
`heads`, metric) is skipped, so a second run is a no-op; tables are rewritten atomically after
each checkpoint, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis import probes
from analysis.loading import RunTarget, load_checkpoint_model, resolve_targets, validation_tokens
from analysis.recorder import head_rows, smear_row
from analysis.schema import TABLE_COLUMNS
from trainer import checkpoint as ckpt
from trainer.arms import arm_spec
from trainer.data import validation_batches
from trainer.errors import AnalysisError
from trainer.io import atomic_path, atomic_write_text
from trainer.model import GPT

DEFAULT_OUT = Path("checkpoints") / "analysis"
DEFAULT_TOKENS = 16_384
# cpu-small at one thread: 2·heads·layers + 1 = 21 forwards over 4,096 tokens take ~7 s a checkpoint,
# over all 16,384 tokens ~30 s; the loss differences are paired (same tokens), so 4,096 resolve them.
DEFAULT_ABLATION_TOKENS = 4096
SETTINGS_FILE = "analysis.json"
PATTERN_BUDGET = 2**26  # numbers in one layer's (B, H, T, T) pattern: sets the rows per forward
METRICS = (*probes.HEAD_METRICS, "smear")  # "smear" stands for the three smear tables
COLUMNS = TABLE_COLUMNS


class Tables:
    """The four tables in `out`: what they hold, what this call adds, and atomic rewrites."""

    def __init__(self, out: Path, csv: bool):
        self.out, self.csv = out, csv
        self.frames = {name: self._read(name) for name in COLUMNS}
        self.added = {name: 0 for name in COLUMNS}

    def _read(self, name: str) -> pd.DataFrame:
        path = self.out / f"{name}.parquet"
        if not path.exists():
            return pd.DataFrame(columns=COLUMNS[name])
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise AnalysisError(f"{path}: not a readable parquet table ({e}); delete it to recompute") from None
        missing = set(COLUMNS[name]) - set(frame.columns)
        if missing:
            raise AnalysisError(f"{path}: table lacks columns {sorted(missing)}; delete it to recompute")
        return frame

    def has(self, name: str, run: str, step: int, metric: str | None = None) -> bool:
        f = self.frames[name]
        hit = (f["run"] == run) & (f["step"] == step)
        if metric is not None:
            hit &= f["metric"] == metric
        return bool(hit.any())

    def add(self, name: str, rows: pd.DataFrame) -> None:
        if len(rows):
            rows = rows[COLUMNS[name]]
            frame = self.frames[name]
            self.frames[name] = rows if frame.empty else pd.concat([frame, rows], ignore_index=True)
            self.added[name] += len(rows)
            self.write(name)

    def write(self, name: str) -> None:
        with atomic_path(self.out / f"{name}.parquet") as tmp:
            self.frames[name].to_parquet(tmp, index=False)
        if self.csv:
            self.write_csv(name)

    def write_csv(self, name: str) -> None:
        with atomic_path(self.out / f"{name}.csv") as tmp:
            self.frames[name].to_csv(tmp, index=False)

    def finish(self) -> None:
        """Every table exists afterwards (empty when nothing belongs in it), and its CSV when asked."""
        for name in COLUMNS:
            if not (self.out / f"{name}.parquet").exists():
                self.write(name)
            elif self.csv and not (self.out / f"{name}.csv").exists():
                self.write_csv(name)


@dataclass(frozen=True)
class Settings:
    """What data the probes see: one output folder's tables must all share them to compare."""

    tokens: int = DEFAULT_TOKENS
    ablation_tokens: int = DEFAULT_ABLATION_TOKENS
    seq_len: int | None = None
    data: str | None = None

    def validate(self) -> "Settings":
        for flag, value in self.flags().items():
            if isinstance(value, int) and value < 2:
                raise AnalysisError(f"{flag} {value} must be at least 2")
        return self

    def flags(self) -> dict:
        return {"--tokens": self.tokens, "--ablation-tokens": self.ablation_tokens, "--seq-len": self.seq_len,
                "--data": self.data}

    def check(self, out: Path) -> None:
        """Record the settings in `out`, or check them against those recorded there."""
        path = out / SETTINGS_FILE
        if not path.exists():
            atomic_write_text(path, json.dumps(self.flags(), indent=1))
            return
        old = json.loads(path.read_text())
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
            data: str | None = None, device: str | None = None, csv: bool = False, progress: bool = True) -> dict[str, int]:
    """Evaluate every complete checkpoint of the runs in `paths` into the tables in `out`; returns
    the number of rows added to each table (all zero when everything was already done)."""
    metrics = probes.check_metrics(metrics, METRICS)
    settings = Settings(tokens, ablation_tokens, seq_len, data).validate()
    out = Path(out)
    targets = resolve_targets(list(paths), skip=out)
    if not targets:
        raise AnalysisError("no run folder or checkpoint to analyse")
    out.mkdir(parents=True, exist_ok=True)
    settings.check(out)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tables = Tables(out, csv)
    head_metrics = [m for m in metrics if m in probes.HEAD_METRICS]
    for target in targets:
        analyze_run(target, tables, head_metrics, "smear" in metrics, settings, device, progress)
    tables.finish()
    return tables.added


def analyze_run(target: RunTarget, tables: Tables, head_metrics: list[str], smear: bool, settings: Settings,
                device: str, progress: bool) -> None:
    batches = None
    bar = tqdm(target.checkpoints, desc=target.run_dir.name, unit="ckpt", disable=not progress, dynamic_ncols=True)
    for path in bar:
        meta = ckpt.read_meta(path)
        run, step = meta.get("run", target.run_dir.name), meta["step"]
        bar.set_postfix(step=step)
        todo = [m for m in head_metrics if not tables.has("heads", run, step, m)]
        spec = arm_spec(meta["arm"])  # any arm whose term is λ · gate · h[i−1] has the smear tables
        is_smear = smear and spec.coefficient
        per_token = is_smear and spec.vocab_gate and path == target.checkpoints[-1]
        smear_todo = (is_smear and not tables.has("smear", run, step)) or (per_token and not (
            tables.has("smear_vocab", run, step) and tables.has("smear_tokens", run, step)))
        if not todo and not smear_todo:
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
    bar.close()


__all__ = ["analyze", "Settings", "DEFAULT_OUT", "DEFAULT_TOKENS",
           "DEFAULT_ABLATION_TOKENS", "METRICS", "COLUMNS"]
