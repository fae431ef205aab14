"""Shared fixtures: a small dataset (BPE-512 over part of the embedded corpus) and trained tiny runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# The fuzz properties (tests/test_hostile_inputs.py) take their case count and randomness from a profile.
# "ci", the default (so CI=true and `make test` alike): derandomized, the same 1,000 cases a property on
# every run, so a red run always means a change broke something. "deep" (`make fuzz`): fresh randomness
# and FUZZ_EXAMPLES (default 20,000) cases a property, for a deeper search; pin what it finds with @example.
settings.register_profile("ci", derandomize=True, database=None, max_examples=1000, deadline=None, print_blob=True)
settings.register_profile("deep", derandomize=False, database=None, deadline=None, print_blob=True,
                          max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
