"""Readout probes, knock-outs and K-composition pinned on known answers (tiny models, synthetic data)."""

import math

import pandas as pd
import pytest
import torch

from analysis.mechanism import composition as C
from analysis.mechanism import knockout as K
from analysis.measures import probes as P
from analysis.mechanism import readout as R
from trainer.config import get_preset, replace
from trainer.errors import AnalysisError
from trainer.model import GPT

pytestmark = pytest.mark.usefixtures("one_thread")
BOS = 0


def random_model(smear: bool = True, seed: int = 0, smear_lambda: float = 0.7, arm: str | None = None) -> GPT:
    """A tiny model with every weight random (the record's init zeroes W_O and the MLP outputs); `arm` names
    another arm than the smear (smear=True) or the baseline."""
    cfg = get_preset("tiny").model
    model = GPT(replace(cfg, arm=arm or ("smear" if smear else "baseline")), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "scalars":
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if "embed" in name else 0.15))
        if model.arm_spec.coefficient and model.arm_spec.mix == "gate":
            model.smear_lambda.fill_(smear_lambda)
    return model.eval()


def data(rows: int = 8, T: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 512, (rows, T + 1), generator=gen)
    x[:, 0] = BOS
    x[:, 30] = BOS  # a second document in every row
    return x[:, :-1], x[:, 1:]


# ---- readout ------------------------------------------------------------------------------------------


def test_backward_bigram_baseline_by_hand():
    # current tokens 5, 5, 5, 6 with classes 0, 0, 1, 1 at fit time: 5 → class 0 (2 of 3), 6 → 1;
    # 7 was never seen: the most common class overall (0 and 1 tie at 2: the smaller, 0)
    cur_fit, y_fit = torch.tensor([5, 5, 5, 6]), torch.tensor([0, 0, 1, 1])
    cur_eval, y_eval = torch.tensor([5, 6, 6, 7, 7]), torch.tensor([0, 1, 0, 0, 1])
    assert R.bigram_baseline(cur_fit, y_fit, cur_eval, y_eval, 2) == pytest.approx(3 / 5)


def test_documents_split_whole_and_the_same_every_time():
    tokens = torch.tensor([[BOS, 3, 4, BOS, 5, 6], [7, 8, BOS, 9, 9, 9], [BOS, 1, 1, 1, 1, 1]])
    docs = R.document_index(tokens, BOS)
    assert docs.tolist() == [[0, 0, 0, 1, 1, 1], [2, 2, 3, 3, 3, 3], [4, 4, 4, 4, 4, 4]]
    fit = R.fit_documents(docs)
    assert torch.equal(fit, R.fit_documents(docs))
    for d in range(5):  # every document wholly on one side
        assert fit[docs == d].all() or not fit[docs == d].any()
    assert 0 < int(fit.sum()) < fit.numel()
    with pytest.raises(AnalysisError, match="at least 2"):
        R.fit_documents(torch.zeros(1, 4, dtype=torch.long))


def test_frequent_tokens_and_positions():
    tokens = torch.tensor([[BOS, 4, 4, 2, 2, BOS, 9]])
    assert R.frequent_tokens(tokens, torch.ones_like(tokens, dtype=torch.bool), 5, BOS).tolist() == [2, 4, 9]
    rows, cols = R.target_positions(tokens, R.document_index(tokens, BOS), 1, BOS)
    assert cols.tolist() == [1, 2, 3, 4, 6]  # not the BOS at 5; 6's previous token (the BOS) is in its document
    rows, cols = R.target_positions(tokens, R.document_index(tokens, BOS), 2, BOS)
    assert cols.tolist() == [2, 3, 4]  # 6 would reach back across the BOS


