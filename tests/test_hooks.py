"""The model under TransformerLens's own tools: hook names and shapes, run_with_cache, run_with_hooks,
detect_head, activation patching; the TransformerLens protocol (cfg, to_tokens); the attention paths."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformer_lens import ActivationCache, patching
from transformer_lens.head_detector import HEAD_NAMES, detect_head

from analysis.measures import probes as P
from analysis.loading import load_checkpoint_model
from trainer import attention
from trainer import model as model_module
from trainer.config import get_preset, replace
from trainer.errors import AnalysisError
from trainer.model import GPT
from trainer.tokenizer import Tokenizer
from trainer.train import make_run, train

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity.")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """A tiny smear checkpoint trained for a few steps on the shared small dataset (conftest.py)."""
    root = tmp_path_factory.mktemp("hooks")
    run = make_run("tiny", get_preset("tiny"), "smear", 0, tiny_data, train_overrides=dict(steps=4, val_every=0))
    train(root / run.name, run, device="cpu", progress=False)
    return load_checkpoint_model(root / run.name)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(tokenizer=None, preset="tiny", **changes):
    if tokenizer is not None:
        changes = dict(vocab_size=tokenizer.vocab_size, **changes)
    m = GPT(replace(get_preset(preset.partition("/")[0]).model, **changes))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    m.tokenizer = tokenizer
    return m.eval()


# Every preset's layout of attention-free and MLP-free layers, at a width a forward takes milliseconds
# at: cpu-small as it is (6 layers, layer 4 without attention), speedrun-124m's 12 layers (layer 7
# without attention, layer 0 without an MLP) at d=64; and cpu-small with a -noattn0 arm (layer 0 empty:
# neither attention nor MLP). The tokenizer is the tiny run's. Keys: preset, or preset/arm.
LAYOUTS = {"tiny": {}, "cpu-small": {}, "speedrun-124m": dict(d_model=64, n_heads=2, d_head=32, bos_id=0),
           "cpu-small/smear-noattn0": dict(arm="smear-noattn0")}


@pytest.fixture(scope="module")
def tokenizer(trained):
    return trained[0].tokenizer


def tokens(B=2, T=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(1, 300, (B, T), generator=gen)
    t[:, 0] = 0
    if T > 20:
        t[0, 20] = 0  # a second document
    return t


def expected_hooks(cfg, B, T):
    """Every layer has every hook, whether or not it has attention or an MLP (see NoAttention, NoMLP)."""
    d, H, D, M = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.mlp_ratio * cfg.d_model
    shapes = {"hook_embed": (B, T, d)}
    if cfg.smear:
        shapes |= {"hook_smear_gate": (B, T - 1, 1), "hook_smear_out": (B, T, d)}
    for l in range(cfg.n_layers):
        b = f"blocks.{l}."
        shapes |= {b + f"hook_{n}": (B, T, d) for n in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")}
        shapes |= {b + f"attn.hook_{n}": (B, T, H, D) for n in ("q", "k", "rot_q", "rot_k", "v", "z")}
        shapes |= {b + "attn.hook_attn_scores": (B, H, T, T), b + "attn.hook_pattern": (B, H, T, T),
                   b + "attn.hook_gate": (B, T, H), b + "mlp.hook_pre": (B, T, M), b + "mlp.hook_post": (B, T, M)}
    return shapes


# ---- run_with_cache / run_with_hooks ------------------------------------------------------------------


def test_run_with_cache_returns_every_named_hook_with_its_shape():
    model = random_model()
    logits, cache = model.run_with_cache(tokens())
    assert isinstance(cache, ActivationCache)
    assert {k: tuple(v.shape) for k, v in cache.cache_dict.items()} == expected_hooks(model.config, 2, 48)
    assert torch.equal(cache["pattern", 1, "attn"], cache["blocks.1.attn.hook_pattern"])  # TransformerLens keys
    assert torch.equal(cache["z", -1], cache["blocks.3.attn.hook_z"])
    torch.testing.assert_close(cache["pattern", 0].sum(-1), torch.ones(2, 2, 48))
    _, single = model.run_with_cache(tokens(B=1), remove_batch_dim=True)
    assert single["pattern", 0].shape == (2, 48, 48)
    baseline = random_model(smear=False)
    _, cache = baseline.run_with_cache(tokens())
    assert not {"hook_smear_gate", "hook_smear_out"} & set(cache.cache_dict)


@pytest.mark.parametrize("preset", LAYOUTS)
def test_missing_sublayers_answer_as_empty_ones(preset, tokenizer):
    """A layer without attention attends nowhere (every key masked: scores −inf, pattern 0, output 0);
    a layer without an MLP adds nothing. Both have every hook, on every preset's layout."""
    model = random_model(tokenizer, preset, **LAYOUTS[preset])
    c, t = model.config, tokens(T=24)
    logits, cache = model.run_with_cache(t)
    assert {k: tuple(v.shape) for k, v in cache.cache_dict.items()} == expected_hooks(c, 2, 24)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(t), atol=1e-5, rtol=1e-5)
    assert c.no_attn_layers and c.no_mlp_layers
    for l in c.attn_free_layers():
        assert (cache["attn_scores", l] == float("-inf")).all()
        for name in ("pattern", "q", "k", "rot_q", "rot_k", "v", "z", "attn_out"):
            assert not cache[name, l].any(), name
        assert not cache[f"blocks.{l}.attn.hook_gate"].any()
        assert torch.equal(cache["resid_mid", l], cache["resid_pre", l])
    for l in c.attn_layers():  # real patterns: every row a distribution
        torch.testing.assert_close(cache["pattern", l].sum(-1), torch.ones(2, c.n_heads, 24))
    for l in c.no_mlp_layers:
        assert not (cache["mlp_out", l].any() or cache["pre", l].any() or cache["post", l].any())
        assert torch.equal(cache["resid_post", l], cache["resid_mid", l])


