"""BOS-aligned batches whose order is a pure function of the seed (like the speedrun's BOSFinder).

A row holds seq_len + 1 tokens (inputs = row[:-1], targets = row[1:]) and always starts at a
document's BOS: documents are laid into the row one after another, each cut to at most
min(max_doc_len, seq_len + 1) tokens (the record's train_max_seq_len), the last one cut at the
row's end; the next row starts at the next document.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from trainer.errors import DataError
from trainer.shards import read_shards


def _int(name: str, value, minimum: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise DataError(f"{name}={value!r} must be an int") from None
    if value < minimum:
        raise DataError(f"{name}={value} must be >= {minimum}")
    return value


def _rank_rows(batch_size: int, rank: int, world_size: int) -> range:
    """The rows of the global batch that belong to `rank`."""
    world_size = _int("world_size", world_size, 1)
    rank = _int("rank", rank, 0)
    if rank >= world_size:
        raise DataError(f"rank={rank} must be < world_size={world_size}")
    if batch_size % world_size:
        raise DataError(f"batch_size={batch_size} (global rows) must be divisible by world_size={world_size}")
    local = batch_size // world_size
    return range(rank * local, (rank + 1) * local)


class _Documents:
    """Start and length of every document of a BOS-separated token stream, found once."""

    def __init__(self, tokens: np.ndarray, bos_id: int, row_len: int, max_doc_len: int | None):
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise DataError(f"tokens must be a 1-D integer numpy array, got {type(tokens).__name__} "
                            f"{getattr(tokens, 'dtype', '')} {getattr(tokens, 'shape', '')}")
        if tokens.size == 0:
            raise DataError("tokens: empty token stream")
        if tokens[0] != bos_id:
            raise DataError(f"tokens must start with BOS {bos_id} (every document starts with BOS), got {int(tokens[0])}")
        self.tokens = tokens
        self.row_len = row_len
        cut = row_len if max_doc_len is None else min(_int("max_doc_len", max_doc_len, 1), row_len)
        self.starts = np.flatnonzero(tokens == bos_id)
        self.lengths = np.minimum(np.diff(self.starts, append=tokens.size), cut)  # what a row may take
        usable = int(self.lengths.sum())
        if usable < row_len:
            raise DataError(f"tokens: {len(self.starts)} documents give only {usable} usable tokens, "
                            f"fewer than one row of seq_len+1 = {row_len}")

    def cumulative(self, order: np.ndarray) -> np.ndarray:
        """End offset of each document of `order` when laid end to end."""
        return np.cumsum(self.lengths[order], dtype=np.int64)

    def row(self, docs: np.ndarray) -> np.ndarray:
        """One row of row_len tokens from these documents, the last one cut at the row end."""
        lens = self.lengths[docs]  # a copy
        lens[-1] = self.row_len - lens[:-1].sum()
        row_starts = np.cumsum(lens) - lens
        idx = np.arange(self.row_len) + np.repeat(self.starts[docs] - row_starts, lens)
        return self.tokens[idx]


def _row_end(cum: np.ndarray, cursor: int, row_len: int) -> int | None:
    """Index after the last document of the row that starts at document `cursor`, or None
    when the remaining documents cannot fill a row."""
    base = cum[cursor - 1] if cursor else 0
    last = int(np.searchsorted(cum, base + row_len))  # first document that reaches the row end
    return last + 1 if last < len(cum) else None


def _to_tensors(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.from_numpy(np.stack(rows).astype(np.int64))
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


class BatchLoader:
    """Endless shuffled batches of (inputs, targets), int64 tensors of shape (batch_size/world_size, seq_len).

    `max_doc_len` (default: no limit beyond the row) cuts every document to that many tokens.

    `batch_size` counts the rows of the global batch; rank r gets rows r*B/ws .. (r+1)*B/ws - 1,
    so the ranks together see exactly what a single process would. Documents are visited in the
    order `np.random.default_rng([seed, epoch]).permutation(n_docs)`; a row never spans two epochs.
    """

    def __init__(self, tokens: np.ndarray, bos_id: int, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1, max_doc_len: int | None = None):
        self.batch_size = _int("batch_size", batch_size, 1)
        self.seq_len = _int("seq_len", seq_len, 1)
        self.seed = _int("seed", seed, 0)
        self.rows = _rank_rows(self.batch_size, rank, world_size)
        self.docs = _Documents(tokens, bos_id, self.seq_len + 1, max_doc_len)
        self.n_docs = len(self.docs.starts)
        self.epoch = self.cursor = self.batches = 0  # cursor: next document in this epoch's order
        self._order_epoch, self._order, self._cum = -1, None, None

    def _epoch_order(self) -> tuple[np.ndarray, np.ndarray]:
        if self._order_epoch != self.epoch:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_docs)
            self._cum = self.docs.cumulative(self._order)
            self._order_epoch = self.epoch
        return self._order, self._cum

    def _next_row_docs(self) -> np.ndarray:
        while True:
            order, cum = self._epoch_order()
            end = _row_end(cum, self.cursor, self.docs.row_len)
            if end is not None:
                docs, self.cursor = order[self.cursor:end], end
                return docs
            self.epoch, self.cursor = self.epoch + 1, 0  # too little left: restart the row in a new epoch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for i in range(self.batch_size):
            docs = self._next_row_docs()  # every rank walks all rows to keep the cursor in step
            if i in self.rows:
                rows.append(self.docs.row(docs))
        self.batches += 1
        return _to_tensors(rows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "batches": self.batches,
                "seed": self.seed, "n_docs": self.n_docs}

    def load_state_dict(self, state: dict) -> None:
        """Resume where `state_dict()` was taken; the seed and the documents must be the same."""
        if not isinstance(state, dict) or not {"epoch", "cursor", "batches"} <= state.keys():
            raise DataError(f"loader state must be a dict with epoch, cursor and batches, got {state!r}")
        for key, mine in (("seed", self.seed), ("n_docs", self.n_docs)):
            if key in state and state[key] != mine:
                raise DataError(f"loader state has {key}={state[key]} but this loader has {key}={mine}")
        epoch = _int("loader state epoch", state["epoch"], 0)
        cursor = _int("loader state cursor", state["cursor"], 0)
        batches = _int("loader state batches", state["batches"], 0)
        if cursor > self.n_docs:
            raise DataError(f"loader state cursor={cursor} is past the {self.n_docs} documents")
        self.epoch, self.cursor, self.batches = epoch, cursor, batches


def validation_batches(tokens: np.ndarray, bos_id: int, batch_size: int, seq_len: int,
                       max_tokens: int | None = None, rank: int = 0, world_size: int = 1,
                       max_doc_len: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full batches of BOS-aligned rows over the documents in order, no shuffling.

    Stops when the next full batch would exceed `max_tokens` target tokens (all ranks together)
    or when the documents run out, so every batch has the same shape and every rank the same count.
    """
    batch_size = _int("batch_size", batch_size, 1)
    seq_len = _int("seq_len", seq_len, 1)
    rows = _rank_rows(batch_size, rank, world_size)
    docs = _Documents(tokens, bos_id, seq_len + 1, max_doc_len)
    n_batches = None
    if max_tokens is not None:
        n_batches = _int("max_tokens", max_tokens, 1) // (batch_size * seq_len)
        if n_batches == 0:
            raise DataError(f"max_tokens={max_tokens} is less than one batch of {batch_size}x{seq_len} tokens")
    order = np.arange(len(docs.starts))
    cum = docs.cumulative(order)
    spans, cursor = [], 0  # (first, end) documents of every row, found up front to fail early
    while n_batches is None or len(spans) < n_batches * batch_size:
        end = _row_end(cum, cursor, docs.row_len)
        if end is None:
            break
        spans.append((cursor, end))
        cursor = end
    n_full = len(spans) // batch_size
    if n_full == 0:
        raise DataError(f"validation data fills {len(spans)} rows of {seq_len + 1} tokens, "
                        f"fewer than one batch of {batch_size} rows")

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(n_full):
            batch = spans[b * batch_size:(b + 1) * batch_size]
            yield _to_tensors([docs.row(order[first:end]) for first, end in batch[rows.start:rows.stop]])

    return batches()


def load_split(data_dir_or_glob: str | os.PathLike, split: str, vocab_size: int | None = None) -> np.ndarray:
    """Tokens of one split: a dataset directory (its `{split}_*.bin` shards) or a glob of shards,
    in which a literal "{split}" is replaced by the split name (e.g. "fineweb10B/fineweb_{split}_*.bin")."""
    if split not in ("train", "val"):
        raise DataError(f"split={split!r} must be 'train' or 'val'")
    where = str(data_dir_or_glob).replace("{split}", split)
    if Path(where).is_dir():
        where = str(Path(where) / f"{split}_*.bin")
    return read_shards(where, vocab_size)
