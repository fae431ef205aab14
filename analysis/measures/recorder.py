"""Recording during training: a `train()` callback that probes the model every N steps.

On a fixed probe batch (the first rows of the run's validation split, the same at every step) it
records the streaming previous-token score of every head and the smear λ and gate statistics; on
fixed rows of repeated random tokens (BOS + R + R, |R| each of `probes.INDUCTION_LENGTHS`) every head's
induction score; and on the probe batch the in-context learning score. It appends them to tidy tables
in the run folder (the induction measures for runs trained on repeated spans, or when asked:
`make_recorder(induction=True)`):

- `record_heads.parquet`: run, preset, arm, seed, step, tokens, layer, head, metric, value; metrics
  `prev_token` and `induction_heldout` (the induction score averaged over INDUCTION_LENGTHS, lengths
  the cpu-induction data never uses: analysis.mechanism.composition.head_formation_steps reads when
  each head becomes an induction head from it)
- `record_smear.parquet`: run, preset, arm, seed, step, tokens, lambda, gate_mean, coef_mean,
  coef_std, coef_p05, coef_p50, coef_p95 (smear arm only)
- `record_context.parquet`: run, preset, arm, seed, step, tokens, metric, value; metrics `icl_score`
  (Olsson's: mean loss of targets late in their document minus early, `loss_late` − `loss_early`, on the
  probe batch; positions `icl_ranges`), and `copy_loss_first`, `copy_loss_second` (the loss on each copy
  of the repeated random tokens, averaged over INDUCTION_LENGTHS)

Each table is rewritten whole and atomically, so a kill mid-write leaves the previous version. On
the first call of a (resumed) run, rows from steps not yet trained again are dropped, so a resumed
run never holds a step twice. The probe draws no global random numbers (the repeated tokens come from
their own seeded generator), runs under no_grad in eval mode and restores train mode, so it does not
change training.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import torch

from analysis.measures import probes
from analysis.measures.metrics import smear_coefficients, summary_stats
from trainer import checkpoint as ckpt
from trainer.data import load_split, validation_batches
from trainer.errors import ConfigError
from trainer.io import atomic_path
from trainer.model import GPT

HEADS_FILE, SMEAR_FILE, CONTEXT_FILE = "record_heads.parquet", "record_smear.parquet", "record_context.parquet"
INDUCTION_METRIC = "induction_heldout"
REPEAT_ROWS = 8  # rows of BOS + R + R per repeat length
ICL_EARLY = (40, 60)  # Olsson's token 50, as a range of document positions (targets), for a steadier mean
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


def icl_ranges(seq_len: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(early, late) document positions of the in-context score for rows of seq_len targets: early 40–59
    (Olsson's token 50), late the row's last quarter (their token 500 in a longer context)."""
    late = (max(ICL_EARLY[1], 3 * seq_len // 4), seq_len + 1)
    return ICL_EARLY, late


def probe_rows(data: str | Path, bos_id: int, vocab_size: int, seq_len: int, probe_tokens: int = PROBE_TOKENS,
               max_doc_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the first rows (BOS-aligned, in document order, no shuffling) of the validation
    split: probe_tokens // seq_len of them, or as many as the split holds."""
    tokens = load_split(data, "val", vocab_size=vocab_size)
    T = min(seq_len, probe_tokens)
    rows = list(itertools.islice(validation_batches(tokens, bos_id, 1, T, max_doc_len=max_doc_len),
                                 max(1, probe_tokens // T)))
    return torch.cat([inputs for inputs, _ in rows]), torch.cat([targets for _, targets in rows])


def probe_batch(data: str | Path, bos_id: int, vocab_size: int, seq_len: int, probe_tokens: int = PROBE_TOKENS,
                max_doc_len: int | None = None) -> torch.Tensor:
    """The inputs of `probe_rows`."""
    return probe_rows(data, bos_id, vocab_size, seq_len, probe_tokens, max_doc_len)[0]


def context_rows(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, base: dict) -> tuple[list[dict], list[dict]]:
    """(heads rows, context rows) of the induction measures at one step: every head's induction score
    averaged over INDUCTION_LENGTHS, the in-context score on (inputs, targets), the loss on each copy."""
    rep = probes.repeat_probe(model, probes.INDUCTION_LENGTHS, batch=REPEAT_ROWS)
    heads = head_rows(rep.induction.mean(0), INDUCTION_METRIC, base)
    icl = probes.in_context_losses(model, inputs, targets, *icl_ranges(inputs.size(1)))
    values = dict(icl, copy_loss_first=float(rep.loss_first.mean()), copy_loss_second=float(rep.loss_second.mean()))
    return heads, [dict(base, metric=k, value=v) for k, v in values.items()]


class Recorder:
    """Callable as `callback(model=, step=, run=, run_dir=, inputs=)` after every optimizer step; probes
    at every `every`-th step and at the last one."""

    def __init__(self, every: int = DEFAULT_EVERY, probe_tokens: int = PROBE_TOKENS, induction: bool | None = None):
        if every < 1 or probe_tokens < 2:
            raise ConfigError(f"recorder: every={every} and probe_tokens={probe_tokens} must be ≥ 1 and ≥ 2")
        self.every, self.probe_tokens, self.induction = every, probe_tokens, induction
        self.run_dir: Path | None = None
        self.last_step = 0

    def _start(self, run, run_dir: Path, step: int, device: torch.device) -> None:
        """First call of this run (fresh or resumed at step−1): the probe batch, and the tables kept so far."""
        self.run_dir = Path(run_dir)
        inputs, targets = probe_rows(run.data, run.model.bos_id, run.model.vocab_size, run.train.seq_len,
                                     self.probe_tokens, run.train.max_doc_len)
        self.tokens, self.targets = inputs.to(device), targets.to(device)
        self.heads = self._kept(HEADS_FILE, step)
        self.smear = self._kept(SMEAR_FILE, step)
        self.context = self._kept(CONTEXT_FILE, step)
        # the induction measures: as asked, else for runs that train on repeated spans (trainer/repeats.py)
        self.measure_induction = self.induction if self.induction is not None else bool(run.train.copy_share)

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
        if self.measure_induction:
            heads, context = context_rows(model, self.tokens, self.targets, base)
            self.heads += heads
            self.context += context
            self._write(CONTEXT_FILE, self.context)
        self._write(HEADS_FILE, self.heads)
        if result.smear_gate is not None:
            self.smear.append(dict(base, **smear_row(float(model.smear_lambda.detach()), result.smear_gate)))
            self._write(SMEAR_FILE, self.smear)

    def _write(self, name: str, rows: list[dict]) -> None:
        with atomic_path(self.run_dir / name) as tmp:
            pd.DataFrame(rows).to_parquet(tmp, index=False)


def make_recorder(every: int | None = DEFAULT_EVERY, probe_tokens: int = PROBE_TOKENS,
                  induction: bool | None = None) -> Recorder | None:
    """The recorder for `train(..., callbacks=...)`, or None when `every` is 0 or None (recording off).
    `induction`: record the induction measures (record_context, induction_heldout); None: for runs whose
    data has repeated spans (`TrainConfig.copy_share` > 0) only, so other runs' tables stay as they were."""
    return Recorder(every, probe_tokens, induction) if every else None


__all__ = ["Recorder", "make_recorder", "DEFAULT_EVERY", "PROBE_TOKENS", "HEADS_FILE", "SMEAR_FILE", "CONTEXT_FILE",
           "INDUCTION_METRIC", "probe_batch", "probe_rows", "context_rows", "icl_ranges"]
