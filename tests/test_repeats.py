"""The copy_share data option (trainer/repeats.py): spans R R among the text, lengths but the held-out ones,
the text kept in order, about the asked share, and the same rows for every arm, rank count and resume."""

import numpy as np
import pytest
import torch

from trainer.config import from_dict, get_preset, replace, to_dict, TrainConfig
from trainer.data import BatchLoader, load_split
from trainer.errors import ConfigError
from trainer.repeats import RepeatSpans, insert_spans, span_lengths
from trainer.train import make_run, train

V, BOS = 512, 0


def text_row(T=256, seed=0) -> np.ndarray:
    row = np.random.default_rng(seed).integers(1, V, size=T + 1)
    row[0] = BOS
    return row


def test_spans_repeat_exactly_among_the_text_in_order():
    allowed = span_lengths((5, 30), (11, 19, 27))
    assert 11 not in allowed and 5 in allowed and 30 in allowed and len(allowed) == 23
    for seed in range(20):
        row = text_row(seed=seed)
        new, spans = insert_spans(row, np.random.default_rng(seed), V, BOS, 0.5, allowed)
        assert new.shape == row.shape and new[0] == BOS and spans
        copied = np.zeros(new.size, dtype=bool)
        for start, L in spans:
            assert L in allowed
            assert np.array_equal(new[start:start + L], new[start + L:start + 2 * L])
            assert (new[start:start + 2 * L] != BOS).all()
            copied[start:start + 2 * L] = True
        assert copied.sum() == 2 * sum(L for _, L in spans)  # spans do not overlap
        text = new[~copied][1:]
        assert np.array_equal(text, row[1:1 + text.size])  # the text in order, cut at the end
        share = copied.sum() / (row.size - 1)
        assert 0.5 <= share < 0.5 + 2 * 30 / 256


def test_where_spans_start_varies():
    starts = [insert_spans(text_row(), np.random.default_rng(s), V, BOS, 0.3, [8])[1][0][0] for s in range(30)]
    assert len(set(starts)) > 10 and min(starts) >= 1


def loader(tokens, batch_size=4, rank=0, world_size=1, seed=0):
    return BatchLoader(tokens, BOS, batch_size, 64, seed, rank=rank, world_size=world_size)


def test_rows_are_a_function_of_seed_and_batch_only(tiny_data):
    tokens = load_split(tiny_data, "train")
    spans = lambda **kw: RepeatSpans(loader(tokens, **kw), V, BOS, 0.5, (3, 9), (5,))  # noqa: E731
    a, b = spans(), spans()
    first = [a.next_batch() for _ in range(3)]
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, [b.next_batch() for _ in range(3)]))
    plain = loader(tokens)
    x, y = plain.next_batch()
    assert not torch.equal(first[0][0], x) and torch.equal(first[0][0][:, 0], x[:, 0])  # the rows changed; BOS kept
    assert torch.equal(first[0][0][:, 1:], first[0][1][:, :-1])  # targets are the inputs shifted
    # two ranks see exactly the rows one process sees
    halves = [spans(rank=r, world_size=2) for r in (0, 1)]
    for inputs, _ in first:
        assert torch.equal(torch.cat([h.next_batch()[0] for h in halves]), inputs)
    # a resume continues with the same rows
    state = a.state_dict()
    resumed = spans()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch()[0], a.next_batch()[0])
    assert not torch.equal(spans(seed=1).next_batch()[0], first[0][0])


def test_copy_settings_are_checked_and_saved():
    tiny = get_preset("tiny").train
    for bad, message in [(dict(copy_share=1.0), "copy_share"), (dict(copy_share=-0.1), "copy_share"),
                         (dict(copy_lengths=(9, 3)), "copy_lengths"), (dict(copy_lengths=(5,)), "copy_lengths"),
                         (dict(copy_share=0.5, copy_lengths=(5, 6), copy_holdout=(5, 6)), "leaves no span length"),
                         (dict(copy_share=0.5, copy_lengths=(40, 50)), "does not fit"),
                         (dict(copy_share=0.5, copy_lengths=(5, 10**17)), r"the longest span \(10{17} tokens\) is longer than a row")]:
        with pytest.raises(ConfigError, match=message):
            replace(tiny, **bad)
    cfg = replace(tiny, copy_share=0.25, copy_lengths=(4, 9), copy_holdout=(6,))
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    old = to_dict(tiny)
    for key in ("copy_share", "copy_lengths", "copy_holdout"):
        del old[key]
    assert from_dict(TrainConfig, old).copy_share == 0  # configs written before the option: text only


def test_training_sees_the_rows_with_spans(tiny_data, tmp_path):
    seen = []
    overrides = dict(steps=2, n_checkpoints=1, val_every=0, val_tokens=512, copy_share=0.5, copy_lengths=(3, 9))
    run = make_run("tiny", get_preset("tiny"), "baseline", 0, tiny_data, train_overrides=overrides)
    train(tmp_path / "run", run, callbacks=(lambda inputs, **_: seen.append(inputs.clone()),), progress=False)
    cfg = run.train
    expected = RepeatSpans(BatchLoader(load_split(tiny_data, "train"), BOS, cfg.batch_size, cfg.seq_len, 0),
                           run.model.vocab_size, BOS, 0.5, (3, 9))
    assert all(torch.equal(x, expected.next_batch()[0]) for x in seen) and len(seen) == 2
