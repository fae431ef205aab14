"""The induction measures pinned on known answers: a hand-set two-layer attention-only model whose layer-1
head is an exact induction head over a hand-set previous-token head (induction 1, lost when the
previous-token head is ablated, the second copy predicted), the copy losses and Olsson's in-context score
by hand, when each head forms (`head_formation_steps`) on synthetic records, and the recorder's induction
tables on a tiny run trained on repeated spans."""

import math

import pandas as pd
import pytest
import torch

from analysis.loading import load_checkpoint_model
from analysis.mechanism import composition as C
from analysis.measures import metrics as M
from analysis.measures import probes as P
from analysis.measures.recorder import CONTEXT_FILE, HEADS_FILE, INDUCTION_METRIC, icl_ranges, make_recorder, probe_rows
from trainer.config import ModelConfig, get_preset
from trainer.errors import AnalysisError
from trainer.model import GPT
from trainer.repeats import HELD_OUT_LENGTHS, span_lengths
from trainer.train import load_run, make_run, train

pytestmark = pytest.mark.usefixtures("one_thread")

V, BOS, D = 32, 0, 128  # vocabulary, BOS id, model width = head size (one head per layer)


def induction_model() -> GPT:
    """Two layers, attention only, one head each; the residual stream in four parts of 32 dims:
    [current token one-hot | a constant 1 (dim 32) | previous token (layer 0 writes) | next token (layer 1 writes)].

    Layer 0 is a previous-token head: its query and key read only the constant dim and live on rotary pair
    (0, 64), turning 1 radian a position; the key is set one radian ahead, so q_i · k_j = D · cos(i − j − 1),
    largest at j = i − 1 (window 1: keys i − 1 and i, a logit gap of 0.46 · scale · D = 236). Its value copies
    the current token, and W_O writes it into the previous-token dims. Layer 1 is an induction head: its
    query is the current token, its key the previous-token dims, both on never-rotated dims 32…63, so a query
    attends (gap 512) exactly to the keys whose previous token is its own token; its value copies the
    current token into the next-token dims, which the head reads out."""
    cfg = ModelConfig(vocab_size=V, n_layers=2, n_heads=1, d_head=D, d_model=D, arm="baseline", attn_scale=4.0,
                      block_size=1, initial_window=1, long_window_layers=(0,), no_attn_layers=(), no_mlp_layers=(0, 1),
                      n_value_embeds=0, bos_id=BOS)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.scalars.copy_(model.initial_scalars())
        model.embed.weight[:V, :V] = torch.eye(V)
        model.embed.weight[:, 32] = 1.0
        a0, a1 = model.blocks[0].attn.qkvo_w, model.blocks[1].attn.qkvo_w  # (q, k, v, o) × (out, in)
        a0[0, 0, 32] = 1.0  # query: constant, on rotary dim 0 (paired with 64)
        a0[1, 0, 32], a0[1, 64, 32] = math.cos(1), -math.sin(1)  # key: one radian on, so it meets the next query
        a0[2, :V, :V] = torch.eye(V)  # value: the current token
        a0[3, 64:96, :V] = torch.eye(V)  # out: into the previous-token dims
        a1[0, 32:64, :V] = torch.eye(V)  # query: the current token, never rotated
        a1[1, 32:64, 64:96] = torch.eye(V)  # key: the previous token written by layer 0
        a1[2, :V, :V] = torch.eye(V)
        a1[3, 96:, :V] = torch.eye(V)  # out: into the next-token dims
        model.lm_head.weight[:V, 96:] = 50 * torch.eye(V)
    model.set_windows(1, 64)  # layer 0 sees i − 1 and i; layer 1 (the last) 64 tokens back
    return model.eval()


def distinct_repeats(period: int, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """BOS + R + R with R of distinct non-BOS tokens: each query's token occurs once in the first copy."""
    gen = torch.Generator().manual_seed(seed)
    R = torch.stack([torch.randperm(V - 1, generator=gen)[:period] + 1 for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), BOS), R, R], dim=1)


