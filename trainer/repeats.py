"""Repeated random spans in the training rows: the `copy_share` data option (`TrainConfig.copy_share`).

Why: on the embedded corpus alone no induction head forms within a CPU preset's budget (cpu-small). In-context
repeats make the induction circuit pay off early: Olsson et al. 2022 see induction heads form after ~10⁹
tokens of natural text, Bietti et al. 2023 within hundreds of steps on data with in-context repeats. This
is the in-context task of the `cpu-induction` preset (trainer/config.py); it is synthetic data, and is
named as such wherever results trained on it are shown.

What, exactly. Every training row that `BatchLoader` gives (seq_len + 1 tokens of BOS-aligned text) is
rebuilt as its first token (the row's BOS), then text and *spans* interleaved:
- a span is R R: R is L tokens drawn uniformly from the vocabulary without the BOS id, written twice
  back to back. L is drawn per span, uniformly from copy_lengths[0] … copy_lengths[1] (inclusive) without
  the copy_holdout lengths, so the induction test can use lengths training never shows;
- spans are drawn until their tokens reach copy_share of the row's seq_len positions after the BOS, so
  the last one may overshoot by less than one span (a span that would not fit in the row ends the drawing);
- the text is the loader's row in order, cut to the positions the spans leave, and the spans sit at
  random places among it: every arrangement of the n spans among the text tokens is equally likely. So
  where a repeat starts and how far apart its copies are both vary, and only matching content predicts
  the second copy (fixed periods teach positional heads instead, as a pilot of ours found).
Every position is a training target, the first copies too (unpredictable: they cost ~log(vocab) nats).
The validation split stays text: the validation loss is the text's, and the recorder measures repeats on
its own (analysis/measures/recorder.py).

Randomness: one generator per (seed, batch index, row of the global batch), apart from the loader's: the
same rows for every arm of one seed, on any number of ranks, and after a resume (the loader's state holds
the batch index).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from trainer.errors import ConfigError

# Span lengths the cpu-induction preset holds out of training; the induction test uses them (and 40, longer
# than any training span): analysis/measures/probes.py INDUCTION_LENGTHS.
HELD_OUT_LENGTHS = (11, 19, 27)
_STREAM = 0x5E9EA7  # separates these generators from the loader's document order


def span_lengths(lengths: tuple[int, int], holdout: tuple[int, ...] = ()) -> list[int]:
    """The lengths a span may have: lengths[0] … lengths[1] without the held-out ones."""
    lo, hi = lengths
    return [L for L in range(lo, hi + 1) if L not in set(holdout)]


def check_copy_data(share: float, lengths, holdout, seq_len: int) -> None:
    """A clear ConfigError for settings `RepeatSpans` cannot serve."""
    if not (isinstance(share, (int, float)) and 0 <= share < 1):
        raise ConfigError(f"copy_share = {share!r} must be a number in [0, 1)")
    if not (isinstance(lengths, tuple) and len(lengths) == 2 and all(isinstance(x, int) for x in lengths)
            and 1 <= lengths[0] <= lengths[1]):
        raise ConfigError(f"copy_lengths = {lengths!r} must be two whole numbers 1 ≤ shortest ≤ longest")
    if not (isinstance(holdout, tuple) and all(isinstance(x, int) for x in holdout)):
        raise ConfigError(f"copy_holdout = {holdout!r} must be a list of whole numbers")
    if not share:
        return  # no copy data: its lengths are never used
    if lengths[1] > seq_len:  # before listing the lengths: an absurd longest one would exhaust memory
        raise ConfigError(f"copy_lengths = {lengths}: the longest span ({lengths[1]} tokens) is longer than a row "
                          f"(seq_len = {seq_len})")
    allowed = span_lengths(lengths, holdout)
    if not allowed:
        raise ConfigError(f"copy_lengths = {lengths} without copy_holdout = {holdout} leaves no span length")
    if 2 * allowed[0] > seq_len:
        raise ConfigError(f"copy_lengths: the shortest span R R ({2 * allowed[0]} tokens) does not fit a row of "
                          f"seq_len = {seq_len}")


def insert_spans(row: np.ndarray, rng: np.random.Generator, vocab_size: int, bos_id: int, share: float,
                 allowed: list[int]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`row` (its BOS, then text) rebuilt with spans R R among its text, as the module doc says; also each
    span's (start, L): its first copy is new[start:start+L], the second new[start+L:start+2L]."""
    T = row.size - 1  # positions after the BOS
    budget = math.ceil(share * T)
    sizes: list[int] = []
    while sum(sizes) * 2 < budget:
        L = int(rng.choice(allowed))
        if 2 * (sum(sizes) + L) > T:
            break
        sizes.append(L)
    n_text = T - 2 * sum(sizes)
    # which of the n_text + n slots after the BOS hold a span: each arrangement equally likely
    span_slots = set(rng.choice(n_text + len(sizes), size=len(sizes), replace=False).tolist())
    out, spans, text, k = [row[:1]], [], 1, 0
    pos = 1
    for slot in range(n_text + len(sizes)):
        if slot in span_slots:
            L = sizes[k]
            r = rng.integers(0, vocab_size - 1, size=L)
            r += r >= bos_id  # every id but the BOS
            out.append(np.concatenate([r, r]).astype(row.dtype))
            spans.append((pos, L))
            pos, k = pos + 2 * L, k + 1
        else:
            out.append(row[text:text + 1])
            text, pos = text + 1, pos + 1
    return np.concatenate(out), spans


class RepeatSpans:
    """A `BatchLoader` whose rows carry repeated random spans (the module doc); the loader's interface."""

    def __init__(self, loader, vocab_size: int, bos_id: int, share: float, lengths: tuple[int, int],
                 holdout: tuple[int, ...] = ()):
        check_copy_data(share, tuple(lengths), tuple(holdout), loader.seq_len)
        self.loader, self.vocab_size, self.bos_id, self.share = loader, vocab_size, bos_id, share
        self.allowed = span_lengths(tuple(lengths), tuple(holdout))

    def rng(self, batch: int, row: int) -> np.random.Generator:
        return np.random.default_rng([self.loader.seed, _STREAM, batch, row])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.loader.batches
        inputs, targets = self.loader.next_batch()
        rows = torch.cat([inputs, targets[:, -1:]], dim=1).numpy()
        first = self.loader.rows.start  # this rank's first row of the global batch
        new = np.stack([insert_spans(row, self.rng(batch, first + i), self.vocab_size, self.bos_id, self.share,
                                     self.allowed)[0] for i, row in enumerate(rows)])
        t = torch.from_numpy(new)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    @property
    def batches(self) -> int:
        return self.loader.batches

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def with_repeats(loader, cfg, vocab_size: int, bos_id: int):
    """`loader` itself when `cfg.copy_share` is 0, else it wrapped in `RepeatSpans` (cfg: a TrainConfig)."""
    if not cfg.copy_share:
        return loader
    return RepeatSpans(loader, vocab_size, bos_id, cfg.copy_share, cfg.copy_lengths, cfg.copy_holdout)


__all__ = ["HELD_OUT_LENGTHS", "RepeatSpans", "check_copy_data", "insert_spans", "span_lengths", "with_repeats"]
