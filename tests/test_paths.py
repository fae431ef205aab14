"""Path attribution (analysis/mechanism/paths.py): the slot method checked against plain patched forwards of the
model, and the known answers of models built so that where the previous token goes is known."""

import numpy as np
import pytest
import torch

from analysis.mechanism import paths as PA
from analysis.measures.probes import evaluating
from trainer.config import get_preset, replace
from trainer.errors import AnalysisError
from trainer.model import GPT

pytestmark = pytest.mark.usefixtures("one_thread")
BOS = 0


def randomized(smear: bool = True, lam: float = 1.0, w_o: float = 0.1, seed: int = 0, arm: str | None = None) -> GPT:
    """A tiny model whose zero-initialised weights (lm_head, c_proj, gates, W_O) are random, so every
    path carries something; λ = lam. `arm` names another arm with a learned λ than the smear."""
    torch.manual_seed(seed)
    m = GPT(replace(get_preset("tiny").model, arm=arm or ("smear" if smear else "baseline")))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("qkvo_w"):
                p[3].normal_(0, w_o)
            elif name != "scalars" and (p == 0).all():
                p.normal_(0, 0.3)
        if smear:
            m.scalars[5 * m.config.n_layers] = lam
    return m.eval()


def stream(vocab: int, docs: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.concatenate([[BOS], rng.integers(1, vocab, size=rng.integers(5, 80))]) for _ in range(docs)])


def zero_heads(m: GPT, keep: tuple[int, int] | None = None) -> GPT:
    """Every head's W_O zero (attention writes nothing), but `keep` = (layer, head)."""
    D = m.config.d_head
    with torch.no_grad():
        for l in m.config.attn_layers():
            for h in range(m.config.n_heads):
                if (l, h) != keep:
                    m.blocks[l].attn.qkvo_w[3][:, h * D:(h + 1) * D] = 0
    return m


def table(m: GPT, positions: int = 24, draws: int = 2):
    samples = PA.sample_positions(stream(m.config.vocab_size), BOS, positions, draws)
    df = PA.path_frame(PA.measure(m, samples, batch_rows=16), {})
    return df


def value(df, path, metric="share", offset=1, gate="all", **where):
    sel = (df["path"] == path) & (df["metric"] == metric) & (df["offset"] == offset) & (df["gate"] == gate)
    for k, v in where.items():
        sel &= df[k] == v
    return float(df.loc[sel, "value"].item())


# ---- sampling ---------------------------------------------------------------------------------------


def test_samples_come_from_the_data_and_the_seed_only():
    tokens = stream(512)
    a, b = PA.sample_positions(tokens, BOS, 30, 3), PA.sample_positions(tokens, BOS, 30, 3)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("context", "replacement", "position", "target"))
    assert not torch.equal(a.position, PA.sample_positions(tokens, BOS, 30, 3, seed=1).position)
    for row, i in enumerate(a.position.tolist()):
        L = int(a.length[row])
        ctx = a.context[row, -L:]
        assert ctx[0] == BOS and (ctx[1:] != BOS).all() and L - 1 >= PA.MIN_LOCAL and L <= PA.PATH_WINDOW
        assert ctx.tolist() == tokens[i - L + 1: i + 1].tolist() and a.target[row] == tokens[i + 1]
        assert (a.context[row, :-L] == BOS).all()
        rep = a.replacement[row]
        assert (rep != BOS).all() and (rep != tokens[i - 1]).all() and (rep != tokens[i - 2]).all()
    few = PA.sample_positions(np.array([BOS, 5, 6, 7, 8, 9]), BOS, 30, 2)
    assert few.position.tolist() == [3, 4]  # only two positions have three tokens before them and a next one
    with pytest.raises(AnalysisError, match="no position for path attribution"):
        PA.sample_positions(np.array([BOS, 5, 6, BOS, 7, 8]), BOS, 30, 2)


# ---- the slot method against patched forwards of the model ----------------------------------------------


