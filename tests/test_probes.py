"""Metrics pinned on hand-built attention patterns with exactly known scores, and the probes that
run a model checked against them."""

import math

import pytest
import torch

from analysis.measures import metrics as M
from analysis.measures import probes as P
from trainer import attention
from trainer.config import get_preset, replace
from trainer.errors import AnalysisError
from trainer.model import GPT, dense_mask

T = 12


def one_doc(T=T, B=1):
    return torch.zeros(B, T, dtype=torch.long)


pytestmark = pytest.mark.usefixtures("one_thread")


def previous_token_pattern(T=T):
    """Row 0 on itself, every other row entirely on i−1."""
    p = torch.zeros(1, 1, T, T)
    p[0, 0, 0, 0] = 1
    p[0, 0, torch.arange(1, T), torch.arange(T - 1)] = 1
    return p


def uniform_pattern(docs):
    """Uniform attention over every visible key (causal, same document)."""
    mask = dense_mask(docs, docs.size(1)).float()  # (B, 1, T, T)
    return mask / mask.sum(-1, keepdim=True)


# ---- previous-token, entropy, distance, BOS on hand-built patterns ----------------------------------


def test_perfect_previous_token_head():
    p, docs = previous_token_pattern(), one_doc()
    assert M.previous_token_score(p, docs).item() == 1.0
    assert M.attention_entropy(p, docs).item() == 0.0
    assert M.attention_distance(p, docs).item() == 1.0
    # only position 1's previous token is the BOS: 1 of the T−1 counted rows
    assert M.bos_attention(p, docs).item() == pytest.approx(1 / (T - 1))


def test_uniform_causal_attention():
    docs = one_doc()
    p = uniform_pattern(docs)
    i = torch.arange(2, T + 1, dtype=torch.float64)  # row i (1-based) spreads over i keys; rows 2..T counted
    assert M.previous_token_score(p, docs).item() == pytest.approx((1 / i).mean().item(), abs=1e-7)
    assert M.attention_entropy(p, docs).item() == pytest.approx(i.log().mean().item(), abs=1e-6)
    assert M.attention_distance(p, docs).item() == pytest.approx(((i - 1) / 2).mean().item(), abs=1e-6)
    assert M.bos_attention(p, docs).item() == pytest.approx((1 / i).mean().item(), abs=1e-7)


def test_self_attention_scores_zero():
    p, docs = torch.eye(T)[None, None], one_doc()
    for fn in (M.previous_token_score, M.attention_entropy, M.attention_distance, M.bos_attention):
        assert fn(p, docs).item() == 0.0


def test_documents_restart_the_count():
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])  # a BOS at position 3
    p = uniform_pattern(docs)
    # counted: positions 1, 2 (doc 0, local index 1, 2) and 4..7 (doc 1, local index 1..4)
    local = torch.tensor([1, 2, 1, 2, 3, 4], dtype=torch.float64)
    assert M.previous_token_score(p, docs).item() == pytest.approx((1 / (local + 1)).mean().item(), abs=1e-7)
    assert M.attention_distance(p, docs).item() == pytest.approx((local / 2).mean().item(), abs=1e-6)
    assert M.bos_attention(p, docs).item() == pytest.approx((1 / (local + 1)).mean().item(), abs=1e-7)
    assert M.document_starts(docs).tolist() == [[0, 0, 0, 3, 3, 3, 3, 3]]
    assert M.document_ids(torch.tensor([[5, 1, 5, 2]]), bos_id=5).tolist() == [[1, 1, 2, 2]]