def test_readout_of_a_residual_holding_the_previous_token():
    gen = torch.Generator().manual_seed(0)
    V, N, T = 12, 64, 25
    tokens = torch.randint(1, V, (N, T), generator=gen)
    tokens[:, 0] = BOS
    prev = torch.zeros(N, T, V)
    prev[:, 1:] = torch.nn.functional.one_hot(tokens[:, :-1], V).float()
    noise = torch.randn(N, T, 8, generator=gen)
    resid = {0: torch.cat([prev, noise], -1), 1: noise}  # layer 0 holds token i−1; layer 1 nothing
    df = R.readout_scores(resid, tokens, BOS, k=8, targets=("prev", "curr")).set_index(["layer", "target", "metric"])["value"]
    assert df[0, "prev", "accuracy"] > 0.99
    # uniform random tokens: token i says nothing about token i−1, so the baseline is near chance (1/8)
    assert df[0, "prev", "baseline"] < 0.3 and df[0, "prev", "above_baseline"] > 0.65
    assert df[1, "prev", "accuracy"] < 0.3 and df[0, "curr", "accuracy"] < 0.3  # noise; i−1 does not give i
    assert df[0, "curr", "baseline"] == 1.0 and df[1, "curr", "above_baseline"] < -0.6
    with pytest.raises(AnalysisError, match="unknown target 'next'"):
        R.readout_scores(resid, tokens, BOS, targets=("next",))


def test_residuals_are_the_hooked_streams():
    model = random_model(smear=True)
    x, _ = data()
    res = R.residuals(model, x)
    assert sorted(res) == list(range(model.config.n_layers + 1))
    _, cache = model.run_with_cache(x)
    # the cache builds patterns (explicit attention), `residuals` runs fused: equal to float rounding
    torch.testing.assert_close(res[1], cache["blocks.1.hook_resid_pre"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res[model.config.n_layers], cache[f"blocks.{model.config.n_layers - 1}.hook_resid_post"],
                               atol=1e-4, rtol=1e-4)


# ---- knock-outs ---------------------------------------------------------------------------------------


def loss(model, batches, hooks=()):
    with torch.no_grad():
        return P._loss(model, batches, list(hooks))


def test_zero_knockout_is_lambda_zero_and_a_no_op_without_smear():
    x, y = data()
    smear = random_model(smear=True)
    knocked = loss(smear, [(x, y)], K.smear_knockout_hooks(smear, "zero"))
    assert knocked != pytest.approx(loss(smear, [(x, y)]), abs=1e-3)  # the smear matters in this model
    with torch.no_grad():
        smear.smear_lambda.fill_(0)
    assert knocked == pytest.approx(loss(smear, [(x, y)]), abs=1e-6)
    base = random_model(smear=False)
    mean = K.mean_embedding(base, [(x, y)])
    for kind in K.SMEAR_KNOCKOUTS:
        assert loss(base, [(x, y)], K.smear_knockout_hooks(base, kind, mean)) == loss(base, [(x, y)])


def test_a_fixed_dose_is_knocked_out_too():
    """A dose has no gate weights, but its term runs through the smear hooks: the table knocks it out."""
    x, y = data()
    cfg = get_preset("tiny").model
    dose = GPT(replace(cfg, arm="dose-0.8"), seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights, as random_model: the record's init zeroes W_O and the head
        for name, p in dose.named_parameters():
            if name != "scalars":
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if "embed" in name else 0.15))
    scores = torch.rand(cfg.n_layers, cfg.n_heads, generator=gen)
    scores[[not block.has_attn for block in dose.blocks]] = float("nan")  # as probes score a layer without attention
    table = K.knockout_table(dose, [(x, y)], scores, ks=(1,), head_ablations=("mean",))
    smear = table[table["metric"] == "smear"]["value"]
    assert len(smear) == 2 and (smear.abs() > 1e-4).all()


def test_mean_knockout_of_a_constant_smear_term_changes_nothing():
    x, y = data()
    model = random_model(smear=True)
    with torch.no_grad():
        model.embed.weight.copy_(model.embed.weight[3].expand_as(model.embed.weight))  # every token, one embedding
    mean = K.mean_embedding(model, [(x, y)])
    torch.testing.assert_close(mean, model.embed.weight[3])
    assert loss(model, [(x, y)], K.smear_knockout_hooks(model, "mean", mean)) == pytest.approx(loss(model, [(x, y)]), abs=1e-6)
    varied = random_model(smear=True)  # with varied embeddings the mean knock-out does change the loss
    mean = K.mean_embedding(varied, [(x, y)])
    assert loss(varied, [(x, y)], K.smear_knockout_hooks(varied, "mean", mean)) != pytest.approx(loss(varied, [(x, y)]), abs=1e-3)


