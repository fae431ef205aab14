"""Arms (trainer/arms.py): each variant's mixing term read through its hooks, step-0 equality with the
baseline, shared initial weights and data order, λ's learning-rate multiple, the CLI and old configs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from commands.cli import main as cli_main
from trainer import checkpoint as ckpt
from trainer.arms import ARMS, PATTERNS, arm_spec
from trainer.config import GATE_DIM, ModelConfig, from_dict, get_preset, replace, to_dict
from trainer.errors import ConfigError
from trainer.model import GPT, NoAttention, count_parameters, min_parameters
from trainer.optim import adam_step, build_optimizers
from trainer.train import make_run, train

TINY = get_preset("tiny").model
# issue 25: the 2×2 {smear or not} × {layer-0 attention or not} (record #131), and a few more suffixed arms
NOATTN0 = ["baseline-noattn0", "smear-noattn0", "dose-0.8-noattn0"]
ZERO_INIT = ([a for a in ARMS if a != "baseline" and ARMS[a].starts_as_baseline]  # all but keyshift; doses do not
             + ["smear-noattn0", "canon4-noattn0", "smeared-key-noattn0"])
ALL = list(ARMS) + ["dose-0.8"]
KEY_SMEAR = {f"blocks.{l}.attn.key_smear" for l in TINY.attn_layers()}
ARM_PARAMS = {"baseline": set(), "smear-mtp": set(), "dose-0.8": set(), "canon4": {"canon_w"}, "smear-nogate": set(),
              "keyshift": set(), "smeared-key": KEY_SMEAR}


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def cfg(arm: str) -> ModelConfig:
    return replace(TINY, arm=arm)


def reference(arm: str) -> str:
    """The baseline an arm starts as: `baseline`, or `baseline-noattn0` for a -noattn0 arm."""
    return "baseline-noattn0" if arm_spec(arm).no_attn0 else "baseline"


def tokens(B=2, T=64, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(1, TINY.vocab_size, (B, T), generator=gen)
    t[:, 0] = 0  # BOS (the tiny preset's bos_id)
    t[0, 23] = t[1, 40] = t[1, 41] = 0  # documents starting mid-row, one of them empty
    return t


def hooked(model: GPT, t: torch.Tensor, names=("hook_embed", "hook_smear_gate", "hook_smear_out")) -> tuple:
    with torch.no_grad():
        logits, cache = model.run_with_cache(t, names_filter=lambda n: n in names or n.endswith("resid_post")
                                             or n == "blocks.0.hook_resid_pre")
    return logits, cache


def randomize_shared(model: GPT, seed: int = 0) -> GPT:
    """Give every weight a value drawn from (seed, name), the same in every arm; then put λ, the
    canon weights and the key smears back at their initial zeros, so the arm still starts as the baseline."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            gen = torch.Generator().manual_seed(seed + len(name) * 7919 + sum(map(ord, name)))
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
            if name == "canon_w" or name.endswith(".key_smear"):
                p.zero_()
        model.scalars[5 * model.config.n_layers] = 0.0
    return model


# ---- the fixed dose: exactly c · e[i−1], nothing at a BOS -------------------------------------------------


def check_dose(model: GPT, c: float) -> None:
    t = tokens()
    _, cache = hooked(model, t)
    e, term, gate = cache["hook_embed"], cache["hook_smear_out"], cache["hook_smear_gate"]
    not_bos = t[:, 1:] != model.config.bos_id
    assert torch.equal(gate[..., 0], not_bos.float())
    assert torch.equal(term[:, 0], torch.zeros_like(term[:, 0]))  # nothing before the first token
    assert torch.equal(term[:, 1:][not_bos], (c * e[:, :-1])[not_bos])  # exactly c · e[i−1]
    assert torch.equal(term[:, 1:][~not_bos], torch.zeros_like(term[:, 1:][~not_bos]))  # nothing at a BOS
    assert int((~not_bos).sum()) == 3 and float(model.smear_lambda) == pytest.approx(c)
    # and that term is what the residual stream starts from: x = x0 = norm(e + term)
    x, x0 = model.embed_streams(t)
    assert torch.equal(x, F.rms_norm(e + term, (e.size(-1),))) and x is x0