def test_batch_pools_counted_positions_and_heads_are_separate():
    docs = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])  # 3 counted positions, then 2
    prev = torch.stack([previous_token_pattern(4)[0, 0]] * 2)[:, None]  # scores 1 everywhere
    selfish = torch.eye(4).expand(2, 1, 4, 4)  # scores 0 everywhere
    p = torch.cat([prev, selfish], dim=1)  # two heads
    assert M.previous_token_score(p, docs).tolist() == [1.0, 0.0]
    mixed = torch.stack([previous_token_pattern(4)[0, 0], torch.eye(4)])[:, None]  # row 0 perfect, row 1 not
    assert M.previous_token_score(mixed, docs).item() == pytest.approx(3 / 5)
    # an unbatched (H, T, T) pattern with (T,) documents works too
    assert M.previous_token_score(prev[0], docs[0]).item() == 1.0


def test_induction_and_duplicate_token_on_repeated_sequence():
    n = 5
    Tr = 2 * n + 1  # BOS + R + R
    induction, duplicate = torch.zeros(1, 1, Tr, Tr), torch.zeros(1, 1, Tr, Tr)
    for i in range(Tr):
        induction[0, 0, i, i - n + 1 if i > n else 0] = 1  # second copy: the token after the last occurrence
        duplicate[0, 0, i, i - n if i > n else 0] = 1  # second copy: the last occurrence itself
    assert M.induction_score(induction, n).item() == 1.0
    assert M.duplicate_token_score(induction, n).item() == 0.0
    assert M.duplicate_token_score(duplicate, n).item() == 1.0
    assert M.induction_score(duplicate, n).item() == 0.0
    uniform = uniform_pattern(one_doc(Tr))
    second = torch.arange(n + 1, Tr, dtype=torch.float64)
    assert M.induction_score(uniform, n).item() == pytest.approx((1 / (second + 1)).mean().item(), abs=1e-7)
    with pytest.raises(AnalysisError, match="not BOS"):
        M.induction_score(uniform, n + 1)


def test_repeated_tokens_layout():
    t = P.repeated_tokens(vocab_size=10, bos_id=3, period=6, batch=4, seed=1)
    assert t.shape == (4, 13) and (t[:, 0] == 3).all()
    assert torch.equal(t[:, 1:7], t[:, 7:]) and not (t[:, 1:] == 3).any()
    assert t.max() < 10 and torch.equal(t, P.repeated_tokens(10, 3, 6, 4, seed=1))


# ---- streaming previous-token score ------------------------------------------------------------------


def explicit_pattern(q, k, docs, window, scale):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    return scores.masked_fill(~dense_mask(docs, window), float("-inf")).softmax(-1)


@pytest.mark.parametrize("window, chunk", [(100, None), (100, 5), (7, 3), (1, 4), (0, 8)])
def test_streaming_equals_pattern_on_random_qk(window, chunk):
    gen = torch.Generator().manual_seed(0)
    B, Tq, H, D = 2, 40, 3, 8
    q, k = torch.randn(B, Tq, H, D, generator=gen), torch.randn(B, Tq, H, D, generator=gen)
    tokens = torch.randint(1, 9, (B, Tq), generator=gen)
    tokens[:, 0], tokens[0, 17], tokens[1, 30] = 0, 0, 0
    docs = M.document_ids(tokens, 0)
    pattern = explicit_pattern(q, k, docs, window, 0.7)
    expected = M.previous_token_score(pattern, docs)
    got = M.previous_token_score_qk(q, k, docs, window, 0.7, chunk)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    probs = M.previous_token_probs_qk(q, k, docs, window, 0.7, chunk)
    torch.testing.assert_close(probs[..., 1:], pattern.diagonal(-1, -2, -1) * (docs[:, 1:] == docs[:, :-1])[:, None],
                               atol=1e-6, rtol=0)


def randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def multi_doc_tokens(B=2, Tt=64, vocab=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(1, vocab, (B, Tt), generator=gen)
    t[:, 0], t[0, 23], t[-1, 40] = 0, 0, 0
    return t


@pytest.fixture(scope="module")
def model():
    m = randomize(GPT(get_preset("tiny").model))
    m.set_windows(3, 5)  # windows of 4–20 tokens, shorter than the 64-token rows
    return m.eval()


def test_streaming_probe_equals_pattern_probe_on_model(model, monkeypatch):
    tokens = multi_doc_tokens()
    pattern = P.pattern_metrics(model, tokens)["prev_token"]
    monkeypatch.setattr(attention, "CHUNK_QUERIES", 16)  # several chunks per row, in attention and the probe
    for impl in ("chunked", "sdpa", "explicit"):
        stream = P.streaming_probe(model, tokens, attn_impl=impl)
        torch.testing.assert_close(stream.prev_token, pattern, atol=1e-5, rtol=0, equal_nan=True)
    assert torch.isnan(pattern[2]).all() and not torch.isnan(pattern[[0, 1, 3]]).any()  # layer 2 has no attention


def test_probes_leave_model_as_found(model):
    model.train()
    P.previous_token_scores(model, multi_doc_tokens())
    P.pattern_metrics(model, multi_doc_tokens())
    assert model.training and all(not h._forward_hooks for h in model.hook_points())
    model.eval()


def test_pattern_metrics_match_cached_patterns(model):
    tokens = multi_doc_tokens()
    _, cache = model.run_with_cache(tokens)
    docs = M.document_ids(tokens, 0)
    got = P.pattern_metrics(model, tokens)
    for l in model.config.attn_layers():
        pattern = cache["pattern", l]
        for name, fn in P.PATTERN_METRICS.items():
            torch.testing.assert_close(got[name][l], fn(pattern, docs), atol=1e-6, rtol=0)
    pooled = P.data_pattern_metrics(model, [tokens[:1], tokens[1:]])
    torch.testing.assert_close(pooled["prev_token"], got["prev_token"], atol=1e-6, rtol=0, equal_nan=True)


def test_repeat_metrics_on_model(model):
    period = P.induction_period(model)
    assert period == min(w for l, w in enumerate(model.layer_windows()) if l in model.config.attn_layers())
    tokens = P.repeated_tokens(512, 0, period)
    _, cache = model.run_with_cache(tokens)
    got = P.repeat_metrics(model)
    for l in model.config.attn_layers():
        torch.testing.assert_close(got["induction"][l], M.induction_score(cache["pattern", l], period))
        torch.testing.assert_close(got["duplicate_token"][l], M.duplicate_token_score(cache["pattern", l], period))


# ---- ablation -----------------------------------------------------------------------------------------


def test_zero_ablation_equals_removing_the_heads_output_columns(model):
    tokens = multi_doc_tokens()
    batches = [(tokens[:, :-1], tokens[:, 1:])]
    result = P.ablation_losses(model, batches)
    clean = P.mean_loss(model, batches)
    layer, head, D = 1, 1, model.config.d_head
    w = model.blocks[layer].attn.qkvo_w
    saved = w.detach().clone()
    with torch.no_grad():
        w[3][:, head * D:(head + 1) * D] = 0  # W_O's input columns of that head
    removed = P.mean_loss(model, batches)
    with torch.no_grad():
        w.copy_(saved)
    assert result["zero"][layer, head].item() == pytest.approx(removed - clean, abs=1e-5)
    assert torch.isnan(result["zero"][2]).all() and torch.isnan(result["mean"][2]).all()
    assert not torch.isnan(result["mean"][[0, 1, 3]]).any()


def test_mean_ablation_replaces_z_by_its_data_mean(model):
    tokens = multi_doc_tokens()
    batches = [(tokens[:, :-1], tokens[:, 1:])]
    _, cache = model.run_with_cache(batches[0][0])
    layer, head = 3, 0
    mean = cache["z", layer][:, :, head].mean(dim=(0, 1))

    def patch(z, hook):
        z = z.clone()
        z[:, :, head] = mean
        return z

    with torch.no_grad():
        ablated = float(model.run_with_hooks(*batches[0], return_type="loss",
                                             fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)]))
    got = P.ablation_losses(model, batches, kinds=("mean",))["mean"][layer, head].item()
    assert got == pytest.approx(ablated - P.mean_loss(model, batches), abs=1e-5)