def brute_force(m: GPT, clean: torch.Tensor, corrupt: torch.Tensor, path: PA.Path) -> torch.Tensor:
    """Logits at i of the path's own patched forward, built from the model's hooks only."""
    T0 = clean.size(1)
    _, cc = m.run_with_cache(clean)
    _, cr = m.run_with_cache(corrupt)
    if path.path == "smear":
        def put(x, hook):
            x = x.clone()
            x[:, T0 - 1] = cr["hook_smear_out"][:, T0 - 1]
            return x
        return m.run_with_hooks(clean, fwd_hooks=[("hook_smear_out", put)])[:, -1]
    if path.path == "rest":
        def back(x, hook):
            x = x.clone()
            x[:, T0 - 1] = cc["hook_smear_out"][:, T0 - 1]
            return x
        return m.run_with_hooks(corrupt, fwd_hooks=[("hook_smear_out", back)])[:, -1]
    l, h, j = path.layer, path.head, T0 - 1 - path.source
    name = f"blocks.{l}.attn."

    def patch(which):
        def fn(x, hook):
            x = x.clone()
            x[:, j, h] = cr[name + which][:, j, h]
            return x
        return fn

    def only_i(z, hook):  # the head's changed output elsewhere must not reach i
        z = z.clone()
        z[:, :T0 - 1, h] = cc[name + "hook_z"][:, :T0 - 1, h]
        return z

    hooks = [(name + "hook_z", only_i)]
    if path.part in ("kv", "key"):
        hooks.append((name + "hook_rot_k", patch("hook_rot_k")))
    if path.part in ("kv", "value"):
        hooks.append((name + "hook_v", patch("hook_v")))
    return m.run_with_hooks(clean, fwd_hooks=hooks)[:, -1]


@pytest.mark.parametrize("arm", ["smear", "smear-mtp"])  # Smear-MTP mixes after the last block
def test_slots_equal_the_patched_forwards(arm):
    m = randomized(arm=arm)
    samples = PA.sample_positions(stream(m.config.vocab_size), BOS, 6, 1)
    keep = samples.length == samples.length.max()  # one length: no padding in the brute-force runs
    clean, rep = samples.context[keep][:, -int(samples.length.max()):], samples.replacement[keep][:, 0]
    T0 = clean.size(1)
    with evaluating(m):
        z0, deltas = PA.batch_deltas(m, clean, rep, 1)
        largest = 0.0
        torch.testing.assert_close(z0, m(clean)[:, -1], atol=1e-4, rtol=0)
        for path in [PA.Path(1, "smear"), PA.Path(1, "rest"), PA.Path(2, "rest"),
                     *[p for p in PA.edge_paths(m) if p.part in ("kv", "key", "value")]]:
            corrupt = clean.clone()
            corrupt[:, T0 - 1 - path.offset] = rep
            expected = brute_force(m, clean, corrupt, path) - z0
            torch.testing.assert_close(deltas[path], expected, atol=2e-4, rtol=0, msg=str(path))
            if path.part == "kv" and path.source == path.offset:
                largest = max(largest, float(deltas[path].abs().max()))
        assert largest > 1e-2  # the comparison is not vacuous
        for d in (1, 2):
            corrupt = clean.clone()
            corrupt[:, T0 - 1 - d] = rep
            torch.testing.assert_close(deltas[PA.Path(d, "total")], m(corrupt)[:, -1] - z0, atol=1e-4, rtol=0)


def test_left_padding_changes_nothing():
    m = randomized()
    samples = PA.sample_positions(stream(m.config.vocab_size), BOS, 8, 1)
    row = int(torch.argmin(samples.length))
    L = int(samples.length[row])
    with evaluating(m):
        short = m(samples.context[row:row + 1, -L:])[:, -1]
        padded = m(samples.context[row:row + 1])[:, -1]
    torch.testing.assert_close(short, padded, atol=1e-4, rtol=0)


# ---- known answers --------------------------------------------------------------------------------------


def test_attention_that_writes_nothing_leaves_everything_to_the_smear():
    df = table(zero_heads(randomized()))
    assert value(df, "smear") == pytest.approx(1, abs=1e-4) and value(df, "rest") == pytest.approx(0, abs=1e-4)
    assert value(df, "leftover") == pytest.approx(0, abs=1e-4) and value(df, "total", "kl") > 1e-3
    heads = df[(df["path"] == "head") & (df["metric"].isin(["share", "kl"])) & (df["offset"] == 1)]
    assert (heads["value"].abs() < 1e-9).all()
    assert np.isnan(value(df, "total", offset=2))  # nothing reaches i from i−2: no share to take
    assert value(df, "smear", offset=2, metric="kl") == 0  # the smear carries i−1 only