def test_mean_knockout_replaces_the_term_by_the_coefficient_times_the_mean():
    """x = norm(e + c · ē) by hand: the hook swaps the term added, not the smeared embedding (a swap of the
    whole embedding would give norm(2e + c · ē), which the norm hides only when the term is parallel to e)."""
    x, _ = data(rows=2)
    model = random_model(smear=True, smear_lambda=2.0)
    mean = torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), model.hooks(fwd_hooks=K.smear_knockout_hooks(model, "mean", mean)):
        got = model.embed_tokens(x)
    e, coef = model.embed.weight[x].detach(), 2.0 * P.smear_gates(model, x)[..., None]
    want = torch.nn.functional.rms_norm(torch.cat([e[:, :1], e[:, 1:] + coef * mean], dim=1), (e.size(-1),))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_head_with_zero_output_projection_has_no_interaction():
    x, y = data()
    model = random_model(smear=True)
    d = model.config.d_head
    with torch.no_grad():
        model.blocks[1].attn.qkvo_w[3][:, d:2 * d] = 0  # head 1 of layer 1 writes nothing
    scores = torch.full((model.config.n_layers, model.config.n_heads), math.nan)
    scores[1] = torch.tensor([0.1, 0.9])
    scores[0] = torch.tensor([0.5, 0.2])
    table = K.knockout_table(model, [(x, y)], scores, ks=(1, 2))
    one = table[table["k"] == 1].set_index(["head_ablation", "smear_ablation", "metric"])["value"]
    assert set(table.loc[table["k"] == 1, "heads"]) == {"L1H1"} and set(table.loc[table["k"] == 2, "heads"]) == {"L1H1+L0H0"}
    for ablation in K.HEAD_ABLATIONS:
        for kind in K.SMEAR_KNOCKOUTS:
            assert one[ablation, kind, "head"] == pytest.approx(0, abs=1e-6)
            assert one[ablation, kind, "interaction"] == pytest.approx(0, abs=1e-6)
            assert abs(one[ablation, kind, "smear"]) > 0.001  # the smear itself matters
    two = table[table["k"] == 2].set_index(["head_ablation", "smear_ablation", "metric"])["value"]
    assert two["zero", "zero", "interaction"] == pytest.approx(
        two["zero", "zero", "loss_both"] - two["zero", "zero", "loss_head"] - two["zero", "zero", "loss_smear"]
        + two["zero", "zero", "loss_neither"])
    assert two["zero", "zero", "head"] != 0  # L0H0 does write


def test_top_heads_skip_layers_without_attention():
    scores = torch.tensor([[0.3, 0.5], [math.nan, math.nan], [0.5, 0.1]])
    assert K.top_heads(scores, 2) == [(0, 1), (2, 0)]  # a tie goes to the earlier layer
    with pytest.raises(AnalysisError, match="top 5 heads"):
        K.top_heads(scores, 5)


# ---- composition --------------------------------------------------------------------------------------


def test_composition_routes_on_known_cases():
    model = random_model(smear=True, smear_lambda=0.0)  # λ = 0: the smear route carries nothing
    n, H = model.config.n_layers, model.config.n_heads
    induction = torch.zeros(n, H)
    induction[2] = math.nan  # tiny: layer 2 has no attention
    induction[3, 1] = 0.5  # pretend: an induction head in layer 3
    prev = torch.zeros(n, H)  # no previous-token heads
    table = C.composition_table(model, prev, induction).set_index(["layer", "head", "metric"])["value"]
    assert table[-1, -1, "n_induction_heads"] == 1 and table[3, 1, "n_prev_heads"] == 0
    assert table[3, 1, "attn_key_smear"] == pytest.approx(table[3, 1, "attn_clean"], abs=1e-6)
    assert table[3, 1, "attn_key_prev_heads"] == pytest.approx(table[3, 1, "attn_clean"], abs=1e-6)
    assert table[3, 1, "attn_key_all"] != pytest.approx(table[3, 1, "attn_clean"], abs=1e-4)
    # a strong smear and a previous-token head each move the key
    model = random_model(smear=True, smear_lambda=2.0)
    prev[1, 0] = 0.9
    table = C.composition_table(model, prev, induction).set_index(["layer", "head", "metric"])["value"]
    assert table[3, 1, "n_prev_heads"] == 1
    for route in ("smear", "prev_heads"):
        assert table[3, 1, f"attn_key_{route}"] != pytest.approx(table[3, 1, "attn_clean"], abs=1e-5)
    none = C.composition_table(random_model(smear=False), prev, torch.zeros(n, H))
    assert none.to_dict("records") == [dict(layer=-1, head=-1, metric="n_induction_heads", value=0.0)]


