import json
import time

import numpy as np
import pytest
import torch

from trainer.data import BatchLoader, load_split, validation_batches
from trainer.errors import DataError
from trainer.shards import write_shard

BOS = 0


def make_tokens(n_docs=60, max_len=40, seed=0, long_every=0):
    """BOS-separated documents of random lengths; token values encode (doc, position) uniquely enough."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        n = int(rng.integers(1, max_len)) + (200 if long_every and d % long_every == 0 else 0)
        docs.append(np.concatenate([[BOS], rng.integers(1, 1000, size=n)]))
    return np.concatenate(docs).astype(np.uint16)


def reference_rows(tokens, row_len, seed, n_rows, max_doc_len=10**9):
    """The row-filling rule, written plainly."""
    starts = np.flatnonzero(tokens == BOS).tolist() + [len(tokens)]
    docs = [tokens[a:b].tolist() for a, b in zip(starts, starts[1:])]
    rows, epoch = [], 0
    while len(rows) < n_rows:
        row = []
        for d in np.random.default_rng([seed, epoch]).permutation(len(docs)):
            row += docs[d][:min(max_doc_len, row_len - len(row))]  # cut to the row, and at the row end
            if len(row) == row_len:
                rows.append(row)
                row = []
        epoch += 1  # an unfinished row is dropped: rows never span epochs
    return rows[:n_rows]


def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def same(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("seq_len, batch_size, long_every, max_doc_len",
                         [(16, 4, 0, None), (63, 3, 5, None), (1, 2, 0, None), (63, 3, 5, 20), (16, 2, 0, 1)])
def test_matches_reference_across_epochs(seq_len, batch_size, long_every, max_doc_len):
    tokens = make_tokens(long_every=long_every)
    loader = BatchLoader(tokens, BOS, batch_size, seq_len, seed=7, max_doc_len=max_doc_len)
    n = 40
    got = batches(loader, n)
    ref = torch.tensor(reference_rows(tokens, seq_len + 1, 7, n * batch_size, max_doc_len or 10**9))
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert x.dtype == y.dtype == torch.int64 and x.shape == (n * batch_size, seq_len)
    assert torch.equal(x, ref[:, :-1]) and torch.equal(y, ref[:, 1:])
    assert (x[:, 0] == BOS).all()  # every row starts with BOS
    assert loader.state_dict()["epoch"] >= 1 and loader.state_dict()["batches"] == n  # rolled over


def test_every_row_starts_with_bos_and_targets_shift():
    loader = BatchLoader(make_tokens(200, 300, seed=1), BOS, 8, 128, seed=0)
    for x, y in batches(loader, 30):
        assert (x[:, 0] == BOS).all()
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_long_documents_are_truncated():
    tokens = np.concatenate([[BOS], np.arange(1, 500), [BOS], np.arange(600, 700)]).astype(np.uint16)
    x, y = BatchLoader(tokens, BOS, 2, 32, seed=0).next_batch()
    firsts = sorted(int(r[1]) for r in x)
    assert firsts == [1, 600]  # each row is the start of one document
    for row in x:
        assert (np.diff(row[1:].numpy()) == 1).all()


def test_seed_determinism():
    tokens = make_tokens(100)
    a = batches(BatchLoader(tokens, BOS, 4, 16, seed=3), 10)
    b = batches(BatchLoader(tokens, BOS, 4, 16, seed=3), 10)
    c = batches(BatchLoader(tokens, BOS, 4, 16, seed=4), 10)
    assert same(a, b)
    assert not same(a, c)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_split_equals_single_process(world_size):
    tokens = make_tokens(80)
    single = batches(BatchLoader(tokens, BOS, 8, 24, seed=5), 25)
    ranks = [batches(BatchLoader(tokens, BOS, 8, 24, seed=5, rank=r, world_size=world_size), 25)
             for r in range(world_size)]
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([ranks[r][i][0] for r in range(world_size)]), x)
        assert torch.equal(torch.cat([ranks[r][i][1] for r in range(world_size)]), y)
        assert ranks[0][i][0].shape == (8 // world_size, 24)


def test_bad_geometry():
    tokens = make_tokens(20)
    with pytest.raises(DataError, match="divisible by world_size"):
        BatchLoader(tokens, BOS, 6, 16, seed=0, rank=0, world_size=4)
    with pytest.raises(DataError, match="rank"):
        BatchLoader(tokens, BOS, 8, 16, seed=0, rank=4, world_size=4)
    with pytest.raises(DataError, match="seq_len"):
        BatchLoader(tokens, BOS, 8, 0, seed=0)
    with pytest.raises(DataError, match="start with BOS"):
        BatchLoader(tokens[1:], BOS, 2, 16, seed=0)
    with pytest.raises(DataError, match="fewer than one row"):
        BatchLoader(tokens[:50], BOS, 2, 10_000, seed=0)
    with pytest.raises(DataError, match="1-D"):
        BatchLoader(tokens.reshape(1, -1), BOS, 2, 16, seed=0)


def test_resume_gives_same_batches():
    tokens = make_tokens(50)
    straight = BatchLoader(tokens, BOS, 4, 20, seed=9)
    batches(straight, 13)
    state = json.loads(json.dumps(straight.state_dict()))  # plain ints only
    expected = batches(straight, 30)  # crosses epoch boundaries
    resumed = BatchLoader(tokens, BOS, 4, 20, seed=9)
    resumed.load_state_dict(state)
    assert same(batches(resumed, 30), expected)
    assert resumed.state_dict() == straight.state_dict()
    with pytest.raises(DataError, match="seed"):
        BatchLoader(tokens, BOS, 4, 20, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="cursor"):
        resumed.load_state_dict(dict(state, cursor=10**6))
    with pytest.raises(DataError):
        resumed.load_state_dict({"epoch": 0})


def test_iter():
    loader = BatchLoader(make_tokens(), BOS, 2, 8, seed=0)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    assert same(first, batches(BatchLoader(make_tokens(), BOS, 2, 8, seed=0), 3))


def test_huge_rows_are_fast():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 3000, size=4000)
    tokens = rng.integers(1, 50000, size=int(lengths.sum()), dtype=np.uint16)
    tokens[np.cumsum(lengths) - lengths] = 50256
    t0 = time.perf_counter()
    loader = BatchLoader(tokens, 50256, 1, 393216, seed=0)
    for x, y in batches(loader, 12):  # ~3 epochs
        assert x.shape == (1, 393216) and x[0, 0] == 50256
    assert time.perf_counter() - t0 < 2.0


def test_validation_max_doc_len():
    tokens = make_tokens(100, long_every=1)  # every document is longer than 8 tokens
    x = torch.cat([t[0] for t in validation_batches(tokens, BOS, 2, 32, None, max_doc_len=8)])
    bos = (x == BOS).nonzero()[:, 1].view(len(x), -1)
    assert (bos == torch.arange(0, 32, 8)).all()  # each document takes exactly 8


def test_validation_batches():
    tokens = make_tokens(100)
    a = list(validation_batches(tokens, BOS, 4, 16, None))
    b = list(validation_batches(tokens, BOS, 4, 16, None))
    assert same(a, b) and len(a) >= 2
    ref = reference_sequential_rows(tokens, 17)
    x = torch.cat([t[0] for t in a])
    assert torch.equal(x, torch.tensor(ref[:len(x)])[:, :-1]) and len(ref) - len(x) < 4  # only a partial batch left
    assert all(t[0].shape == (4, 16) for t in a)
    capped = list(validation_batches(tokens, BOS, 4, 16, max_tokens=2 * 64 + 10))
    assert len(capped) == 2 and same(capped, a[:2])
    halves = [list(validation_batches(tokens, BOS, 4, 16, None, rank=r, world_size=2)) for r in (0, 1)]
    assert all(torch.equal(torch.cat([h0[0], h1[0]]), x_) for h0, h1, (x_, _) in zip(*halves, a, strict=True))
    with pytest.raises(DataError, match="max_tokens"):
        validation_batches(tokens, BOS, 4, 16, max_tokens=10)
    with pytest.raises(DataError, match="fewer than one batch"):
        validation_batches(tokens[:100], BOS, 64, 16, None)


def reference_sequential_rows(tokens, row_len):
    starts = np.flatnonzero(tokens == BOS).tolist() + [len(tokens)]
    rows, row = [], []
    for a, b in zip(starts, starts[1:]):
        row += tokens[a:b].tolist()[:row_len - len(row)]
        if len(row) == row_len:
            rows.append(row)
            row = []
    return rows


def test_load_split(tmp_path):
    write_shard(tmp_path / "train_000000.bin", [BOS, 1, 2])
    write_shard(tmp_path / "train_000001.bin", [BOS, 3])
    write_shard(tmp_path / "val_000000.bin", [BOS, 9])
    assert load_split(tmp_path, "train").tolist() == [BOS, 1, 2, BOS, 3]
    assert load_split(str(tmp_path), "val").tolist() == [BOS, 9]
    assert load_split(str(tmp_path / "{split}_*.bin"), "val").tolist() == [BOS, 9]
    assert load_split(str(tmp_path / "train_00000[01].bin"), "val").size == 5  # a plain glob ignores split
    with pytest.raises(DataError, match="split"):
        load_split(tmp_path, "test")
    with pytest.raises(DataError, match="no shard files"):
        load_split(tmp_path / "empty_dir_that_is_missing", "train")