@pytest.mark.parametrize("arm", ["dose-0.8", "dose-0.8-noattn0"])
def test_trained_dose_mixes_exactly_c_times_the_previous_embedding(arm, tiny_data, tmp_path):
    run = make_run("tiny", get_preset("tiny"), arm, 0, tiny_data,
                   train_overrides=dict(steps=4, n_checkpoints=1, val_tokens=1024))
    train(tmp_path / "run", run, progress=False)
    model, meta = ckpt.load_model(tmp_path / "run")
    assert meta["arm"] == arm and model.config.arm == arm
    start = GPT(run.model, seed=0)
    assert not torch.equal(model.embed.weight, start.embed.weight)  # trained: the check is not of the init
    assert dict(model.named_parameters()).keys() == dict(start.named_parameters()).keys()  # c is no parameter
    check_dose(model, 0.8)


@pytest.mark.parametrize("c, suffix", [(0.05, ""), (1.6, ""), (-0.3, ""), (0.8, "-noattn0")])
def test_dose_at_any_constant(c, suffix):
    check_dose(randomize_shared(GPT(cfg(f"dose-{c}{suffix}"))), c)


# ---- zero-initialised arms start as the baseline ---------------------------------------------------------


@pytest.mark.parametrize("arm", ZERO_INIT)
def test_zero_initialised_arm_equals_baseline_at_step_0(arm):
    """... its own baseline: `smear-noattn0` equals `baseline-noattn0`, as `smear` equals `baseline`."""
    t = tokens()
    base_logits, base = hooked(GPT(cfg(reference(arm)), seed=3), t)
    logits, cache = hooked(GPT(cfg(arm), seed=3), t)
    last = f"blocks.{TINY.n_layers - 1}.hook_resid_post"
    assert torch.equal(logits, base_logits) and torch.equal(cache[last], base[last])
    # with every shared weight moved away from its init (the head too, so the logits depend on it)
    base_model = randomize_shared(GPT(cfg(reference(arm)), seed=3))
    model = randomize_shared(GPT(cfg(arm), seed=3))
    with torch.no_grad():
        assert torch.equal(model(t), base_model(t))
        if model.smear_gate is not None:  # λ = 0 silences any gate
            assert model.smear_gate.weight.abs().sum() > 0


def test_step_0_equality_is_not_vacuous():
    """A dose changes the step-0 residual stream, the key shift the function (at init every output projection
    is zero, so its step-0 forward is the baseline's, but not its attention), so does removing layer 0's
    attention, and a zero-init arm moved off zero changes the logits."""
    t = tokens()
    _, base = hooked(GPT(cfg("baseline"), seed=3), t)
    _, dose = hooked(GPT(cfg("dose-0.8"), seed=3), t)
    last = f"blocks.{TINY.n_layers - 1}.hook_resid_post"
    assert (dose[last] - base[last]).abs().max() > 0.1
    base_model = randomize_shared(GPT(cfg("baseline")))
    with torch.no_grad():
        assert not torch.allclose(randomize_shared(GPT(cfg("keyshift")))(t), base_model(t))
        assert not torch.allclose(randomize_shared(GPT(cfg("baseline-noattn0")))(t), base_model(t))
    for arm in ZERO_INIT:
        model, base_model = randomize_shared(GPT(cfg(arm))), randomize_shared(GPT(cfg(reference(arm))))
        with torch.no_grad():
            model.scalars[5 * TINY.n_layers] = 0.5
            if arm_spec(arm).mix == "canon":
                model.canon_w.fill_(0.1)
            for name, p in model.named_parameters():
                if name.endswith(".key_smear"):
                    p.fill_(0.3)
            assert not torch.allclose(model(t), base_model(t)), arm


# ---- each variant's term, read through the hooks ------------------------------------------------------------


def moved(arm: str) -> GPT:
    model = randomize_shared(GPT(cfg(arm)))
    with torch.no_grad():
        model.scalars[5 * TINY.n_layers] = 0.7
        if arm_spec(arm).mix == "canon":
            model.canon_w.copy_(torch.randn(model.canon_w.shape, generator=torch.Generator().manual_seed(1)))
        for name, p in model.named_parameters():
            if name.endswith(".key_smear"):
                p.fill_(0.3)
    return model


