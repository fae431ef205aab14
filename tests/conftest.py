"""Shared fixtures: a small dataset (BPE-512 over part of the embedded corpus) and trained tiny runs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock
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


def built_once(tmp_path_factory, name: str, build: Callable[[Path], dict]) -> dict:
    """`build(folder)`'s JSON result, built once for the whole pytest run: pytest-xdist workers each hold their
    own session and module fixtures, so an expensive one would otherwise be built by every worker that runs
    one of its tests. The first worker builds it under a lock in the run's shared temporary folder; the
    others wait for it and read its result."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, above each popen-gwK/
    result = shared / f"{name}.json"
    with FileLock(shared / f"{name}.lock"):
        if not result.exists():
            folder = shared / name
            if folder.exists():
                pytest.fail(f"the shared fixture {name!r} failed in another worker: see its first error")
            folder.mkdir()
            result.write_text(json.dumps(build(folder)))
    return json.loads(result.read_text())


def _build_tiny_data(root: Path) -> dict:
    book = split_gutenberg(embedded_corpus_path().read_text(encoding="utf-8"))[0]
    text = root / "book.txt"
    text.write_text(book[:300_000], encoding="utf-8")
    out = root / "data"
    build_dataset(out, [str(text)], tokenizer="bpe", vocab_size=512, val_fraction=0.1)
    return {"data": str(out)}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Train/val shards and a 512-token BPE from the first ~300 KB of the first book (read-only: every
    worker shares it)."""
    return Path(built_once(tmp_path_factory, "tiny_data", _build_tiny_data)["data"])


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread costs more in synchronisation than it saves (and much more when the
    machine is busy), so modules that ask for this run single-threaded and restore the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
