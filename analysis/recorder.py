"""Recording during training: a `train()` callback that probes the model every N steps.

On a fixed probe batch (the first rows of the run's validation split, the same at every step) it
records the streaming previous-token score of every head and the smear λ and gate statistics, and
appends them to tidy tables in the run folder:

- `record_heads.parquet`: run, preset, arm, seed, step, tokens, layer, head, metric, value
- `record_smear.parquet`: run, preset, arm, seed, step, tokens, lambda, gate_mean, coef_mean,
  coef_std, coef_p05, coef_p50, coef_p95 (smear arm only)

Each table is rewritten whole and atomically, so a kill mid-write leaves the previous version. On
the first call of a (resumed) run, rows from steps not yet trained again are dropped, so a resumed
run never holds a step twice. The probe uses no random numbers, runs under no_grad in eval mode and
restores train mode, so it does not change training.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import torch

from analysis import probes
from analysis.metrics import smear_coefficients, summary_stats
from trainer import checkpoint as ckpt
from trainer.data import load_split, validation_batches
from trainer.errors import ConfigError
from trainer.io import atomic_path
from trainer.model import GPT

HEADS_FILE, SMEAR_FILE = "record_heads.parquet", "record_smear.parquet"
# A probe of 4,096 tokens costs about as much as training on 1,000 (at one thread, cpu-small), so
# every 25 steps of 4,096 tokens adds ~1% (`python benchmarks/probe_benchmark.py --recorder`);
# the demo's 1,024-token steps record every 50.
DEFAULT_EVERY = 25
PROBE_TOKENS = 4096


def run_columns(run, step: int) -> dict:
    tokens_per_step = run.train.batch_size * run.train.seq_len
    return dict(run=run.name, preset=run.preset, arm=run.arm, seed=run.seed, step=step, tokens=step * tokens_per_step)


def smear_row(smear_lambda: float, gate: torch.Tensor) -> dict:
    """λ and the gate / coefficient statistics over every position of the batch."""
    coef = summary_stats(smear_coefficients(smear_lambda, gate))
    return {"lambda": smear_lambda, "gate_mean": float(gate.double().mean()),
            **{f"coef_{k}": v for k, v in coef.items()}}


def head_rows(scores: torch.Tensor, metric: str, base: dict) -> list[dict]:
    """Tidy rows for an (n_layers, n_heads) result; layers without attention (NaN) have none."""
    return [dict(base, layer=l, head=h, metric=metric, value=float(scores[l, h]))
            for l in range(scores.size(0)) if not torch.isnan(scores[l]).all() for h in range(scores.size(1))]


def probe_batch(data: str | Path, bos_id: int, vocab_size: int, seq_len: int, probe_tokens: int = PROBE_TOKENS,
                max_doc_len: int | None = None) -> torch.Tensor:
    """The first rows (BOS-aligned, in document order, no shuffling) of the validation split:
    probe_tokens // seq_len of them, or as many as the split holds."""
    tokens = load_split(data, "val", vocab_size=vocab_size)
    T = min(seq_len, probe_tokens)
    rows = itertools.islice(validation_batches(tokens, bos_id, 1, T, max_doc_len=max_doc_len), max(1, probe_tokens // T))
    return torch.cat([inputs for inputs, _ in rows])


class Recorder:
    """Callable as `callback(model=, step=, run=, run_dir=, inputs=)` after every optimizer step; probes
    at every `every`-th step and at the last one."""

    def __init__(self, every: int = DEFAULT_EVERY, probe_tokens: int = PROBE_TOKENS):
        if every < 1 or probe_tokens < 2:
            raise ConfigError(f"recorder: every={every} and probe_tokens={probe_tokens} must be ≥ 1 and ≥ 2")
        self.every, self.probe_tokens = every, probe_tokens
        self.run_dir: Path | None = None
        self.last_step = 0

    def _start(self, run, run_dir: Path, step: int, device: torch.device) -> None:
        """First call of this run (fresh or resumed at step−1): the probe batch, and the tables kept so far."""
        self.run_dir = Path(run_dir)
        self.tokens = probe_batch(run.data, run.model.bos_id, run.model.vocab_size, run.train.seq_len,
                                  self.probe_tokens, run.train.max_doc_len).to(device)
        self.heads = self._kept(HEADS_FILE, step)
        self.smear = self._kept(SMEAR_FILE, step)

    def _kept(self, name: str, step: int) -> list[dict]:
        path = self.run_dir / name
        if not path.exists():
            return []
        table = ckpt.read_run_table(path)
        return table[table["step"] < step].to_dict("records")  # steps ≥ this one are being trained again

    def __call__(self, *, model: GPT, step: int, run, run_dir: str | Path, **_) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return  # rank 0 records for everyone: the model is the same on every rank
        if self.run_dir != Path(run_dir) or step <= self.last_step:  # a new run, or this one resumed
            self._start(run, run_dir, step, next(model.parameters()).device)
        self.last_step = step
        if step % self.every and step != run.train.steps:
            return
        result = probes.streaming_probe(model, self.tokens, attn_impl="chunked")
        base = run_columns(run, step)
        self.heads += head_rows(result.prev_token, "prev_token", base)
        self._write(HEADS_FILE, self.heads)
        if result.smear_gate is not None:
            self.smear.append(dict(base, **smear_row(float(model.smear_lambda.detach()), result.smear_gate)))
            self._write(SMEAR_FILE, self.smear)

    def _write(self, name: str, rows: list[dict]) -> None:
        with atomic_path(self.run_dir / name) as tmp:
            pd.DataFrame(rows).to_parquet(tmp, index=False)


def make_recorder(every: int | None = DEFAULT_EVERY, probe_tokens: int = PROBE_TOKENS) -> Recorder | None:
    """The recorder for `train(..., callbacks=...)`, or None when `every` is 0 or None (recording off)."""
    return Recorder(every, probe_tokens) if every else None


__all__ = ["Recorder", "make_recorder", "DEFAULT_EVERY", "PROBE_TOKENS", "HEADS_FILE", "SMEAR_FILE", "probe_batch"]