def test_the_smear_route_patches_only_the_term_at_j():
    """With the 'corrupted' token equal to the clean one, every route recomputes the clean key (the smear
    route swaps hook_smear_out's term at j, the term alone, not the smeared embedding)."""
    for arm in ("smear", "dose-2", "keyshift", "smeared-key"):
        model = random_model(arm=arm, smear_lambda=2.0)
        clean, _, m = C.resampled_pairs(512, BOS, 10, batch=6)
        with torch.no_grad():
            keys = C.key_routes(model, clean, clean, m + 2, [1, 3], [(0, 0), (1, 1)])
        for route, by_layer in keys.items():
            for layer in (1, 3):
                torch.testing.assert_close(by_layer[layer], keys["all"][layer], rtol=0, atol=1e-5, msg=f"{arm} {route}")


def test_resampled_pairs_change_one_token():
    clean, corrupt, m = C.resampled_pairs(512, BOS, 10, batch=12)
    diff = (clean != corrupt).nonzero()
    assert diff[:, 0].tolist() == list(range(12)) and diff[:, 1].tolist() == (m + 1).tolist()
    assert (corrupt != BOS).sum() == (clean != BOS).sum() and int(m.max()) == 8


def test_formation_steps_by_hand():
    rows = []
    for step, a, b in [(10, 0.1, 0.0), (20, 0.45, 0.1), (30, 0.3, 0.1), (40, 0.5, 0.25), (50, 0.6, 0.3)]:
        rows += [dict(run="r", preset="tiny", arm="smear", seed=0, step=step, layer=1, head=0, metric="prev_token", value=a),
                 dict(run="r", preset="tiny", arm="smear", seed=0, step=step, layer=3, head=1, metric="induction", value=b)]
    heads = pd.DataFrame(rows)
    out = C.formation_steps(pd.concat([heads, heads])).set_index("kind")  # duplicates (record + analyze) allowed
    assert out.loc["prev_token", ["first_step", "stable_step"]].tolist() == [20, 40]
    assert out.loc["induction", ["first_step", "stable_step", "layer", "head"]].tolist() == [40, 40, 3, 1]
    never = C.formation_steps(heads.assign(value=0.0)).set_index("kind")
    assert math.isnan(never.loc["prev_token", "first_step"]) and never.loc["prev_token", "layer"] == -1
    with pytest.raises(AnalysisError, match="lacks column"):
        C.formation_steps(heads.drop(columns="step"))


def test_readout_figure(tmp_path):
    from analysis.writeup.plots import readout_by_layer, save

    rows = [dict(run=f"tiny-s{s}-{arm}", preset="tiny", arm=arm, seed=s, step=10, layer=l, target=t,
                 metric="above_baseline", value=0.1 * l + (arm == "smear") * 0.05)
            for arm in ("baseline", "smear") for s in range(2) for l in range(5) for t in ("prev", "curr", "prev2")]
    fig = readout_by_layer(pd.DataFrame(rows))
    paths = save(fig, tmp_path, "readout")
    assert len(fig.axes) == 3 and paths[0].stat().st_size > 0 and (tmp_path / "readout.svg").exists()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "final"
    with pytest.raises(AnalysisError, match="no readout table"):
        readout_by_layer(pd.DataFrame())
