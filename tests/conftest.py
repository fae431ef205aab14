"""Shared fixtures: a small dataset (BPE-512 over part of the embedded corpus) and trained tiny runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.corpus import build_dataset, embedded_corpus_path, split_gutenberg


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Train/val shards and a 512-token BPE from the first ~300 KB of the first book."""
    root = tmp_path_factory.mktemp("tiny_data")
    book = split_gutenberg(embedded_corpus_path().read_text(encoding="utf-8"))[0]
    text = root / "book.txt"
    text.write_text(book[:300_000], encoding="utf-8")
    out = root / "data"
    build_dataset(out, [str(text)], tokenizer="bpe", vocab_size=512, val_fraction=0.1)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread costs more in synchronisation than it saves (and much more when the
    machine is busy), so modules that ask for this run single-threaded and restore the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
