"""Checks that need a GPU: flex_attention against the explicit path, the compiled training step against eager.

They skip without CUDA (as on CI); `benchmarks/gpu_check.sh` runs them on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from trainer.config import get_preset, replace
from trainer.model import GPT
from trainer.optim import window_blocks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by benchmarks/gpu_check.sh)")


def documents(vocab: int, bos: int, T: int, seed: int = 0) -> torch.Tensor:
    """One row of random tokens cut into documents of varied length, each starting with BOS."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab - 1, (1, T), generator=gen)
    tokens[tokens >= bos] += 1  # BOS only where a document starts
    starts = torch.cumsum(torch.randint(20, 300, (T // 20,), generator=gen), 0)
    tokens[0, 0] = bos
    tokens[0, starts[starts < T]] = bos
    return tokens


def randomized(preset: str, arm_smear: bool, seed: int = 0) -> GPT:
    """Every weight random (zero-initialised ones too), so attention and the smear both matter."""
    model = GPT(replace(get_preset(preset).model, smear=arm_smear), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.cuda()


@pytest.mark.parametrize("preset", ["cpu-small", "speedrun-124m"])
def test_flex_attention_matches_the_explicit_path(preset):
    model = randomized(preset, True).eval()
    cfg = get_preset(preset).train
    model.set_windows(window_blocks(cfg.steps, cfg))  # the widest windows: masks matter most
    tokens = documents(model.config.vocab_size, model.config.bos_id, 4096).cuda()
    with torch.no_grad():
        flex = model(tokens, attn_impl="flex").float()
        explicit = model(tokens, attn_impl="explicit").float()
    assert torch.allclose(flex, explicit, atol=2e-3, rtol=2e-3), (flex - explicit).abs().max().item()


def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    eager = randomized("cpu-small", True)
    compiled_model = randomized("cpu-small", True)
    compiled = torch.compile(compiled_model)
    tokens = documents(eager.config.vocab_size, eager.config.bos_id, 2049).cuda()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    losses, grads = [], []
    for model, fwd in ((eager, eager), (compiled_model, compiled)):
        loss = fwd(inputs, targets, return_type="loss")
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        a, b = grads[0][name], grads[1][name]
        scale = a.abs().max().clamp_min(1e-12)
        assert ((a - b).abs().max() / scale) < 1e-2, name