def test_hand_set_induction_head_scores_one_and_needs_the_previous_token_head():
    model, L = induction_model(), 12
    tokens = distinct_repeats(L)
    assert P.pattern_metrics(model, tokens, ["prev_token"])["prev_token"][0, 0] == pytest.approx(1.0, abs=1e-6)
    clean = P.repeat_metrics(model, tokens=tokens)
    assert clean["induction"][1, 0] == pytest.approx(1.0, abs=1e-6)
    assert clean["duplicate_token"][1, 0] == pytest.approx(0.0, abs=1e-6)
    assert clean["induction"][0, 0] < 0.01  # the previous-token head is no induction head
    # without the previous-token head the keys carry nothing: attention spreads evenly, induction is gone
    ablated = P.repeat_metrics(model, tokens=tokens, fwd_hooks=P.ablation_hooks(model, [(0, 0)], "zero"))
    visible = torch.arange(L + 2, 2 * L + 2, dtype=torch.float64)  # keys a second-copy query sees
    assert ablated["induction"][1, 0] == pytest.approx(float((1 / visible).mean()), abs=1e-5)
    # the copy losses: the second copy is predicted, the first is not (R[1:] in both)
    with torch.no_grad():
        logits = model(tokens)
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    first, second = M.repeat_losses(losses.view(tokens.size(0), -1), L)
    assert second < 1e-3 and first > 1.0


def test_repeat_probe_on_the_hand_set_model():
    """The recorder's probe, on uniform random R (repeats allowed): the induction head stays near 1 and the
    second copy far below the first; every result matches the single-length probes."""
    model = induction_model()
    rep = P.repeat_probe(model, lengths=(6, 9), batch=4, seed=1)
    assert rep.induction.shape == (2, 2, 1) and rep.lengths == (6, 9)
    assert (rep.induction[:, 1, 0] > 0.8).all() and (rep.loss_second < rep.loss_first / 5).all()
    for i, L in enumerate((6, 9)):
        single = P.repeat_metrics(model, period=L, batch=4, seed=1)
        assert torch.equal(rep.induction[i], single["induction"])
        assert torch.equal(rep.duplicate_token[i], single["duplicate_token"])


# ---- the copy losses and the in-context score by hand -----------------------------------------------------


def test_repeat_losses_by_hand():
    L = 4  # targets are tokens 1 … 8: first copy R[1:] is tokens 2…4, second copy R[1:] tokens 6…8
    losses = torch.tensor([[9.0, 1.0, 2.0, 3.0, 9.0, 0.5, 0.5, 0.2]])
    first, second = M.repeat_losses(losses, L)
    assert first.item() == pytest.approx(2.0) and second.item() == pytest.approx(0.4)
    with pytest.raises(AnalysisError, match="repeated tokens"):
        M.repeat_losses(losses, 5)


def test_in_context_score_by_hand():
    docs = torch.tensor([[1, 1, 1, 1, 1, 2, 2, 2]])  # a document starting at 0, another at 5
    positions = M.document_positions(docs)
    assert positions.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    losses = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 6.0, 4.0, 3.0]])
    out = M.in_context_score(losses, positions, early=(1, 2), late=(3, 5))
    assert out == pytest.approx(dict(loss_early=4.0, loss_late=1.5, icl_score=-2.5))
    with pytest.raises(AnalysisError, match="no target at document positions 9"):
        M.in_context_score(losses, positions, early=(1, 2), late=(9, 12))


def test_in_context_losses_counts_each_target_at_its_document_position():
    """The target of input p is token p + 1: a row of BOS a b BOS c gives targets a b BOS c at positions 1 2 0 1."""
    model = induction_model()
    inputs, targets = torch.tensor([[BOS, 5, 6, BOS]]), torch.tensor([[5, 6, BOS, 7]])
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(inputs)[0].float(), targets[0], reduction="none")
    got = P.in_context_losses(model, inputs, targets, early=(1, 2), late=(2, 3))
    assert got["loss_early"] == pytest.approx(float((losses[0] + losses[3]) / 2), rel=1e-6)
    assert got["loss_late"] == pytest.approx(float(losses[1]), rel=1e-6)


def test_icl_ranges():
    assert icl_ranges(256) == ((40, 60), (192, 257))
    assert icl_ranges(64) == ((40, 60), (60, 65))


# ---- when each head forms ---------------------------------------------------------------------------------


def records(values: dict[tuple[int, int], list[float]], steps=(10, 20, 30, 40, 50), run="r") -> pd.DataFrame:
    return pd.DataFrame([dict(run=run, preset="cpu-induction", arm="baseline", seed=0, step=s, tokens=s * 1024,
                              layer=l, head=h, metric=INDUCTION_METRIC, value=v)
                         for (l, h), vs in values.items() for s, v in zip(steps, vs)])


