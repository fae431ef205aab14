"""Arms for why the learned gate stays low (trainer/arms.py): each definition read through the hooks, the
step they depend on, λ's gradient record (analysis/measures/lambda_grad.py) against autograd, and the size-sweep presets."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from analysis.measures.lambda_grad import (DOC_PARTS, LAMBDA_FILE, PARTS, LambdaGradRecorder, doc_position,
                                  lambda_grad_parts)
from commands.cli import main as cli_main
from trainer import checkpoint as ckpt
from trainer.arms import arm_spec
from trainer.config import GATE_DIM, get_preset, replace
from trainer.errors import ConfigError
from trainer.model import GPT
from trainer.optim import build_optimizers
from trainer.train import make_run, train

TINY = get_preset("tiny").model
LAM = 5 * TINY.n_layers  # λ's index in the scalars


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def tokens(B=2, T=64, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(1, TINY.vocab_size, (B, T), generator=gen)
    t[:, 0] = 0
    t[0, 23] = t[1, 40] = t[1, 41] = 0  # documents starting mid-row, one of them empty
    return t


def model(arm: str, lam: float | None = None, seed: int = 0, zero_gate: bool = False) -> GPT:
    """Every weight moved off its init (the same draw in every arm), so gradients reach the embedding;
    λ set to `lam` (None: the arm's own initial λ), the gate weights zeroed on request."""
    m = GPT(replace(TINY, arm=arm), seed=3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            gen = torch.Generator().manual_seed(seed + sum(map(ord, name)))
            noise = 0.3 * torch.randn(p.shape, generator=gen)
            if name == "scalars":
                noise[LAM] = 0
            p.add_(noise)
        if lam is not None:
            m.scalars[LAM] = lam
        if zero_gate and m.smear_gate is not None:
            m.smear_gate.weight.zero_()
    return m


def cache(m: GPT, t: torch.Tensor):
    with torch.no_grad():
        logits, c = m.run_with_cache(t, names_filter=lambda n: n in ("hook_embed", "hook_smear_gate", "hook_smear_out"))
    return logits, c


# ---- definitions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c, k", [(0.8, 10), (-0.3, 7)])
def test_anneal_is_c_times_one_minus_step_over_k_then_the_baseline(c, k):
    m, t = model(f"dose-{c}-anneal-{k}"), tokens()
    base = model("baseline")
    not_bos = t[:, 1:] != 0
    for step in (0, 1, k // 2, k - 1):
        m.set_step(step)
        _, ca = cache(m, t)
        e, term = ca["hook_embed"], ca["hook_smear_out"]
        coef = torch.tensor(c * (1 - step / k), dtype=torch.float32)  # the double, rounded once
        assert float(m.smear_lambda) == float(coef)
        assert torch.equal(term[:, 1:][not_bos], (coef * e[:, :-1])[not_bos])
        assert torch.equal(term[:, 1:][~not_bos], torch.zeros_like(term[:, 1:][~not_bos]))
        assert torch.equal(term[:, 0], torch.zeros_like(term[:, 0]))
        if step:
            assert term.abs().max() > 0.01
    with torch.no_grad():
        assert not torch.equal(m(t), base(t))  # still at step k − 1
        for step in (k, k + 1, 10 * k):  # after k: the term is exactly 0 and the forward is the baseline's
            m.set_step(step)
            assert float(m.smear_lambda) == 0.0
            assert torch.equal(m(t), base(t))


def test_hold_keeps_coefficient_c_for_k_steps_then_lambda_and_gate_learn():
    c, k = 0.8, 3
    m, t = model(f"smear-hold-{c}-{k}", zero_gate=False), tokens()
    assert float(m.scalars[LAM]) == pytest.approx(2 * c)  # λ starts at 2c
    _, ca = cache(m, t)
    assert torch.equal(ca["hook_smear_gate"], torch.full_like(ca["hook_smear_gate"], 0.5))  # held, BOS included
    torch.testing.assert_close(ca["hook_smear_out"][:, 1:], c * ca["hook_embed"][:, :-1], rtol=1e-6, atol=0)
    train_cfg = get_preset("tiny").train
    adam, muon = build_optimizers(m, train_cfg)
    lam, w = [], []
    for step in range(k + 2):
        m.set_step(step)
        m(t[:, :-1], t[:, 1:], return_type="loss").backward()
        held = step < k
        assert (m.scalars.grad[LAM] == 0) == held and (m.smear_gate.weight.grad.abs().sum() == 0) == held
        lam.append(float(m.scalars[LAM]))
        w.append(m.smear_gate.weight.detach().clone())
        adam.step()
        muon.step()
        m.zero_grad(set_to_none=True)
    assert lam[: k + 1] == [lam[0]] * (k + 1) and lam[k + 1] != lam[k]  # fixed through the hold, then moves
    assert all(torch.equal(x, w[0]) for x in w[: k + 1]) and not torch.equal(w[k + 1], w[k])
    # released: the record's smear, λ · σ(w · e[i, :12]) · e[i−1]
    m.set_step(k)
    _, ca = cache(m, t)
    e = ca["hook_embed"]
    gate = torch.sigmoid(e[:, 1:, :GATE_DIM] @ m.smear_gate.weight.detach().T)
    torch.testing.assert_close(ca["hook_smear_gate"], gate)
    torch.testing.assert_close(ca["hook_smear_out"][:, 1:], m.smear_lambda.detach() * gate * e[:, :-1])


def test_hold_is_continuous_at_the_release():
    """With the gate still at its zero init, the first released forward equals the last held one."""
    m, t = GPT(replace(TINY, arm="smear-hold-0.8-5"), seed=3), tokens()
    with torch.no_grad():
        m.lm_head.weight.normal_(generator=torch.Generator().manual_seed(0))
        m.set_step(4)
        held = m(t)
        m.set_step(5)
        assert torch.equal(m(t), held)
        m.set_step(0)
        assert torch.equal(m(t), held)
        base = GPT(replace(TINY, arm="baseline"), seed=3)
        base.lm_head.weight.copy_(m.lm_head.weight)
        assert (base(t) - held).abs().max() > 1e-3  # the held smear is in the forward


def test_nogate_coefficient_is_lambda_everywhere_but_a_bos_and_equals_the_dose():
    m, t = model("smear-nogate", lam=0.7), tokens()
    _, ca = cache(m, t)
    e, term, gate = ca["hook_embed"], ca["hook_smear_out"], ca["hook_smear_gate"]
    not_bos = t[:, 1:] != 0
    assert torch.equal(gate[..., 0], not_bos.float())
    assert torch.equal(term[:, 1:][not_bos], (torch.tensor(0.7) * e[:, :-1])[not_bos])
    assert torch.equal(term[:, 1:][~not_bos], torch.zeros_like(term[:, 1:][~not_bos]))
    assert m.smear_gate is None and arm_spec("smear-nogate").learned_lambda
    with torch.no_grad():  # at λ = c it is the fixed dose, bit for bit
        assert torch.equal(m(t), model("dose-0.7")(t))


def test_normgate_reads_the_normed_embedding_and_smears_the_raw_one():
    m, t = model("smear-normgate", lam=0.7), tokens()
    _, ca = cache(m, t)
    e = ca["hook_embed"]
    gate = torch.sigmoid(F.rms_norm(e, (e.size(-1),))[:, 1:, :GATE_DIM] @ m.smear_gate.weight.detach().T)
    torch.testing.assert_close(ca["hook_smear_gate"], gate, rtol=1e-6, atol=0)
    torch.testing.assert_close(ca["hook_smear_out"][:, 1:], 0.7 * gate * e[:, :-1], rtol=1e-6, atol=1e-7)
    raw = torch.sigmoid(e[:, 1:, :GATE_DIM] @ m.smear_gate.weight.detach().T)
    assert (raw - gate).abs().max() > 1e-3  # the norm matters: the test tells the two apart
    x, _ = m.embed_streams(t)
    torch.testing.assert_close(x, F.rms_norm(e + ca["hook_smear_out"], (e.size(-1),)))
    assert not arm_spec("smear-normgate").vocab_gate and arm_spec("smear").vocab_gate


def test_init_sets_lambda_alone():
    a, s = GPT(replace(TINY, arm="smear-init-1.6"), seed=5), GPT(replace(TINY, arm="smear"), seed=5)
    assert float(a.smear_lambda) == pytest.approx(1.6) and float(s.smear_lambda) == 0.0
    for (name, p), q in zip(a.state_dict().items(), s.state_dict().values()):
        if name == "scalars":
            others = torch.arange(p.numel()) != LAM
            assert torch.equal(p[others], q[others])
        else:
            assert torch.equal(p, q), name
    t = tokens()
    _, ca = cache(model("smear-init-1.6", zero_gate=True), t)
    torch.testing.assert_close(ca["hook_smear_out"][:, 1:], 0.8 * ca["hook_embed"][:, :-1])  # gate 0.5 at init


@pytest.mark.parametrize("arm", ["smear-nogate", "smear-normgate", "smear-init-0", "smear-hold-0-4"])
def test_zero_initialised_gate_arms_equal_the_baseline_at_step_0(arm):
    t = tokens()
    with torch.no_grad():
        assert torch.equal(model(arm)(t), model("baseline")(t))
        assert not torch.equal(model(arm, lam=0.5)(t), model("baseline")(t))


@pytest.mark.parametrize("name, message", [
    ("smear-init-", "smear-init-<λ0>"), ("smear-init-nan", "finite"), ("smear-hold-0.8", "smear-hold-<c>-<k>"),
    ("smear-hold-0.8-0", "positive whole"), ("smear-hold-x-5", "finite"), ("dose-0.8-anneal-", "positive whole"),
    ("dose-0.8-anneal-1.5", "positive whole"), ("dose-inf-anneal-4", "finite")])
def test_bad_parametrised_names_are_one_line_errors(name, message, capsys, tiny_data):
    with pytest.raises(ConfigError, match=message):
        arm_spec(name)
    assert cli_main(["train", "--preset", "tiny", "--arm", name, "--data", str(tiny_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smearlens: error: --arm:") and "\n" not in err


def test_parsed_names():
    assert arm_spec("smear-hold-1e-1-20").lambda_init == pytest.approx(0.2) and arm_spec("smear-hold-1e-1-20").hold_steps == 20
    assert arm_spec("smear-hold--0.5-3").lambda_init == -1.0
    a = arm_spec("dose-0.8-anneal-400")
    assert (a.mix, a.dose, a.anneal_steps, a.scheduled) == ("dose", 0.8, 400, True)
    assert not arm_spec("smear-init-2").scheduled and arm_spec("smear-init-2").lambda_init == 2.0


# ---- the λ-gradient record ------------------------------------------------------------------------------------


def recorded(m: GPT, t: torch.Tensor, step: int = 0) -> pd.DataFrame:
    """One training-style step through the recorder's hooks: the table's rows for it."""
    B, T = t.shape[0], t.shape[1] - 1
    run = types.SimpleNamespace(name="r", preset="tiny", arm=m.config.arm, seed=0,
                                train=types.SimpleNamespace(batch_size=B, seq_len=T, steps=10))
    rec = LambdaGradRecorder()
    rec.on_train_start(model=m, step=0, run=run, run_dir="unused")
    m.zero_grad(set_to_none=True)
    (m(t[:, :-1], t[:, 1:], return_type="loss") * B * T).backward()  # as train.py: the sum over the tokens
    rec.on_backward(model=m, step=step, run=run, inputs=t[:, :-1])
    table = rec.table()
    rec.remove()
    return table


@pytest.mark.parametrize("arm, lam", [("smear", 0.0), ("smear", 0.7), ("smear-normgate", 0.3), ("smear-nogate", 0.0),
                                      ("smear-postnorm", 0.4), ("smear-gateboth", 0.5), ("smear-xonly", 0.5)])
def test_lambda_gradient_parts_sum_to_autograds_gradient(arm, lam):
    m, t = model(arm, lam=lam), tokens(T=65)
    table = recorded(m, t)
    grad = float(m.scalars.grad[LAM]) / (2 * 64)  # per mean-loss token
    assert abs(grad) > 1e-4  # not vacuous
    total = table[table.by == "total"].iloc[0]
    assert total["grad"] == pytest.approx(grad, rel=1e-5) and total["pressure"] == pytest.approx(grad, rel=1e-4)
    assert total["lambda"] == pytest.approx(lam) and total["n"] == 2 * 63
    for by in ("doc", "gate", "sign"):  # each split covers every position once
        part = table[table.by == by]
        assert part.value.sum() == pytest.approx(grad, rel=1e-4, abs=1e-9) and part.n.sum() == 2 * 63
    sign = table[table.by == "sign"].set_index("part").value
    assert sign["pos"] >= 0 >= sign["neg"]
    assert list(zip(table.by, table.part)) == PARTS


def test_pressure_on_a_dose_or_a_held_lambda_is_what_a_learned_lambda_would_feel():
    t = tokens(T=65)
    dose = recorded(model("dose-0.6"), t)
    nogate = recorded(model("smear-nogate", lam=0.6), t)  # the same forward, λ learned
    d, n = dose[dose.by == "total"].iloc[0], nogate[nogate.by == "total"].iloc[0]
    assert pd.isna(d["grad"]) and d["pressure"] == pytest.approx(n["grad"], rel=1e-4)
    assert (dose[dose.part == "bos"].n.iloc[0], dose[dose.part == "bos"].value.iloc[0]) == (3, 0.0)  # no term there
    held = recorded(model("smear-hold-0.8-5", zero_gate=True), t, step=0)
    smear = recorded(model("smear", lam=1.6, zero_gate=True), t)
    h, s = held[held.by == "total"].iloc[0], smear[smear.by == "total"].iloc[0]
    assert h["grad"] == 0.0 and abs(s["grad"]) > 1e-4 and h["pressure"] == pytest.approx(s["grad"], rel=1e-4)


def test_document_position_buckets():
    t = torch.tensor([[0, 5, 6, 7, 0, 0, 8], [4, 5, 0, 6, 6, 6, 6]])
    assert doc_position(t, 0).tolist() == [[0, 1, 2, 3, 0, 0, 1], [-1, -1, 0, 1, 2, 3, 4]]
    grad_term, prev = torch.ones(2, 6, 3), torch.ones(2, 6, 3)
    gate = torch.tensor([[0.1, 0.5, 0.9, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    values, counts = lambda_grad_parts(grad_term, prev, gate, t, 0)
    got = {p: (int(n), float(v)) for p, n, v in zip(PARTS, counts, values)}
    # positions 1..6 of row 0: doc 1, 2, 3, bos, bos, 1; of row 1: no_bos, bos, 1, 2, 3, 4
    expected = {("doc", "1"): (3, 4.8), ("doc", "bos"): (3, 6.0), ("doc", "2-3"): (4, 10.2), ("doc", "4-15"): (1, 3.0),
                ("doc", "16-63"): (0, 0.0), ("doc", "64+"): (0, 0.0), ("doc", "no_bos"): (1, 3.0),
                ("gate", "<0.4"): (1, 0.3), ("gate", "0.4-0.6"): (4, 6.0), ("gate", ">=0.6"): (7, 20.7),
                ("sign", "pos"): (12, 27.0), ("sign", "neg"): (0, 0.0), ("total", "all"): (12, 27.0)}
    assert set(got) == set(expected) and len(DOC_PARTS) == 7
    for part, (n, v) in expected.items():
        assert got[part][0] == n and got[part][1] == pytest.approx(v), part


def test_training_writes_the_lambda_record_and_a_resume_keeps_it(tiny_data, tmp_path):
    run = make_run("tiny", get_preset("tiny"), "smear-hold-0.5-2", 0, tiny_data,
                   train_overrides=dict(steps=4, n_checkpoints=1, checkpoint_every=2, val_tokens=512))
    train(tmp_path / "run", run, stop_at=2, callbacks=(LambdaGradRecorder(write_every=1),), progress=False)
    first = pd.read_parquet(tmp_path / "run" / LAMBDA_FILE)
    assert sorted(first.step.unique()) == [0, 1]
    train(tmp_path / "run", run, resume=True, callbacks=(LambdaGradRecorder(write_every=1),), progress=False)
    table = pd.read_parquet(tmp_path / "run" / LAMBDA_FILE)
    total = table[table.by == "total"].set_index("step")
    assert list(total.index) == [0, 1, 2, 3] and len(table) == 4 * len(PARTS)
    assert list(total["lambda"][:3]) == [1.0, 1.0, 1.0] and total["lambda"][3] != 1.0  # held 2 steps, then learned
    assert list(total.grad[:2]) == [0.0, 0.0] and (total.grad[2:] != 0).all()
    torch.testing.assert_close(torch.tensor(total.pressure[2:].values), torch.tensor(total.grad[2:].values), rtol=1e-3, atol=0)
    assert total.pressure[0] == 0 and total.pressure[1] != 0  # at init the zero head sends no gradient back
    m, meta = ckpt.load_model(tmp_path / "run")  # the checkpoint carries the step the schedule reads
    assert int(m.train_step) == 4 and meta["arm"] == "smear-hold-0.5-2"


def test_annealed_checkpoint_is_the_baseline_forward(tiny_data, tmp_path):
    run = make_run("tiny", get_preset("tiny"), "dose-0.8-anneal-2", 0, tiny_data,
                   train_overrides=dict(steps=3, n_checkpoints=1, val_tokens=512))
    train(tmp_path / "run", run, progress=False)
    m, _ = ckpt.load_model(tmp_path / "run")
    assert int(m.train_step) == 3 and float(m.smear_lambda) == 0.0
    _, ca = cache(m, tokens())
    assert torch.equal(ca["hook_smear_out"], torch.zeros_like(ca["hook_smear_out"]))


# ---- size-sweep presets ------------------------------------------------------------------------------------------


def test_size_sweep_presets_change_the_width_alone():
    base = get_preset("cpu-small")
    widths = {}
    for name in ("cpu-small-d96", "cpu-small", "cpu-small-d192"):
        p = get_preset(name)
        assert p.train == base.train and (p.tokenizer, p.bpe_vocab) == (base.tokenizer, base.bpe_vocab)
        assert p.model.n_heads == base.model.n_heads and p.model.d_head * p.model.n_heads == p.model.d_model
        assert p.model.attn_scale * p.model.d_head == pytest.approx(12.8)  # the record's logit bound
        assert replace(p.model, d_model=128, d_head=64, attn_scale=base.model.attn_scale) == base.model
        widths[name] = p.model.d_model
    assert widths == {"cpu-small-d96": 96, "cpu-small": 128, "cpu-small-d192": 192}
