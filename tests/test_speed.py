import pytest
import torch
from torch import Tensor
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _adjust_lr, _zeropower_via_newtonschulz

from trainer.config import get_preset
from trainer.model import GPT
from trainer.optim import build_optimizers, native_bf16_matmul, zeropower_batched


@pytest.mark.parametrize("shape", [(128, 128), (128, 512), (512, 128), (1, 12)])
def test_batched_newton_schulz_is_torchs_bit_for_bit(shape):
    g = torch.randn(6, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    one_by_one = torch.stack([_zeropower_via_newtonschulz(m, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS) for m in g])
    assert torch.equal(zeropower_batched(g, 5, native_bf16=True), one_by_one)


def ulps_apart(x: Tensor, y: Tensor) -> Tensor:
    """How many bf16 steps apart two bf16 tensors are (their bit patterns, as ordered integers)."""
    def ordered(t):
        bits = t.view(torch.int16).int()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordered(x) - ordered(y)).abs()


@pytest.mark.parametrize("shape", [(128, 128), (128, 512), (512, 128)])
def test_newton_schulz_through_fp32_rounds_each_op_as_a_bf16_gemm(shape):
    """The AVX2 path (fp32 GEMMs on bf16 values, rounded to bf16): one iteration agrees with torch's bf16 GEMMs
    to one bf16 step nearly everywhere; five stay within the small spread rounding makes."""
    g = torch.randn(6, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    one, one_native = zeropower_batched(g, 1, native_bf16=False), zeropower_batched(g, 1, native_bf16=True)
    assert one.dtype == torch.bfloat16 and one.shape == g.shape
    ulps = ulps_apart(one, one_native)
    assert ulps.max() <= 1 and (ulps > 0).float().mean() < 0.01
    five, five_native = zeropower_batched(g, 5, native_bf16=False), zeropower_batched(g, 5, native_bf16=True)
    assert ((five.float() - five_native.float()).norm() / five_native.float().norm()) < 0.03


def test_bf16_gemms_are_native_on_gpus_and_asked_of_mkldnn_on_cpus():
    assert native_bf16_matmul(torch.device("cuda"))
    assert native_bf16_matmul(torch.device("cpu")) == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def reference_muon_step(params, bufs, lr, mom):
    """The per-matrix Muon step this replaced: torch's Newton–Schulz on one matrix at a time."""
    for p, buf in zip(params, bufs):
        buf.lerp_(p.grad, 1 - mom)
        update = p.grad.lerp(buf, mom)
        ortho = torch.stack([_zeropower_via_newtonschulz(m, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS)
                             for m in update.reshape(-1, *update.shape[-2:])])
        p.add_(ortho.view_as(p).to(p.dtype), alpha=-_adjust_lr(lr, "original", p.shape[-2:]))


def test_muon_step_is_the_per_matrix_step_bit_for_bit():
    """q, k, v, o stacks, c_fc, c_proj and the smear gate move exactly as with one Newton–Schulz per matrix
    (with torch's bf16 GEMMs, whatever this CPU has)."""
    preset = get_preset("tiny")
    model, ref = GPT(preset.model, seed=0), GPT(preset.model, seed=0)
    _, muon = build_optimizers(model, preset.train)
    muon.native_bf16 = True
    params = [p for g in muon.param_groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    ref_params = [dict(ref.named_parameters())[names[id(p)]] for p in params]
    assert any(p.ndim == 3 for p in params) and any(p.shape[-2] != p.shape[-1] for p in params)
    bufs = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p, q in zip(params, ref_params):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        lr, mom = muon.param_groups[0]["lr"], muon.param_groups[0]["momentum"]
        muon.step()
        with torch.no_grad():
            reference_muon_step(ref_params, bufs, lr, mom)
        assert all(torch.equal(p, q) for p, q in zip(params, ref_params))


def test_cpu_attention_under_bf16_autocast_is_computed_in_fp32():
    """CPU's bf16 flash-attention backward is slower than fp32's: under autocast sdpa attends in fp32."""
    from trainer.model import dense_mask, sdpa

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 32, 16, generator=gen).bfloat16() for _ in range(3))
    mask = dense_mask(torch.zeros(2, 32, dtype=torch.long), 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = sdpa(q, k, v, mask, 0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                                scale=0.25).bfloat16()
    assert z.dtype == torch.bfloat16 and torch.equal(z, expected)