@pytest.mark.parametrize("arm", ["smear", "smear-postnorm", "smear-gateprev", "smear-gateboth", "smear-xonly"])
def test_gated_variants_mix_what_their_gate_reads(arm):
    model, t = moved(arm), tokens()
    _, cache = hooked(model, t)
    e = cache["hook_embed"]
    h = F.rms_norm(e, (e.size(-1),)) if arm == "smear-postnorm" else e
    cur, prev = h[:, 1:, :GATE_DIM], h[:, :-1, :GATE_DIM]
    reads = {"smear-gateprev": prev, "smear-gateboth": torch.cat([cur, prev], -1)}.get(arm, cur)
    gate = torch.sigmoid(reads @ model.smear_gate.weight.detach().T)
    torch.testing.assert_close(cache["hook_smear_gate"], gate, rtol=1e-6, atol=0)
    torch.testing.assert_close(cache["hook_smear_out"][:, 1:], 0.7 * gate * h[:, :-1], rtol=1e-6, atol=1e-7)
    assert torch.equal(cache["hook_smear_out"][:, 0], torch.zeros_like(e[:, 0]))
    x, x0 = model.embed_streams(t)
    smeared = h + cache["hook_smear_out"]
    torch.testing.assert_close(x, smeared if arm == "smear-postnorm" else F.rms_norm(smeared, (e.size(-1),)))
    if arm == "smear-xonly":  # the residual starts smeared; the x0 every block mixes back in does not
        torch.testing.assert_close(x0, F.rms_norm(e, (e.size(-1),)))
        assert not torch.allclose(x, x0)
    else:
        assert x0 is x


def test_smear_mtp_mixes_the_final_normed_stream_before_the_head():
    model, t = moved("smear-mtp"), tokens()
    logits, cache = hooked(model, t)
    final = cache[f"blocks.{TINY.n_layers - 1}.hook_resid_post"]
    h = F.rms_norm(final, (final.size(-1),))
    assert torch.equal(cache["hook_smear_gate"], torch.ones(2, 63, 1))
    torch.testing.assert_close(cache["hook_smear_out"][:, 1:], 0.7 * h[:, :-1], rtol=1e-6, atol=0)
    assert torch.equal(cache["hook_embed"], model.embed(t))  # the embedding is left alone
    expected = TINY.softcap * torch.sigmoid(model.lm_head(h + cache["hook_smear_out"]) / TINY.softcap_div)
    torch.testing.assert_close(logits, expected)


def test_canon4_is_a_causal_depthwise_convolution_within_each_document():
    model, t = moved("canon4"), tokens()
    _, cache = hooked(model, t)
    e, w = cache["hook_embed"], model.canon_w.detach()
    assert w.shape == (4, TINY.d_model)  # one weight vector per offset, inspectable
    expected = torch.zeros_like(e)
    docs = (t == TINY.bos_id).cumsum(1)
    for b in range(t.size(0)):
        for i in range(t.size(1)):
            for k in range(4):
                if i - k >= 0 and docs[b, i - k] == docs[b, i]:
                    expected[b, i] += w[k] * e[b, i - k]
    torch.testing.assert_close(cache["hook_smear_out"], expected, rtol=1e-5, atol=1e-6)
    assert "hook_smear_gate" not in cache.cache_dict  # no λ · gate: no smear statistics
    with torch.no_grad():
        assert torch.equal(model.embed_tokens(t), F.rms_norm(e + cache["hook_smear_out"], (e.size(-1),)))


# ---- key arms: what each mixes into the key, read (and changed) through its hooks ---------------------------------


def keys(model: GPT, t: torch.Tensor, hooks: list = ()) -> dict:
    names = lambda n: n.endswith(("attn.hook_rot_k", "attn.hook_rot_q", "attn.hook_key_shift", "attn.hook_key_smear"))  # noqa: E731
    seen = {}

    def keep(x, hook):
        seen[hook.name] = x.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(t, fwd_hooks=[*hooks, (names, keep)])
    return seen