def test_speedrun_124m_has_every_hook_on_every_layer():
    """The full-size model, built on the meta device (no memory, no init work): hook names only."""
    with torch.device("meta"):
        model = GPT(get_preset("speedrun-124m").model)
    c = model.config
    assert (c.no_attn_layers, c.no_mlp_layers, c.n_layers) == ((7,), (0,), 12)
    assert set(model.hook_dict) == set(expected_hooks(c, 1, 1))
    assert not model.blocks[7].has_attn and not model.blocks[0].has_mlp and model.blocks[7].has_mlp
    assert isinstance(model.blocks[7].attn, model_module.NoAttention) and isinstance(model.blocks[0].mlp, model_module.NoMLP)
    # the stand-ins hold nothing: parameter names are the record's (tests/test_model.py pins the table)
    assert not [n for n, _ in model.named_parameters() if n.startswith(("blocks.7.attn.", "blocks.0.mlp."))]
    assert not [n for n in model.state_dict() if n.startswith(("blocks.7.attn.", "blocks.0.mlp."))]


def test_unused_hooks_change_nothing():
    model = random_model()
    t = tokens()
    # the stand-ins for the missing sublayers are not even called unless one of their hooks is in use
    calls = []
    for stand_in in (model.blocks[2].attn, model.blocks[0].mlp):
        stand_in.register_forward_pre_hook(lambda module, args: calls.append(module))
    with torch.no_grad():
        plain = model(t)  # the training path: fused attention
        assert torch.equal(model.run_with_hooks(t, fwd_hooks=[]), plain)
        model.run_with_hooks(t, fwd_hooks=[("blocks.1.attn.hook_z", lambda x, hook: None)])
        assert calls == []
        seen = []
        hooked = model.run_with_hooks(t, fwd_hooks=[(lambda n: not n.endswith(("pattern", "scores")),
                                                     lambda x, hook: seen.append(hook.name))])
        assert torch.equal(hooked, plain)  # only pattern/scores hooks switch to the explicit path
        assert len(seen) == len(expected_hooks(model.config, 2, 48)) - 2 * model.config.n_layers
        assert len(calls) == 2
        cached, _ = model.run_with_cache(t)
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)  # explicit path: same to float rounding
    assert all(not h._forward_hooks for h in model.hook_points())
    for attn in (model.blocks[0].attn, model.blocks[2].attn):
        assert not attn.wants_pattern()
        attn.hook_pattern.add_hook(lambda x, hook: None)
        assert attn.wants_pattern()
    model.reset_hooks()


