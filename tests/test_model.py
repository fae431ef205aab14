import pytest
import torch

from trainer.config import PRESETS, ModelConfig, get_preset, replace
from trainer.errors import ConfigError
from trainer.model import GPT, count_parameters


def record_parameter_table() -> dict[str, tuple[int, ...]]:
    """The 2025-09-18 record's state dict (without `_orig_mod.`), written from its model code:
    12 blocks, no attention in block 7, no MLP in block 0, vocab padded to 50304."""
    V, d = 50304, 768
    table = {"embed.weight": (V, d), "lm_head.weight": (V, d), "scalars": (72,), "smear_gate.weight": (1, 12)}
    table.update({f"value_embeds.{i}.weight": (V, d) for i in range(3)})
    for i in range(12):
        if i != 7:
            table[f"blocks.{i}.attn.qkvo_w"] = (4, d, d)
            table[f"blocks.{i}.attn.attn_gate.weight"] = (6, 12)
        if i != 0:
            table[f"blocks.{i}.mlp.c_fc"] = (d, 4 * d)
            table[f"blocks.{i}.mlp.c_proj"] = (d, 4 * d)
    return table


def randomize(model: GPT, seed: int = 0) -> GPT:
    """Give every zero-initialised weight a value, so that each path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def tiny_tokens(B=2, T=64, vocab=512, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(1, vocab, (B, T), generator=gen)
    t[:, 0] = 0  # BOS
    t[0, 23] = 0  # a second document in the first row
    t[-1, T // 2 + 8] = 0
    return t


@pytest.fixture(scope="module")
def speedrun_model():
    with torch.device("meta"):  # shapes only: 271M parameters need no memory
        return GPT(get_preset("speedrun-124m").model)


def test_speedrun_parameter_names_and_shapes_match_record(speedrun_model):
    ours = {n: tuple(p.shape) for n, p in speedrun_model.named_parameters()}
    assert ours == record_parameter_table()
    # our extra state is YaRN's and the window schedule's, as buffers (the record recomputes them)
    assert set(speedrun_model.state_dict()) - set(ours) == {"yarn.angular_freq", "yarn.attn_scale", "window_blocks"}


def test_speedrun_parameter_count(speedrun_model):
    # every parameter, counting the 72 scalars (no padding needed for 8 ranks: 72 % 8 == 0) and the smear gate
    assert count_parameters(speedrun_model) == 271_025_004
    with torch.device("meta"):
        baseline = GPT(replace(get_preset("speedrun-124m").model, smear=False))
    assert count_parameters(baseline) == 271_025_004 - 12


def test_scalars_padding_for_eight_ranks():
    cfg = replace(get_preset("tiny").model, n_layers=6)  # 36 scalars → padded to 40
    assert cfg.n_scalars == 40
    model = GPT(cfg)
    assert torch.equal(model.scalars[36:], torch.ones(4))


@pytest.mark.parametrize("preset", ["tiny", "cpu-small"])
def test_fast_and_explicit_attention_agree(preset):
    cfg = replace(get_preset(preset).model, vocab_size=512)
    model = randomize(GPT(cfg))
    model.set_windows(3, 5)
    tokens = tiny_tokens(T=cfg.block_size * 16)  # windows (3 and 5 blocks) shorter than the row
    with torch.no_grad():
        explicit = model(tokens, attn_impl="explicit")
        sdpa = model(tokens, attn_impl="sdpa")
        flex = model(tokens, attn_impl="flex")
    # logits reach 30 (softcap): agreement to 1e-5 relative, i.e. float32 rounding
    torch.testing.assert_close(sdpa, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex, explicit, atol=1e-5, rtol=1e-5)


def test_gradients_of_fast_and_explicit_paths_agree():
    model = randomize(GPT(get_preset("tiny").model))
    tokens = tiny_tokens()
    grads = []
    for impl in ("explicit", "sdpa"):
        model.zero_grad()
        model(tokens[:, :-1], tokens[:, 1:], return_type="loss", attn_impl=impl).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_smear_with_zero_lambda_equals_baseline():
    cfg = get_preset("tiny").model
    smear, base = randomize(GPT(cfg)), GPT(replace(cfg, smear=False))
    shared = {k: v for k, v in smear.state_dict().items() if not k.startswith("smear_gate")}
    base.load_state_dict(shared)
    with torch.no_grad():
        smear.scalars[5 * cfg.n_layers] = 0.0  # λ = 0, gate weights random
        assert smear.smear_gate.weight.abs().sum() > 0
        tokens = tiny_tokens()
        torch.testing.assert_close(smear(tokens), base(tokens), atol=0, rtol=0)
        smear.scalars[5 * cfg.n_layers] = 0.5
        assert not torch.allclose(smear(tokens), base(tokens))


def test_paired_arms_start_with_identical_shared_weights():
    cfg = get_preset("tiny").model
    smear, base = GPT(cfg, seed=7), GPT(replace(cfg, smear=False), seed=7)
    s, b = smear.state_dict(), base.state_dict()
    assert set(s) - set(b) == {"smear_gate.weight"}
    for name, tensor in b.items():
        assert torch.equal(tensor, s[name]), name
    other = GPT(cfg, seed=8).state_dict()
    assert not torch.equal(other["embed.weight"], s["embed.weight"])


def test_documents_do_not_see_each_other():
    cfg = replace(get_preset("tiny").model, smear=False)  # the smear alone crosses a BOS, by design
    model = randomize(GPT(cfg))
    tokens = tiny_tokens(B=1)
    changed = tokens.clone()
    changed[0, 1:23] = torch.randint(1, 512, (22,))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[0, 23:], b[0, 23:], atol=1e-6, rtol=0)
    assert not torch.allclose(a[0, 1:23], b[0, 1:23])


def test_window_limits_attention():
    cfg = replace(get_preset("tiny").model, smear=False, no_attn_layers=())
    model = randomize(GPT(cfg))
    tokens = tiny_tokens(B=1)
    tokens[0, 1:] = torch.randint(1, 512, (63,))  # one document
    cache = {}
    model.blocks[1].attn.hook_pattern.add_hook(lambda t, hook: cache.setdefault("p", t))
    with torch.no_grad():
        model(tokens)
    model.reset_hooks()
    window = model.layer_windows()[1]
    pattern = cache["p"][0, 0]
    offsets = torch.arange(64)[:, None] - torch.arange(64)[None, :]
    assert pattern[(offsets > window) | (offsets < 0)].abs().max() == 0
    torch.testing.assert_close(pattern.sum(-1), torch.ones(64))


def test_yarn_extends_on_window_growth_only():
    model = GPT(get_preset("tiny").model)
    freq0, scale0 = model.yarn.angular_freq.clone(), float(model.yarn.attn_scale)
    model.set_windows(3)
    assert torch.equal(model.yarn.angular_freq, freq0)
    model.set_windows(7)
    assert float(model.yarn.attn_scale) == pytest.approx(scale0 * (0.2 * torch.log(torch.tensor(7 / 3)).item() + 1))
    assert (model.yarn.angular_freq <= freq0).all() and (model.yarn.angular_freq < freq0).any()
    with pytest.raises(ValueError, match="only grow"):
        model.set_windows(3)


def test_yarn_keeps_the_records_fast_frequencies_at_any_block_size():
    # the record keeps frequencies that turn ≥ 32 times over a window of 128-token blocks; a small
    # preset's shorter blocks must not make YaRN stretch the previous-token frequency (1 rad/token)
    small = GPT(get_preset("tiny").model)
    record_blocks = GPT(replace(get_preset("tiny").model, block_size=128))
    freq0 = small.yarn.angular_freq.clone()
    for model in (small, record_blocks):
        model.set_windows(3)
        model.set_windows(7)
        model.set_windows(11)
    torch.testing.assert_close(small.yarn.angular_freq, record_blocks.yarn.angular_freq, rtol=0, atol=0)
    assert small.yarn.angular_freq[0] == freq0[0] == 1.0
    assert (small.yarn.angular_freq[1:] <= freq0[1:]).all()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_heads=3), "n_heads × d_head"),
        (dict(n_layers=5), "even number of layers"),
        (dict(no_attn_layers=(9,)), "outside"),
        (dict(vocab_size=70000), "uint16"),
    ],
)
def test_inconsistent_config_is_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        replace(get_preset("tiny").model, **changes)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*speedrun-124m"):
        get_preset("huge")


def test_model_config_default_is_the_record():
    cfg = ModelConfig()
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.padded_vocab) == (12, 768, 6, 128, 50304)
    assert cfg.attn_scale * cfg.d_head == pytest.approx(12.8)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_min_parameters_is_a_tight_lower_bound(preset):
    """What a checkpoint loader compares with the weights file before building a model (trainer/checkpoint.py)."""
    from trainer.model import min_parameters

    config = PRESETS[preset].model
    with torch.device("meta"):
        actual = count_parameters(GPT(config))
    assert 0.99 * actual <= min_parameters(config) <= actual
