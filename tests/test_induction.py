"""The induction measures pinned on known answers: a hand-set two-layer attention-only model whose layer-1
head is an exact induction head over a hand-set previous-token head (induction 1, lost when the
previous-token head is ablated, the second copy predicted), the copy losses and Olsson's in-context score
by hand, when each head forms (`head_formation_steps`) on synthetic records, the recorder's induction
tables on a tiny run trained on repeated spans, and the induction circuit (key shares, knock-outs, head
roles) on hand-set models whose key gets its previous token by one known route each."""

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch

from analysis.loading import load_checkpoint_model
from analysis.mechanism import composition as C
from analysis.mechanism import induction_circuit as IC
from analysis.measures import metrics as M
from analysis.measures import probes as P
from analysis.measures.recorder import CONTEXT_FILE, HEADS_FILE, INDUCTION_METRIC, icl_ranges, make_recorder, probe_rows
from analysis.tables import Tables
from trainer.config import ModelConfig, get_preset
from trainer.errors import AnalysisError
from trainer.model import GPT
from trainer.repeats import HELD_OUT_LENGTHS, span_lengths
from trainer.train import load_run, make_run, train

pytestmark = pytest.mark.usefixtures("one_thread")

V, BOS, D = 32, 0, 128  # vocabulary, BOS id, model width = head size (one head per layer)


