"""The model under TransformerLens's own tools: hook names and shapes, run_with_cache, run_with_hooks,
detect_head, activation patching; the TransformerLens protocol (cfg, to_tokens); the attention paths."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformer_lens import ActivationCache, patching
from transformer_lens.head_detector import detect_head

from analysis import probes as P
from analysis.loading import load_checkpoint_model
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


def random_model(tokenizer=None, **changes):
    if tokenizer is not None:
        changes = dict(vocab_size=tokenizer.vocab_size, **changes)
    m = GPT(replace(get_preset("tiny").model, **changes))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    m.tokenizer = tokenizer
    return m.eval()


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
    d, H, D = cfg.d_model, cfg.n_heads, cfg.d_head
    shapes = {"hook_embed": (B, T, d), "hook_smear_gate": (B, T - 1, 1), "hook_smear_out": (B, T, d)}
    for l in range(cfg.n_layers):
        b = f"blocks.{l}."
        shapes |= {b + "hook_resid_pre": (B, T, d), b + "hook_resid_post": (B, T, d)}
        if l not in cfg.no_attn_layers:
            shapes |= {b + f"attn.hook_{n}": (B, T, H, D) for n in ("q", "k", "rot_q", "rot_k", "v", "z")}
            shapes |= {b + "attn.hook_attn_scores": (B, H, T, T), b + "attn.hook_pattern": (B, H, T, T),
                       b + "attn.hook_gate": (B, T, H), b + "hook_attn_out": (B, T, d), b + "hook_resid_mid": (B, T, d)}
        if l not in cfg.no_mlp_layers:
            shapes |= {b + "mlp.hook_pre": (B, T, 4 * d), b + "mlp.hook_post": (B, T, 4 * d), b + "hook_mlp_out": (B, T, d)}
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


def test_unused_hooks_change_nothing():
    model = random_model()
    t = tokens()
    with torch.no_grad():
        plain = model(t)  # the training path: fused attention
        assert torch.equal(model.run_with_hooks(t, fwd_hooks=[]), plain)
        seen = []
        hooked = model.run_with_hooks(t, fwd_hooks=[(lambda n: not n.endswith(("pattern", "scores")),
                                                     lambda x, hook: seen.append(hook.name))])
        assert torch.equal(hooked, plain)  # only pattern/scores hooks switch to the explicit path
        assert len(seen) == len(expected_hooks(model.config, 2, 48)) - 2 * len(model.config.attn_layers())
        cached, _ = model.run_with_cache(t)
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)  # explicit path: same to float rounding
    assert all(not h._forward_hooks for h in model.hook_points())
    attn = model.blocks[0].attn
    assert not attn.wants_pattern()
    attn.hook_pattern.add_hook(lambda x, hook: None)
    assert attn.wants_pattern()
    model.reset_hooks()


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
    monkeypatch.setattr(model_module, "CHUNK_QUERIES", 16)
    with torch.no_grad():
        chunked = model(tokens(), attn_impl="chunked")
        other = model(tokens(), attn_impl=impl)
    torch.testing.assert_close(chunked, other, atol=1e-5, rtol=1e-5)


# ---- detect_head and patching -------------------------------------------------------------------------


def attention_heads(model):
    return {l: list(range(model.config.n_heads)) for l in model.config.attn_layers()}


@pytest.mark.parametrize("weights", ["trained", "random"])
def test_detect_head_equals_previous_token_score(weights, trained, tokenizer):
    model = trained[0] if weights == "trained" else random_model(tokenizer)
    T = model.to_tokens(TEXT).shape[1]
    theirs = detect_head(model, TEXT, "previous_token_head", heads=attention_heads(model))
    ours = P.pattern_metrics(model, model.to_tokens(TEXT))["prev_token"]
    streamed = P.previous_token_scores(model, model.to_tokens(TEXT))
    layers = model.config.attn_layers()
    torch.testing.assert_close(theirs[layers], ours[layers] * (T - 1) / T, atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs[layers], streamed[layers] * (T - 1) / T, atol=1e-5, rtol=0)
    # a layer without attention: TransformerLens leaves its "not evaluated" −1, we report it absent (NaN)
    assert (theirs[2] == -1).all() and torch.isnan(ours[2]).all()
    with pytest.raises(KeyError):  # without heads=, detect_head looks for a pattern in layer 2
        detect_head(model, TEXT, "previous_token_head")


def test_detect_head_other_patterns_run(tokenizer):
    model = random_model(tokenizer)
    text = "one two three four five one two three four five"
    for name in ("duplicate_token_head", "induction_head"):
        scores = detect_head(model, text, name, heads=attention_heads(model))
        assert scores.shape == (4, 2) and ((scores[[0, 1, 3]] >= 0) & (scores[[0, 1, 3]] <= 1)).all()


def test_activation_patching(trained):
    model = trained[0]
    clean, corrupt = tokens(B=1, T=10, seed=1), tokens(B=1, T=10, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    target = int(clean[0, -1])

    def metric(logits):
        return logits[0, -2, target]

    # patch one head's output (hook_z) at all positions, attention layers only (layer 2 has no heads)
    heads = pd.DataFrame([(l, h) for l in model.config.attn_layers() for h in range(2)], columns=["layer", "head"])
    result = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric,
                                                          index_axis_names=None, index_df=heads)
    assert result.shape == (len(heads),)

    def patch(z, hook):
        z = z.clone()
        z[:, :, 1] = clean_cache[hook.name][:, :, 1]
        return z

    with torch.no_grad():
        manual = metric(model.run_with_hooks(corrupt, fwd_hooks=[("blocks.3.attn.hook_z", patch)]))
    torch.testing.assert_close(result[heads.index[(heads["layer"] == 3) & (heads["head"] == 1)][0]], manual)
    # every block has a residual stream: the stock sweep over (layer, pos) runs as it is
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