def test_fresh_model_heads_do_nothing():
    m = GPT(get_preset("tiny").model)  # output projections start at zero
    tokens = multi_doc_tokens()
    result = P.ablation_losses(m, [(tokens[:, :-1], tokens[:, 1:])])
    assert (result["zero"][[0, 1, 3]] == 0).all() and (result["mean"][[0, 1, 3]] == 0).all()


# ---- smear --------------------------------------------------------------------------------------------


def test_smear_vocab_gates_and_coefficients_by_hand():
    E = torch.zeros(6, 16)
    E[:, 0] = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5, 9.0])
    w = torch.zeros(1, 12)
    w[0, 0] = 2.0
    gate = M.smear_vocab_gates(E, w, vocab_size=5)  # the padded row 5 is not a token
    torch.testing.assert_close(gate, torch.sigmoid(torch.tensor([0.0, 2.0, -2.0, 4.0, 1.0])))
    torch.testing.assert_close(M.smear_coefficients(0.25, gate), 0.25 * gate)
    assert M.smear_vocab_gates(torch.zeros(4, 16), torch.zeros(1, 12), 4).tolist() == [0.5] * 4  # zero-init: σ(0)


def test_summary_stats_by_hand():
    s = M.summary_stats(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert s == pytest.approx({"mean": 2.5, "std": math.sqrt(1.25), "p05": 1.15, "p50": 2.5, "p95": 3.85})
    with pytest.raises(AnalysisError, match="no values"):
        M.summary_stats(torch.tensor([]))


def test_smear_probes_agree_with_the_weights(model):
    tokens = multi_doc_tokens()
    gates = P.smear_gates(model, tokens)
    w = model.smear_gate.weight.detach()
    expected = torch.sigmoid(model.embed.weight.detach()[tokens[:, 1:], :12] @ w[0])
    torch.testing.assert_close(gates, expected)
    vocab_gate, vocab_coef = P.smear_vocab(model)
    assert vocab_gate.shape == (model.config.vocab_size,)
    torch.testing.assert_close(vocab_gate[tokens[:, 1:]], gates)  # the gate is a function of the token id
    torch.testing.assert_close(vocab_coef, P.smear_lambda(model) * vocab_gate)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["hook_smear_gate"][..., 0], gates)
    assert P.streaming_probe(model, tokens).smear_gate.shape == (2, 63)


def test_baseline_model_has_no_smear():
    m = GPT(replace(get_preset("tiny").model, smear=False))
    assert P.streaming_probe(m, multi_doc_tokens()).smear_gate is None
    with pytest.raises(AnalysisError, match="no smear gate"):
        P.smear_vocab(m)


# ---- bad input ----------------------------------------------------------------------------------------


def test_bad_input_errors(model):
    with pytest.raises(AnalysisError, match="unknown metric 'attention_sink'"):
        P.check_metrics(["prev_token", "attention_sink"])
    with pytest.raises(AnalysisError, match="unknown pattern metric 'induction'"):
        P.pattern_metrics(model, multi_doc_tokens(), ["induction"])
    with pytest.raises(AnalysisError, match="does not fit"):
        M.previous_token_score(torch.zeros(1, 1, 4, 4), one_doc(5))
    with pytest.raises(AnalysisError, match="no query position"):
        M.previous_token_score(torch.ones(1, 1, 3, 3), torch.tensor([[0, 1, 2]]))
    with pytest.raises(AnalysisError, match="outside the model's vocabulary"):
        P.previous_token_scores(model, torch.tensor([[0, 5, 512]]))
    with pytest.raises(AnalysisError, match="T ≥ 2"):
        P.previous_token_scores(model, torch.tensor([[0]]))
    with pytest.raises(AnalysisError, match="unknown ablation"):
        P.ablation_losses(model, [(torch.tensor([[0, 1]]), torch.tensor([[1, 2]]))], kinds=("half",))