def test_edits_reach_the_residual_only_through_a_missing_sublayers_output():
    model = random_model()
    t = tokens()
    delta = torch.randn(64, generator=torch.Generator().manual_seed(3))

    def add(x, hook):
        return x + delta

    def bump(x, hook):
        return x + 1

    with torch.no_grad():
        plain = model(t)
        attn_out = model.run_with_hooks(t, fwd_hooks=[("blocks.2.hook_attn_out", add)])
        assert not torch.allclose(attn_out, plain)
        torch.testing.assert_close(attn_out, model.run_with_hooks(t, fwd_hooks=[("blocks.2.hook_resid_pre", add)]))
        mlp_out = model.run_with_hooks(t, fwd_hooks=[("blocks.0.hook_mlp_out", add)])
        torch.testing.assert_close(mlp_out, model.run_with_hooks(t, fwd_hooks=[("blocks.0.hook_resid_mid", add)]))
        # no W_O, no c_proj: what a hook writes inside a missing sublayer has nowhere to go
        inside = [(f"blocks.2.attn.hook_{n}", bump) for n in ("v", "pattern", "z")] + [("blocks.0.mlp.hook_post", bump)]
        assert torch.equal(model.run_with_hooks(t, fwd_hooks=inside), plain)


def test_run_with_hooks_edits_activations():
    model = random_model()
    t = tokens()

    def kill_layer_1(z, hook):
        return torch.zeros_like(z)

    with torch.no_grad():
        edited = model.run_with_hooks(t, fwd_hooks=[("blocks.1.attn.hook_z", kill_layer_1)])
        w = model.blocks[1].attn.qkvo_w
        saved = w[3].clone()
        w[3].zero_()
        removed = model(t)
        w[3].copy_(saved)
    torch.testing.assert_close(edited, removed)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("impl", ["explicit", "sdpa", "flex"])
def test_chunked_attention_equals_the_other_paths(impl, monkeypatch):
    model = random_model()
    model.set_windows(3, 5)  # 4- to 20-token windows over 48-token rows with two documents
    monkeypatch.setattr(attention, "CHUNK_QUERIES", 16)
    with torch.no_grad():
        chunked = model(tokens(), attn_impl="chunked")
        other = model(tokens(), attn_impl=impl)
    torch.testing.assert_close(chunked, other, atol=1e-5, rtol=1e-5)


# ---- detect_head and patching -------------------------------------------------------------------------


def attention_heads(model):  # the heads= argument that picks the attention layers
    return {l: list(range(model.config.n_heads)) for l in model.config.attn_layers()}


@pytest.mark.parametrize("weights", ["trained", "random"])
def test_detect_head_equals_previous_token_score(weights, trained, tokenizer):
    model = trained[0] if weights == "trained" else random_model(tokenizer)
    T = model.to_tokens(TEXT).shape[1]
    theirs = detect_head(model, TEXT, "previous_token_head")  # the plain call, as a new user makes it
    ours = P.pattern_metrics(model, model.to_tokens(TEXT))["prev_token"]
    streamed = P.previous_token_scores(model, model.to_tokens(TEXT))
    layers = model.config.attn_layers()
    torch.testing.assert_close(theirs[layers], ours[layers] * (T - 1) / T, atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs[layers], streamed[layers] * (T - 1) / T, atol=1e-5, rtol=0)
    # layer 2 attends nowhere: TransformerLens's score (attention on the pattern / all attention) is
    # 0/0 there, NaN, as in our own tables; heads= still leaves "not evaluated" at −1
    assert torch.isnan(theirs[2]).all() and torch.isnan(ours[2]).all() and torch.isnan(streamed[2]).all()
    chosen = detect_head(model, TEXT, "previous_token_head", heads=attention_heads(model))
    assert torch.equal(chosen[layers], theirs[layers]) and (chosen[2] == -1).all()