def induction_model(arm: str = "baseline") -> GPT:
    """Two layers, attention only, one head each; the residual stream in four parts of 32 dims:
    [current token one-hot | a constant 1 (dim 32) | previous token (layer 0 writes) | next token (layer 1 writes)].

    Layer 0 is a previous-token head: its query and key read only the constant dim and live on rotary pair
    (0, 64), turning 1 radian a position; the key is set one radian ahead, so q_i · k_j = D · cos(i − j − 1),
    largest at j = i − 1 (window 1: keys i − 1 and i, a logit gap of 0.46 · scale · D = 236). Its value copies
    the current token, and W_O writes it into the previous-token dims. Layer 1 is an induction head: its
    query is the current token, its key the previous-token dims, both on never-rotated dims 32…63, so a query
    attends (gap 512) exactly to the keys whose previous token is its own token; its value copies the
    current token into the next-token dims, which the head reads out. `arm` builds the same weights in
    another arm (its own mixing left at zero unless it is a fixed dose)."""
    cfg = ModelConfig(vocab_size=V, n_layers=2, n_heads=1, d_head=D, d_model=D, arm=arm, attn_scale=4.0,
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


# ---- the induction circuit: key routes as shares, knock-outs, head roles --------------------------------------

LENGTHS = (6, 9, 12)  # within the hand-set model's 64-token window; distinct tokens fit V = 32


def text_rows(batch: int = 4, period: int = 12, seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rows = distinct_repeats(period, batch, seed)
    return [(rows[:, :-1], rows[:, 1:])]


def shares(table: pd.DataFrame, layer: int = 1, head: int = 0) -> pd.Series:
    rows = table[(table["layer"] == layer) & (table["head"] == head) & (table["metric"] == "share")]
    return rows.set_index("route")["value"]


def prev_scores(model: GPT) -> torch.Tensor:
    return P.pattern_metrics(model, distinct_repeats(12), ["prev_token"])["prev_token"]


def test_key_shares_and_knockouts_through_the_previous_token_head():
    """(i) The hand-set induction head's key reads only what the previous-token head writes: all of its share
    goes through prev_heads, and ablating that head kills induction and costs the second copy."""
    model = induction_model()
    prev = prev_scores(model)
    induction = P.repeat_probe(model, LENGTHS, batch=8).induction.mean(0)
    table = IC.key_shares(model, prev, induction, LENGTHS, batch=8)
    got = shares(table)
    assert set(got.index) == {"prev_heads", "other", "all"}  # the baseline has no smear or key mixing to route
    assert got["prev_heads"] == pytest.approx(1.0, abs=1e-6) and got["other"] == pytest.approx(0.0, abs=1e-6)
    clean = table[table["route"] == "clean"].set_index("metric")["value"]
    assert clean["n_prev_heads"] == 1 and clean["logit"] == pytest.approx(4.0 * D, rel=1e-4)  # scale · q · k
    drop = table[(table["metric"] == "logit_drop")].set_index("route")["value"]
    assert drop["all"] == pytest.approx(clean["logit"], rel=1e-4)  # the resampled token matches nothing
    knock = IC.induction_knockouts(model, text_rows(), prev, LENGTHS, batch=8).set_index(["condition", "metric"])["value"]
    assert knock["clean", "best_layer"] == 1 and knock["clean", "n_prev_heads"] == 1
    assert knock["clean", "induction"] > 0.8 and knock["prev_heads", "induction"] < 0.2
    assert knock[IC.PRIMARY] > 2.0 and knock["prev_heads", "copy_loss_second"] > knock["clean", "copy_loss_second"] + 2
    # the baseline has no mixing to remove: knocking it out changes nothing
    assert knock["clean", "has_mixing"] == 0 and knock["smear", "copy_cost"] == 0
    assert knock["both", "copy_cost"] == knock["prev_heads", "copy_cost"]


def test_key_shares_through_the_smear_when_the_previous_token_head_writes_nothing():
    """(ii) A fixed smear (dose 3) carries token j−1 into x0 at j and the key reads x; the previous-token head
    attends as before but writes nothing: the key's whole share goes through the smear."""
    model = induction_model("dose-3")
    with torch.no_grad():
        model.blocks[0].attn.qkvo_w[3].zero_()
    prev = prev_scores(model)
    assert prev[0, 0] > 0.9  # still a previous-token head, so its route is patched (and carries nothing)
    with torch.no_grad():  # the designated head's key reads x's token dims, where the smear puts 3 · e[j−1]
        model.blocks[1].attn.qkvo_w[1].zero_()
        model.blocks[1].attn.qkvo_w[1][32:64, :V] = torch.eye(V)
    induction = torch.tensor([[0.0], [1.0]])  # designated, not measured: the key also carries token j itself
    table = IC.key_shares(model, prev, induction, LENGTHS, batch=8)
    got = shares(table)
    assert set(got.index) == {"smear", "prev_heads", "other", "all"}
    assert got["smear"] == pytest.approx(1.0, abs=1e-5) and got["prev_heads"] == pytest.approx(0.0, abs=1e-6)
    assert table[(table["route"] == "clean") & (table["metric"] == "n_prev_heads")]["value"].item() == 1
    assert table[(table["route"] == "all") & (table["metric"] == "logit_drop")]["value"].item() > 10


def random_arm_model(arm: str, seed: int = 0) -> GPT:
    """The tiny preset in `arm` with every weight random (W_O and the key smear too)."""
    model = GPT(replace(get_preset("tiny").model, arm=arm), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "scalars":
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if "embed" in name else 0.3))
        if model.arm_spec.coefficient and model.arm_spec.mix == "gate":
            model.smear_lambda.fill_(2.0)
    return model.eval()


@pytest.mark.parametrize("arm", ["smear", "keyshift", "smeared-key"])
def test_key_shares_add_up_to_one_exactly(arm):
    """(iii) Per head, the named routes' shares and `other` add up to 1, by construction, on a random model;
    each route the arm has is measured and moves the logit."""
    model = random_arm_model(arm)
    n, H = model.config.n_layers, model.config.n_heads
    prev, induction = torch.zeros(n, H), torch.zeros(n, H)
    prev[0], prev[1] = 0.9, 0.9  # every head of layers 0 and 1 a previous-token head
    induction[3] = 0.5  # both heads of the last layer designated induction heads
    table = IC.key_shares(model, prev, induction, lengths=(5, 8), batch=12)
    expected = {"smear": {"smear"}, "keyshift": {"key_shift"}, "smeared-key": {"key_smear"}}[arm]
    for head in range(H):
        got = shares(table, 3, head)
        assert set(got.index) == expected | {"prev_heads", "other", "all"}
        assert got.drop("all").sum() == pytest.approx(1.0, abs=1e-12) and got["all"] == 1.0
        drop = table[(table["layer"] == 3) & (table["head"] == head) & (table["metric"] == "logit_drop")]
        drop = drop.set_index("route")["value"]
        assert drop.drop("all").sum() == pytest.approx(drop["all"], abs=1e-9)
        for route in expected | {"prev_heads"}:
            assert abs(drop[route]) > 1e-3


def test_key_shares_are_nan_without_any_effect_and_check_their_input():
    model = random_arm_model("smear")
    with torch.no_grad():
        model.blocks[3].attn.qkvo_w[1].zero_()  # the keys of layer 3 are 0: no token moves them
    n, H = model.config.n_layers, model.config.n_heads
    induction = torch.zeros(n, H)
    induction[3, 0] = 0.5
    table = IC.key_shares(model, torch.zeros(n, H), induction, lengths=(5,), batch=4)
    assert shares(table, 3, 0).isna().all()
    assert table[(table["metric"] == "logit_drop") & (table["route"] == "all")]["value"].abs().max() < 1e-6
    none = IC.key_shares(model, torch.zeros(n, H), torch.zeros(n, H), lengths=(5,), batch=4)
    assert none.to_dict("records") == [dict(layer=-1, head=-1, route="clean", metric="n_induction_heads", value=0.0)]
    with pytest.raises(AnalysisError, match="previous-token scores of shape"):
        IC.key_shares(model, torch.zeros(n, H + 1), induction)
    with pytest.raises(AnalysisError, match="at least 2"):
        IC.key_shares(model, torch.zeros(n, H), induction, lengths=(1,))


def key_arm_model(arm: str) -> GPT:
    """The hand-set model with its induction made by the key arm alone: the previous-token head writes nothing,
    and the layer-1 key reads the *current* token. `keyshift`: on the zero-frequency dims 32…63, which the
    shift replaces by key j−1's; `smeared-key`: s = 0.75 at layer 1, so key j is 0.25 k[j] + 0.75 k[j−1]."""
    model = induction_model(arm)
    with torch.no_grad():
        model.blocks[0].attn.qkvo_w[3].zero_()
        model.blocks[1].attn.qkvo_w[1].zero_()
        model.blocks[1].attn.qkvo_w[1][32:64, :V] = torch.eye(V)
        if arm == "smeared-key":
            model.blocks[1].attn.key_smear.fill_(0.75)
    return model


@pytest.mark.parametrize("arm,route", [("keyshift", "key_shift"), ("smeared-key", "key_smear")])
def test_key_arm_routes_carry_the_whole_key(arm, route):
    """(iv) When the key arm alone brings token j−1 into key j, its route has all the share; knocking the
    mixing out gives the baseline's forward exactly, and with it the induction is gone."""
    model = key_arm_model(arm)
    prev = prev_scores(model)
    repeat = P.repeat_probe(model, LENGTHS, batch=8)
    assert repeat.induction[:, 1, 0].mean() > 0.8  # a one-layer induction head
    table = IC.key_shares(model, prev, repeat.induction.mean(0), LENGTHS, batch=8)
    got = shares(table)
    assert set(got.index) == {route, "prev_heads", "other", "all"}
    assert got[route] == pytest.approx(1.0, abs=1e-5) and got["prev_heads"] == pytest.approx(0.0, abs=1e-6)
    # the knock-out is the baseline: same weights, no mixing
    baseline = induction_model()
    baseline.load_state_dict({k: v for k, v in model.state_dict().items() if "key_smear" not in k})
    tokens = distinct_repeats(12)
    with torch.no_grad():
        knocked = model.run_with_hooks(tokens, fwd_hooks=IC.term_knockout_hooks(model))
        torch.testing.assert_close(knocked, baseline(tokens), rtol=0, atol=0)
    knock = IC.induction_knockouts(model, text_rows(), prev, LENGTHS, batch=8).set_index(["condition", "metric"])["value"]
    assert knock["clean", "has_mixing"] == 1 and knock["smear", "induction"] < 0.2
    assert knock["smear", "copy_cost"] > 2.0 and abs(knock[IC.PRIMARY]) < 1e-9  # the head writes nothing


def test_head_roles_on_the_hand_set_model():
    model = induction_model()
    roles = IC.head_roles(model, text_rows(), lengths=LENGTHS, batch=8)
    by = roles.set_index(["layer", "head", "metric"])["value"]
    assert set(roles["metric"]) == {*(f"attn_{k}" for k in IC.OFFSET_KEYS), "induction", "duplicate_token",
                                    "ablation_text", "ablation_copy"}
    assert by[0, 0, "attn_prev"] == pytest.approx(1.0, abs=1e-6) and by[0, 0, "induction"] < 0.01
    assert by[1, 0, "induction"] > 0.8 and by[1, 0, "duplicate_token"] < 0.05
    for head in ((0, 0), (1, 0)):
        assert sum(by[(*head, f"attn_{k}")] for k in IC.OFFSET_KEYS) == pytest.approx(1.0, abs=1e-6)
    assert by[0, 0, "ablation_copy"] > 2.0 and by[1, 0, "ablation_copy"] > 2.0  # both heads make the copy
    one = IC.head_roles(model, text_rows(), heads=[(0, 0)], lengths=LENGTHS, batch=8)
    assert set(zip(one["layer"], one["head"])) == {(0, 0)}
    assert one.set_index("metric")["value"].equals(by.loc[0, 0])
    with pytest.raises(AnalysisError, match=r"head \(2, 0\) is not an attention head"):
        IC.head_roles(model, text_rows(), heads=[(2, 0)])


def test_freed_head_roles_join_the_baseline_places_of_the_same_seed():
    from analysis.stats.mechanism_stats import FREED_COLUMNS, freed_head_roles

    def run(arm, seed):
        return dict(run=f"{arm}-s{seed}", preset="cpu-induction", arm=arm, seed=seed, step=30)

    heads = pd.DataFrame([dict(run(a, s), tokens=0, layer=l, head=h, metric="prev_token", value=v)
                          for a, s, l, h, v in [("baseline", 0, 0, 1, 0.8), ("baseline", 0, 1, 0, 0.1),
                                                ("baseline", 1, 1, 1, 0.5), ("smear", 0, 0, 1, 0.1),
                                                ("smear", 2, 0, 1, 0.9)]])
    roles = pd.DataFrame([dict(run(a, s), layer=l, head=h, metric=m, value=1.0)
                          for a, s in [("baseline", 0), ("smear", 0), ("baseline", 1), ("smear", 2)]
                          for l in (0, 1) for h in (0, 1) for m in ("induction", "attn_prev")])
    out = freed_head_roles(heads, roles)
    assert list(out.columns) == FREED_COLUMNS
    places = set(zip(out["arm"], out["seed"], out["layer"], out["head"]))
    assert places == {("baseline", 0, 0, 1), ("smear", 0, 0, 1), ("baseline", 1, 1, 1)}  # seed 2: no baseline
    assert len(out) == 6 and set(out.loc[out["seed"] == 0, "baseline_prev"]) == {0.8}
    with pytest.raises(AnalysisError, match="head_roles table lacks"):
        freed_head_roles(heads, roles.drop(columns="layer"))


# ---- the study's per-seed values ----------------------------------------------------------------------------


def _study_tables(arm_values: dict[str, dict]) -> Tables:
    """Tables of one seed per arm: knock-outs, key shares and records, as analyze and the recorder write them."""
    ko, ks, rec = [], [], []
    for arm, v in arm_values.items():
        base = dict(run=f"s0-{arm}", preset="cpu-induction", arm=arm, seed=0)
        ko += [dict(base, step=3000, condition=c, metric=m, value=x) for (c, m), x in (
            (("prev_heads", "copy_cost"), v["cost"]), (("clean", "induction"), 0.9), (("clean", "copy_loss_second"), 0.3))]
        ks += [dict(base, step=3000, layer=-1, head=-1, route="clean", metric="n_induction_heads", value=2.0)]
        for (l, h, score) in ((3, 0, 0.5), (5, 1, 0.9)):  # the stronger head (5, 1) is the one whose shares count
            ks += [dict(base, step=3000, layer=l, head=h, route="clean", metric="induction", value=score)]
            ks += [dict(base, step=3000, layer=l, head=h, route=r, metric="share", value=s if (l, h) == (5, 1) else 0.5)
                   for r, s in v["shares"].items()]
        rec += [dict(base, step=s, tokens=s * 1024, layer=5, head=1, metric=INDUCTION_METRIC, value=x)
                for s, x in zip((1000, 1050, 1100, 1150), v["record"])]
    frame = lambda rows: pd.DataFrame(rows)
    return Tables(heads=frame(rec), key_shares=frame(ks), induction_knockouts=frame(ko), record_heads=frame(rec))


def test_induction_per_seed_reads_the_three_claims():
    from analysis.stats.induction import INDUCTION_CLAIMS, induction_per_seed, mixing_route

    tables = _study_tables({
        "baseline": dict(cost=8.0, shares={"prev_heads": 0.97, "other": 0.03}, record=[0.1, 0.25, 0.5, 0.9]),
        "dose-0.8": dict(cost=0.5, shares={"smear": 0.7, "prev_heads": 0.2, "other": 0.1}, record=[0.3, 0.5, 0.6, 0.9]),
        "keyshift": dict(cost=0.1, shares={"key_shift": 0.95, "prev_heads": 0.0, "other": 0.05}, record=[0.0, 0.1, 0.1, 0.15])})
    per = induction_per_seed(tables).set_index("arm")
    assert per.loc["baseline", "copy_cost_prev"] == 8.0 and per.loc["dose-0.8", "copy_cost_prev"] == 0.5
    assert per.loc["baseline", "mix_share"] == 0.0  # no mixing route: nothing arrives through one
    assert per.loc["dose-0.8", "mix_share"] == 0.7 and per.loc["keyshift", "mix_share"] == 0.95
    assert per.loc["baseline", "prev_share"] == 0.97
    assert per.loc["baseline", "formation_step"] == 1050 and per.loc["dose-0.8", "formation_step"] == 1000
    # never formed: censored one record past the last, and flagged
    assert per.loc["keyshift", "formation_step"] == 1200 and not per.loc["keyshift", "formed"]
    assert [mixing_route(a) for a in ("baseline", "smear", "dose-0.8", "keyshift", "smeared-key")] == [
        None, "smear", "smear", "key_shift", "key_smear"]
    assert len(INDUCTION_CLAIMS) == 12 and {c.reference for c in INDUCTION_CLAIMS} == {"baseline"}