def test_baseline_carries_nothing_through_the_smear():
    df = table(randomized(smear=False))
    assert value(df, "smear") == 0 and value(df, "smear", "kl") == 0
    assert value(df, "rest") == pytest.approx(1, abs=1e-6) and value(df, "leftover") == pytest.approx(0, abs=1e-6)
    assert set(df["gate"]) == {"all"}  # no gate to split by


def test_a_zero_ablated_head_carries_nothing():
    m = randomized()
    D = m.config.d_head
    with torch.no_grad():
        m.blocks[1].attn.qkvo_w[3][:, D:2 * D] = 0  # layer 1, head 1
    df = table(m)
    ablated = df[(df["path"] == "head") & (df["layer"] == 1) & (df["head"] == 1) & df["metric"].isin(["share", "kl"])]
    assert len(ablated) and (ablated["value"] == 0).all()
    live = df[(df["path"] == "head") & (df["layer"] == 0) & (df["metric"] == "kl")]
    assert live["value"].max() > 1e-4


def test_one_head_reading_the_previous_token_is_the_whole_effect():
    """Exactly separable: a baseline whose only writing head is layer 0, head 0. The replaced token
    reaches i only through that head's key and value at i−1, so that edge is the total."""
    m = zero_heads(randomized(smear=False), keep=(0, 0))
    df = table(m)
    edge = dict(layer=0, head=0, source=1)
    assert value(df, "head", part="kv", **edge) == pytest.approx(1, abs=1e-4)
    assert value(df, "head", "kl", part="kv", **edge) == pytest.approx(value(df, "total", "kl"), rel=1e-3)
    assert value(df, "head", part="kv", layer=0, head=1, source=1) == 0
    # the value's two parts add up at the head's output; with no value embedding it is all residual
    with torch.no_grad():
        for ve in m.value_embeds:
            ve.weight.zero_()
    df = table(m)
    assert value(df, "head", part="value_ve", **edge) == 0
    assert value(df, "head", part="value_resid", **edge) == pytest.approx(value(df, "head", part="value", **edge), rel=1e-4)
    assert value(df, "head", part="value", **edge) > 0.01


def test_shares_add_up_where_the_paths_act_linearly():
    """With a small smear and small head outputs the logit changes are nearly linear: smear and rest
    both carry a real part and the leftover (their interaction) nearly vanishes."""
    df = table(randomized(lam=0.02, w_o=0.01), positions=32)
    smear, rest, left = value(df, "smear"), value(df, "rest"), value(df, "leftover")
    assert smear > 0.1 and rest > 0.1 and abs(left) < 0.02
    # and the gate split partitions the rows
    n = {g: value(df, "total", "n", gate=g) for g in ("all", "open", "closed")}
    assert n["open"] + n["closed"] == n["all"] == 64


def test_offsets_match_the_model_pattern():
    m = randomized()
    samples = PA.sample_positions(stream(m.config.vocab_size), BOS, 10, 1)
    meas = PA.measure(m, samples, batch_rows=4)
    frame = PA.offset_frame(meas, {})
    pattern = {}
    for row in range(len(samples.position)):
        L = int(samples.length[row])
        _, cache = m.run_with_cache(samples.context[row:row + 1, -L:])
        for l in m.config.attn_layers():
            p = cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1]  # (H, L)
            pattern.setdefault(l, []).append(torch.stack([p[:, -1], p[:, -2], p[:, -3], p[:, 0]], -1))
    for l in m.config.attn_layers():
        expected = torch.stack(pattern[l]).mean(0)  # (H, 4)
        for h in range(m.config.n_heads):
            got = frame[(frame["layer"] == l) & (frame["head"] == h) & (frame["gate"] == "all") & (frame["metric"] == "mass")]
            assert got["value"].tolist() == pytest.approx(expected[h].tolist(), abs=1e-5)
    written = frame[(frame["metric"] == "written") & (frame["gate"] == "all")]
    assert (written["value"] >= 0).all() and written["value"].max() > 0