@pytest.mark.parametrize("preset", LAYOUTS)
def test_detect_head_plain_calls_on_every_layout(preset, tokenizer):
    model = random_model(tokenizer, preset, **LAYOUTS[preset])
    c = model.config
    text = "one two three four five one two three four five"
    T = model.to_tokens(text).shape[1]
    for name in HEAD_NAMES:
        scores = detect_head(model, text, name)
        assert scores.shape == (c.n_layers, c.n_heads), name
        assert torch.isnan(scores[list(c.attn_free_layers())]).all(), name
        real = scores[c.attn_layers()]
        assert ((real >= 0) & (real <= 1)).all(), name
        assert torch.equal(real, detect_head(model, text, name, heads=attention_heads(model))[c.attn_layers()]), name
    # the "abs" measure compares the empty pattern with the detection pattern's T−1 ones: 1 − (T−1)/T
    scores = detect_head(model, text, "previous_token_head", error_measure="abs")
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(scores[list(c.attn_free_layers())],
                               torch.full((len(c.attn_free_layers()), c.n_heads), 1 - round((T - 1) / T, 3),
                                          dtype=scores.dtype))


def test_activation_patching(trained):
    model = trained[0]
    clean, corrupt = tokens(B=1, T=10, seed=1), tokens(B=1, T=10, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    target = int(clean[0, -1])

    def metric(logits):
        return logits[0, -2, target]

    with torch.no_grad():
        corrupted = metric(model(corrupt))
    # patch each head's output (hook_z) at all positions: the plain call sweeps every layer and head
    result = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric)
    assert result.shape == (4, 2)
    assert torch.equal(result[2], corrupted.expand(2))  # layer 2 has no heads: patching it changes nothing

    def patch(z, hook):
        z = z.clone()
        z[:, :, 1] = clean_cache[hook.name][:, :, 1]
        return z

    with torch.no_grad():
        manual = metric(model.run_with_hooks(corrupt, fwd_hooks=[("blocks.3.attn.hook_z", patch)]))
    torch.testing.assert_close(result[3, 1], manual)
    heads = pd.DataFrame([(l, h) for l in model.config.attn_layers() for h in range(2)], columns=["layer", "head"])
    chosen = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric,
                                                          index_axis_names=None, index_df=heads)
    torch.testing.assert_close(chosen, result[heads["layer"].tolist(), heads["head"].tolist()])
    resid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
    assert resid.shape == (4, 10)

    def patch_resid(x, hook):
        x = x.clone()
        x[:, 5] = clean_cache[hook.name][:, 5]
        return x

    with torch.no_grad():
        manual = metric(model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_pre", patch_resid)]))
    torch.testing.assert_close(resid[1, 5], manual)
    same = patching.get_act_patch_resid_pre(model, clean, clean_cache, metric)  # clean into clean: no effect
    torch.testing.assert_close(same, metric(model(clean)).expand(4, 10).detach(), atol=1e-5, rtol=0)
    # the stock sweeps over every block: layer 2's attention and layer 0's MLP write nothing to patch
    block = patching.get_act_patch_block_every(model, corrupt, clean_cache, metric)
    assert block.shape == (3, 4, 10)
    torch.testing.assert_close(block[0], resid)
    assert torch.equal(block[1, 2], corrupted.expand(10)) and torch.equal(block[2, 0], corrupted.expand(10))


@pytest.mark.parametrize("preset", LAYOUTS)
def test_patching_sweeps_plain_calls_on_every_layout(preset, tokenizer):
    model = random_model(tokenizer, preset, **LAYOUTS[preset])
    c = model.config
    clean, corrupt = tokens(B=1, T=4, seed=1), tokens(B=1, T=4, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    target = int(clean[0, -1])

    def metric(logits):
        return logits[0, -2, target]

    with torch.no_grad():
        corrupted = metric(model(corrupt))
    heads = patching.get_act_patch_attn_head_all_pos_every(model, corrupt, clean_cache, metric)
    assert heads.shape == (5, c.n_layers, c.n_heads)  # out, q, k, v, pattern
    for l in c.attn_free_layers():
        assert torch.equal(heads[:, l], corrupted.expand(5, c.n_heads))
    assert not torch.equal(heads[0, c.attn_layers()], corrupted.expand(len(c.attn_layers()), c.n_heads))
    block = patching.get_act_patch_block_every(model, corrupt, clean_cache, metric)
    assert block.shape == (3, c.n_layers, 4)
    for l in c.attn_free_layers():
        assert torch.equal(block[1, l], corrupted.expand(4))
    for l in c.no_mlp_layers:
        assert torch.equal(block[2, l], corrupted.expand(4))
    mid = patching.get_act_patch_resid_mid(model, corrupt, clean_cache, metric)
    for l in c.attn_free_layers():  # resid_mid of an attention-free layer is its resid_pre
        torch.testing.assert_close(mid[l], block[0, l])


# ---- the TransformerLens protocol ---------------------------------------------------------------------


def test_cfg_follows_the_model():
    model = random_model()
    cfg = model.cfg
    c = model.config
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_vocab) == (4, 2, 32, 64, c.padded_vocab)
    assert cfg.n_ctx == model_module.N_CTX and cfg.default_prepend_bos and not cfg.tokenizer_prepends_bos
    assert cfg.device == torch.device("cpu") and cfg.dtype == torch.float32
    assert model.double().cfg.dtype == torch.float64
    assert model.config is c  # our own config stays as it was


def test_to_tokens_and_str_tokens(tokenizer):
    model = random_model(tokenizer)
    t = model.to_tokens(TEXT)
    assert t.dtype == torch.long and t[0, 0] == 0 and t.shape[1] == len(tokenizer.encode(TEXT)) + 1
    assert torch.equal(model.to_tokens(TEXT, prepend_bos=False), t[:, 1:])
    batch = model.to_tokens(["a cat", TEXT])
    n = len(tokenizer.encode("a cat")) + 1
    assert batch.shape == (2, t.shape[1]) and (batch[0, n:] == 0).all()  # padded with BOS: one-token documents
    with torch.no_grad():  # the padding is invisible to the real tokens
        torch.testing.assert_close(model(batch)[1], model(t)[0])
        torch.testing.assert_close(model(batch)[0, :n], model(batch[:1, :n])[0])
    strs = model.to_str_tokens(TEXT)
    assert strs[0] == "<|endoftext|>" and "".join(strs[1:]) == TEXT
    assert model.to_str_tokens(t) == strs and model.to_str_tokens(["a", "b"]) == [["<|endoftext|>", "a"], ["<|endoftext|>", "b"]]
    assert model.to_string(t[0, 1:]) == TEXT
    with torch.no_grad():
        torch.testing.assert_close(model(TEXT), model(t))


def test_tokenizer_errors(tokenizer):
    with pytest.raises(AnalysisError, match="no tokenizer attached"):
        random_model().to_tokens(TEXT)
    other = random_model(vocab_size=400)
    other.tokenizer = tokenizer
    with pytest.raises(AnalysisError, match="does not match the model"):
        other.to_tokens(TEXT)


def test_context_limits_only_materialised_patterns():
    model = random_model()
    model.cfg.n_ctx = 32
    t = tokens(T=48)
    with torch.no_grad():
        model(t)  # fused: any length
        model(t, attn_impl="chunked")
        P.previous_token_scores(model, t)  # streaming: any length
    with pytest.raises(AnalysisError, match="48 tokens is longer than the model's context n_ctx = 32"):
        model.run_with_cache(t)
    with pytest.raises(AnalysisError, match="n_ctx = 32"):
        model(t, attn_impl="explicit")
    assert all(not h._forward_hooks for h in model.hook_points())


def test_loaded_checkpoint_carries_its_tokenizer(trained):
    model, meta = trained
    assert isinstance(model.tokenizer, Tokenizer) and model.tokenizer.vocab_size == model.config.vocab_size
    assert not model.training and meta["arm"] == "smear" and meta["step"] == 4
    assert Path(meta["path"]).name == "step_000004"