def test_head_formation_steps_on_synthetic_records():
    heads = records({(3, 0): [0.0, 0.1, 0.3, 0.6, 0.7],  # forms at 30 and stays
                     (3, 1): [0.25, 0.1, 0.3, 0.1, 0.22],  # crosses three times: first 10, stable only from 50
                     (5, 0): [0.3, 0.4, 0.1, 0.0, 0.0],  # forms, then fades: no stable step
                     (1, 1): [0.0, 0.0, 0.0, 0.0, 0.1]})  # never
    out = C.head_formation_steps(pd.concat([heads, heads]), threshold=0.2)  # duplicates allowed
    by = out.set_index(["layer", "head"])
    assert list(out.columns) == C.HEAD_FORMATION_COLUMNS and len(out) == 4
    assert by.loc[(3, 0), ["first_step", "stable_step"]].tolist() == [30, 30]
    assert by.loc[(3, 1), ["first_step", "stable_step"]].tolist() == [10, 50]
    assert by.loc[(5, 0), "first_step"] == 10 and math.isnan(by.loc[(5, 0), "stable_step"])
    assert by.loc[(1, 1), ["first_step", "stable_step"]].isna().all()
    assert (out["n_steps"] == 5).all() and (out["metric"] == INDUCTION_METRIC).all()
    # the per-run summary is the earliest head: first 10 (heads (3, 1) and (5, 0): the lower one), stable 30
    run = C.formation_steps(heads, {"induction": (INDUCTION_METRIC, 0.2)}).iloc[0]
    assert run[["first_step", "stable_step", "layer", "head"]].tolist() == [10, 30, 3, 1]
    # a run without the metric gives no rows; a table without the columns a clear error
    assert C.head_formation_steps(heads, metric="prev_token").empty
    with pytest.raises(AnalysisError, match="lacks column"):
        C.head_formation_steps(heads.drop(columns="layer"))


# ---- the recorder on a tiny run with repeated spans --------------------------------------------------------


def test_recorder_records_induction_and_in_context_scores(tiny_data, tmp_path):
    overrides = dict(steps=4, n_checkpoints=1, val_every=0, val_tokens=1024, copy_share=0.5, copy_lengths=(3, 9))
    run = make_run("tiny", get_preset("tiny"), "baseline", 0, tiny_data, train_overrides=overrides)
    train(tmp_path / "run", run, callbacks=(make_recorder(2),), progress=False)
    heads, context = pd.read_parquet(tmp_path / "run" / HEADS_FILE), pd.read_parquet(tmp_path / "run" / CONTEXT_FILE)
    assert set(heads["metric"]) == {"prev_token", INDUCTION_METRIC} and sorted(set(context["step"])) == [2, 4]
    assert set(context["metric"]) == {"icl_score", "loss_early", "loss_late", "copy_loss_first", "copy_loss_second"}
    # the last record is the probe of the last checkpoint
    model, _ = load_checkpoint_model(tmp_path / "run")
    rep = P.repeat_probe(model, P.INDUCTION_LENGTHS)
    last = heads[(heads["step"] == 4) & (heads["metric"] == INDUCTION_METRIC)]
    for row in last.itertuples():
        assert row.value == pytest.approx(float(rep.induction[:, row.layer, row.head].mean()), abs=1e-6)
    inputs, targets = probe_rows(run.data, run.model.bos_id, run.model.vocab_size, run.train.seq_len)
    icl = P.in_context_losses(model, inputs, targets, *icl_ranges(inputs.size(1)))
    got = context[context["step"] == 4].set_index("metric")["value"]
    assert got["icl_score"] == pytest.approx(icl["icl_score"], abs=1e-5)
    assert got["copy_loss_second"] == pytest.approx(float(rep.loss_second.mean()), abs=1e-5)
    # runs without repeated spans keep their tables as they were, unless asked
    plain = make_run("tiny", get_preset("tiny"), "baseline", 0, tiny_data, train_overrides=dict(overrides, copy_share=0))
    train(tmp_path / "plain", plain, callbacks=(make_recorder(4),), progress=False)
    assert set(pd.read_parquet(tmp_path / "plain" / HEADS_FILE)["metric"]) == {"prev_token"}
    assert not (tmp_path / "plain" / CONTEXT_FILE).exists()
    assert load_run(tmp_path / "run").train.copy_share == 0.5


def test_the_test_lengths_are_never_trained_on():
    """The induction measures use lengths the cpu-induction data holds out, and one beyond its longest span."""
    train_cfg = get_preset("cpu-induction").train
    trained = span_lengths(train_cfg.copy_lengths, train_cfg.copy_holdout)
    assert train_cfg.copy_holdout == HELD_OUT_LENGTHS and not set(P.INDUCTION_LENGTHS) & set(trained)
    assert max(P.INDUCTION_LENGTHS) > max(trained) and min(trained) >= 5