def test_keyshift_moves_the_zero_frequency_dims_of_the_previous_key():
    """Record #169: on the long-window layers, key dims D/4…D/2 and 3D/4…D (never rotated) of position j
    are exactly those of j − 1; everything else is the baseline's."""
    t = tokens()
    base, shifted = randomize_shared(GPT(cfg("baseline"))), randomize_shared(GPT(cfg("keyshift")))
    D = TINY.d_head
    assert not shifted.yarn.angular_freq[D // 4:].any() and shifted.yarn.angular_freq[:D // 4].all()  # the still dims
    layers = cfg("keyshift").key_mix_layers()
    assert layers == (0, 3)  # tiny: long window layer 0, and the last layer; layer 2 has no attention
    b, k = keys(base, t), keys(shifted, t)
    still = torch.zeros(D, dtype=torch.bool)
    still[D // 4:D // 2] = still[3 * D // 4:] = True
    assert set(n for n in k if "key_shift" in n) == {f"blocks.{l}.attn.hook_key_shift" for l in layers}
    # layer 0 reads the embedding only, so its pre-shift key is the baseline's: compare exactly
    kb, ks = b["blocks.0.attn.hook_rot_k"], k["blocks.0.attn.hook_rot_k"]
    assert torch.equal(ks[..., ~still], kb[..., ~still]) and torch.equal(ks[:, 0], kb[:, 0])
    assert torch.equal(ks[:, 1:][..., still], kb[:, :-1][..., still])  # crosses a BOS, as the record's flat stream
    assert torch.equal(k["blocks.0.attn.hook_key_shift"], kb[:, :-1][..., still])
    assert torch.equal(k["blocks.0.attn.hook_rot_q"], b["blocks.0.attn.hook_rot_q"])
    # what the hook returns is what the key gets
    patched = keys(shifted, t, [("blocks.3.attn.hook_key_shift", lambda x, hook: torch.zeros_like(x))])
    k3 = patched["blocks.3.attn.hook_rot_k"]
    assert not k3[:, 1:][..., still].any() and torch.equal(k3[..., ~still], k["blocks.3.attn.hook_rot_k"][..., ~still])


def test_smeared_key_adds_s_times_the_previous_key_difference():
    """Olsson's smeared key, k[j] + s_h · (k[j−1] − k[j]) on every attention layer, the term through its hook."""
    t = tokens()
    base, smeared = randomize_shared(GPT(cfg("baseline"))), randomize_shared(GPT(cfg("smeared-key")))
    s = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        for l in TINY.attn_layers():
            smeared.blocks[l].attn.key_smear.copy_(s * (l + 1))
    b, k = keys(base, t), keys(smeared, t)
    assert {n for n in k if "key_smear" in n} == {f"blocks.{l}.attn.hook_key_smear" for l in TINY.attn_layers()}
    kb, term = b["blocks.0.attn.hook_rot_k"], k["blocks.0.attn.hook_key_smear"]
    assert torch.equal(term[:, 0], torch.zeros_like(term[:, 0]))
    torch.testing.assert_close(term[:, 1:], s[:, None] * (kb[:, :-1] - kb[:, 1:]), rtol=0, atol=0)
    assert torch.equal(k["blocks.0.attn.hook_rot_k"], kb + term)
    # the term the hook returns is the one added
    patched = keys(smeared, t, [("blocks.1.attn.hook_key_smear", lambda x, hook: torch.zeros_like(x))])
    with torch.no_grad():  # with no smear in layer 1 its key is its own rotated key: compare with a hook that reads it
        pre = {}
        smeared.run_with_hooks(t, fwd_hooks=[("blocks.1.attn.hook_key_smear", lambda x, hook: pre.update(term=x))])
    torch.testing.assert_close(patched["blocks.1.attn.hook_rot_k"], k["blocks.1.attn.hook_rot_k"] - pre["term"])


def test_key_arm_parameters_go_to_adam_with_the_scalars_and_learn():
    for arm in ("keyshift", "smeared-key"):
        model = randomize_shared(GPT(cfg(arm)))
        adam, muon = build_optimizers(model, get_preset("tiny").train)
        groups = {id(p): i for i, g in enumerate(adam.param_groups) for p in g["params"]}
        muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
        named = dict(model.named_parameters())
        assert set(groups) | muon_ids == {id(p) for p in named.values()} and not set(groups) & muon_ids
        for name in ARM_PARAMS[arm]:
            assert groups[id(named[name])] == groups[id(named["scalars"])], name  # the scalars' learning rate
    t = tokens()
    model.train()
    model(t[:, :-1], t[:, 1:], return_type="loss").backward()
    adam.step()
    assert all(named[n].abs().sum() > 0 for n in KEY_SMEAR)  # s moves off zero: the smear is learned


# ---- -noattn0: layer 0 without attention (record #131) ---------------------------------------------------------


@pytest.mark.parametrize("arm", ["baseline", "smear", "dose-0.8", "keyshift", "smeared-key", "canon4"])
def test_noattn0_is_the_arm_with_layer_0s_attention_output_zeroed(arm):
    """Everything but layer 0's attention is the arm's own (U-net skips, value embeddings, λ-mixes, windows,
    the other layers' key arms): with every shared weight random, `<arm>-noattn0` computes exactly what
    `<arm>` computes when a hook zeroes layer 0's attention output."""
    t = tokens()
    full, cut = moved(arm), moved(f"{arm}-noattn0")
    zero = [("blocks.0.hook_attn_out", lambda x, hook: torch.zeros_like(x))]
    with torch.no_grad():
        assert torch.equal(cut(t), full.run_with_hooks(t, fwd_hooks=zero))
        assert not torch.equal(cut(t), full(t))


@pytest.mark.parametrize("preset", ["tiny", "cpu-small"])
def test_noattn0_structure_and_bookkeeping(preset):
    c = get_preset(preset).model
    base, cut = GPT(c, seed=5), GPT(replace(c, arm="smear-noattn0"), seed=5)
    assert isinstance(cut.blocks[0].attn, NoAttention) and not cut.blocks[0].has_attn
    assert not cut.blocks[0].has_mlp  # both presets' layer 0 has no MLP either: an empty block, as the record's
    for a, b in zip(base.blocks[1:], cut.blocks[1:]):
        assert (type(a.attn), type(a.mlp)) == (type(b.attn), type(b.mlp))
    d, H = c.d_model, c.n_heads
    assert count_parameters(base) - count_parameters(cut) == 4 * d * d + GATE_DIM * H  # qkvo_w, attn_gate
    assert min_parameters(c) - min_parameters(cut.config) == 4 * d * d
    assert min_parameters(cut.config) <= count_parameters(cut)
    assert cut.config.attn_layers() == [l for l in c.attn_layers() if l != 0]
    assert cut.config.attn_free_layers() == tuple(sorted({0, *c.no_attn_layers}))
    assert cut.config.smear and not replace(c, arm="baseline-noattn0").smear
    # windows and value embeddings are the preset's: layer 0's long window is not moved to another layer
    assert cut.layer_windows() == base.layer_windows()
    assert [cut.config.value_embed_index(l) for l in range(c.n_layers)] == [c.value_embed_index(l) for l in range(c.n_layers)]
    # keyshift picks the long-window layers among those with attention (as record #169 did after #131)
    long = set(c.long_window_layers) | {c.n_layers - 1}
    assert replace(c, arm="keyshift-noattn0").key_mix_layers() == tuple(l for l in c.attn_layers() if l in long and l)


def test_noattn0_on_a_layer_0_without_attention_is_a_one_line_error(tiny_data, capsys):
    with pytest.raises(ConfigError, match="layer 0 has none already"):
        replace(TINY, arm="smear-noattn0", no_attn_layers=(0, 2))
    argv = ["train", "--preset", "tiny", "--arm", "smear-noattn0", "--data", str(tiny_data), "--set", "no_attn_layers=[0,2]"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "layer 0 has none already" in err and "use arm 'smear'" in err and "\n" not in err


def test_noattn0_run_saves_resumes_and_loads_as_itself(tiny_data, tmp_path):
    run = make_run("tiny", get_preset("tiny"), "smear-noattn0", 0, tiny_data,
                   train_overrides=dict(steps=4, n_checkpoints=2, val_tokens=512))
    train(tmp_path / "run", run, stop_at=2, progress=False)
    assert train(tmp_path / "run", run, resume=True, progress=False)["step"] == 4
    model, meta = ckpt.load_model(tmp_path / "run")
    assert meta["arm"] == model.config.arm == "smear-noattn0"
    assert isinstance(model.blocks[0].attn, NoAttention) and model.smear_gate is not None
    assert not [n for n in model.state_dict() if n.startswith("blocks.0.attn.")]


# ---- one seed: common weights and data order shared ------------------------------------------------------------


def test_arms_of_one_seed_share_every_common_initial_weight():
    """Each parameter is drawn from its own (seed, name) generator: removing layer 0's attention (-noattn0)
    shifts no other parameter's draw."""
    states = {arm: GPT(cfg(arm), seed=11).state_dict() for arm in ALL + NOATTN0 + ["keyshift-noattn0"]}
    base = states["baseline"]
    layer0_attn = {n for n in base if n.startswith("blocks.0.attn.")}
    assert layer0_attn == {"blocks.0.attn.qkvo_w", "blocks.0.attn.attn_gate.weight"}
    for arm, state in states.items():
        spec = arm_spec(arm)
        assert set(state) - set(base) == ARM_PARAMS.get(spec.base, {"smear_gate.weight"}), arm
        assert set(base) - set(state) == (layer0_attn if spec.no_attn0 else set()), arm
        for name in set(base) & set(state):
            assert torch.equal(base[name], state[name]), (arm, name)
    assert not torch.equal(GPT(cfg("baseline"), seed=12).state_dict()["embed.weight"], base["embed.weight"])


def test_arms_of_one_seed_see_the_same_batches(tiny_data, tmp_path):
    seen = {}
    for arm in ("baseline", "dose-0.8", "canon4", "smear-mtp", "keyshift", "smeared-key", "smear-noattn0"):
        batches = []
        run = make_run("tiny", get_preset("tiny"), arm, 0, tiny_data,
                       train_overrides=dict(steps=3, n_checkpoints=1, val_tokens=512))
        train(tmp_path / arm, run, callbacks=(lambda inputs, **_: batches.append(inputs.clone()),), progress=False)
        seen[arm] = batches
    first = seen["baseline"]
    assert len(first) == 3
    for arm, batches in seen.items():
        assert all(torch.equal(a, b) for a, b in zip(first, batches)), arm


# ---- λ's learning-rate multiple --------------------------------------------------------------------------------


def test_smear_lr_mult_scales_the_step_of_lambda_alone():
    t = tokens()
    after = {}
    for mult in (1.0, 0.1, 2.0):
        model = randomize_shared(GPT(cfg("smear")))
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_cfg = replace(get_preset("tiny").train, smear_lr_mult=mult)
        adam, muon = build_optimizers(model, train_cfg)
        model(t[:, :-1], t[:, 1:], return_type="loss").backward()
        adam_step(adam, model, train_cfg)
        muon.step()
        after[mult] = {n: p.detach().clone() - start[n] for n, p in model.named_parameters()}
    i = 5 * TINY.n_layers
    step = after[1.0]["scalars"][i]
    assert step.abs() > 1e-4
    for mult in (0.1, 2.0):
        torch.testing.assert_close(after[mult]["scalars"][i], mult * step, rtol=1e-5, atol=0)
        others = torch.ones_like(after[mult]["scalars"], dtype=torch.bool)
        others[i] = False
        assert torch.equal(after[mult]["scalars"][others], after[1.0]["scalars"][others])
        for name in after[1.0]:
            if name != "scalars":
                assert torch.equal(after[mult][name], after[1.0][name]), name


def test_smear_lr_mult_needs_an_arm_with_a_learned_lambda(tiny_data):
    with pytest.raises(ConfigError, match="no learned λ"):
        make_run("tiny", get_preset("tiny"), "dose-0.8", 0, tiny_data, train_overrides=dict(smear_lr_mult=2))
    with pytest.raises(ConfigError, match="smear_lr_mult"):
        replace(get_preset("tiny").train, smear_lr_mult=0)


# ---- names, the CLI and old configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("smeer", "unknown arm 'smeer'"), ("dose-", "dose-<c>"), ("dose-abc", "dose-<c>"), ("dose-nan", "dose-<c>"),
    ("dose-inf", "dose-<c>"), ("baseline-noattn1", "only layer 0's attention"), ("smear-noattn", "only layer 0's"),
    ("dose-0.8-noattn2", "only layer 0's"), ("noattn0", "is a suffix"), ("-noattn0", "is a suffix"),
    ("smear-noattn0-noattn0", "given twice"), ("dose-x-noattn0", "arm 'dose-x-noattn0': a dose is dose-<c>"),
    ("smeer-noattn0", "unknown arm 'smeer-noattn0'")])
def test_unknown_arm_is_a_one_line_error(name, message, capsys, tiny_data):
    with pytest.raises(ConfigError, match=message):
        arm_spec(name)
    assert cli_main(["train", "--preset", "tiny", f"--arm={name}", "--data", str(tiny_data)])  # = : "-noattn0" is no option == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smearlens: error: --arm:") and message in err and "\n" not in err


def test_train_pair_arms_trains_each_arm_of_one_seed(tiny_data, tmp_path, capsys):
    argv = ["train-pair", "--preset", "tiny", "--data", str(tiny_data), "--out", str(tmp_path), "--steps", "1",
            "--record-every", "0", "--set", "n_checkpoints=1", "--set", "val_tokens=512"]
    assert cli_main([*argv, "--arms", "baseline,nope"]) == 2  # checked before anything trains
    assert "unknown arm 'nope'" in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert cli_main([*argv, "--arms", "baseline, dose-0.4 ,smear-gateboth"]) == 0
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert runs == ["tiny-s0-baseline", "tiny-s0-dose-0.4", "tiny-s0-smear-gateboth"]
    assert ckpt.read_meta(ckpt.resolve_checkpoint(tmp_path / "tiny-s0-dose-0.4"))["arm"] == "dose-0.4"


def test_old_configs_with_smear_bool_still_load(tiny_data, tmp_path):
    assert from_dict(ModelConfig, {**to_dict(TINY), "smear": False} | {"arm": "baseline"}).arm == "baseline"
    old = to_dict(TINY)
    del old["arm"]
    assert from_dict(ModelConfig, dict(old, smear=True)).arm == "smear"
    assert from_dict(ModelConfig, dict(old, smear=False)).arm == "baseline"
    assert replace(cfg("dose-0.8"), smear=True).arm == "smear" and not cfg("dose-0.8").smear
    with pytest.raises(ConfigError, match="disagree"):
        from_dict(ModelConfig, dict(old, smear=True, arm="baseline"))
    # a checkpoint (and run manifest) written before arms: `smear` in place of `arm`
    run = make_run("tiny", get_preset("tiny"), "baseline", 0, tiny_data,
                   train_overrides=dict(steps=2, n_checkpoints=1, val_tokens=512))
    train(tmp_path / "run", run, stop_at=1, progress=False)
    for file in [ckpt.resolve_checkpoint(tmp_path / "run") / ckpt.META_FILE, tmp_path / "run" / ckpt.RUN_FILE]:
        meta = json.loads(file.read_text())
        meta["model_config"].pop("arm")
        meta["model_config"]["smear"] = False
        for key in (ckpt.HASHES, ckpt.META_HASH):  # nor had checkpoints then recorded hashes
            meta.pop(key, None)
        file.write_text(json.dumps(meta))
    model, _ = ckpt.load_model(tmp_path / "run")
    assert model.config.arm == "baseline" and model.smear_gate is None
    assert train(tmp_path / "run", run, resume=True, progress=False)["step"] == 2  # resumes as the same run


def test_every_arm_is_documented_in_the_registry_table():
    import trainer.arms

    rows = [line for line in trainer.arms.__doc__.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["baseline", "smear", "dose-<c>", *list(ARMS)[2:], *PATTERNS[1:]]


def test_smeared_key_init_starts_every_s_at_s0_and_shares_the_rest():
    """Olsson's σ(α = 0) start: every s at 0.5, every other parameter the plain smeared key's, bit for bit."""
    plain, half = GPT(cfg("smeared-key")), GPT(cfg("smeared-key-init-0.5"))
    plain.init_weights(3), half.init_weights(3)
    assert not arm_spec("smeared-key-init-0.5").starts_as_baseline and arm_spec("smeared-key").starts_as_baseline
    named = dict(half.named_parameters())
    for name, p in plain.named_parameters():
        if name in KEY_SMEAR:
            assert torch.equal(named[name], torch.full_like(p, 0.5)) and not p.any()
        else:
            assert torch.equal(named[name], p), name
    with pytest.raises(ConfigError, match="smeared-key-init-0.5"):
        arm_spec("smeared-key-init-half")
