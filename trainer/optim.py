"""The record's optimisers and schedules.

Muon (lr 0.05, momentum warmed 0.85→0.95) takes the block matrices and the smear gate; Adam
(lr 0.008, betas 0.8/0.95) takes embeddings (lr ×75), the head (×1) and the scalars (×5), and with
the scalars the `canon4` arm's per-offset vectors and `smeared-key`'s per-head s (vectors go to Adam).
Both share one learning-rate multiplier: flat, then a linear cooldown to 0.1 over the last half. `TrainConfig.smear_lr_mult`
scales the step of λ alone, one entry of the scalars (see `adam_step`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _adjust_lr

from trainer.config import TrainConfig
from trainer.model import GPT


class Muon(torch.optim.Optimizer):
    """`torch.optim.Muon` for stacks of matrices.

    torch's Muon only takes 2-D parameters; the record keeps q, k, v and o in one (4, d, d)
    tensor and orthogonalises each matrix on its own. This applies torch's Newton–Schulz
    iteration and learning-rate adjustment to every matrix of a stack, with the same Nesterov
    momentum as torch (and the record). `native_bf16` picks the Newton–Schulz GEMMs (see `zeropower_batched`;
    None: bf16 where this machine has bf16 GEMMs).
    """

    def __init__(self, params, lr: float, momentum: float, weight_decay: float = 0.0, ns_steps: int = 5,
                 native_bf16: bool | None = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.native_bf16 = native_bf16

    @torch.no_grad()
    def step(self, closure=None) -> None:
        todo: list[tuple[Tensor, Tensor, dict]] = []  # (parameter, momentum update, its group)
        for group in self.param_groups:
            mom = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf: Tensor = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                todo.append((p, p.grad.lerp(buf, mom), group))
        # Every matrix of one shape (and step count) is orthogonalised in one batched Newton–Schulz:
        # bit-for-bit torch's per-matrix iteration where bf16 GEMMs are native (checked in tests/test_speed.py),
        # in a third of the ops and half the time for cpu-small's 30 small matrices.
        by_shape: dict[tuple, list[int]] = {}
        for i, (p, update, group) in enumerate(todo):
            by_shape.setdefault((*update.shape[-2:], group["ns_steps"]), []).append(i)
        ortho: list[Tensor | None] = [None] * len(todo)
        for (rows, cols, ns_steps), idx in by_shape.items():
            stacked = torch.cat([todo[i][1].reshape(-1, rows, cols) for i in idx])
            sizes = [todo[i][1].numel() // (rows * cols) for i in idx]
            done = zeropower_batched(stacked, ns_steps, self.native_bf16).split(sizes)
            for i, o in zip(idx, done):
                ortho[i] = o
        for (p, _, group), o in zip(todo, ortho):
            lr = group["lr"]
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(o.view_as(p).to(p.dtype), alpha=-_adjust_lr(lr, "original", p.shape[-2:]))


def native_bf16_matmul(device: torch.device) -> bool:
    """Whether torch multiplies bf16 matrices on `device` with real bf16 kernels: on a GPU, and on a CPU where
    mkldnn has bf16 (AVX-512 or AMX). On an AVX2-only CPU torch's bf16 GEMM fallback is far slower than fp32
    (an AMD EPYC: 0.9 against 73.9 GFLOP/s at 1024², one thread; Muon was 78% of a cpu-small step)."""
    return device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def zeropower_batched(G: Tensor, ns_steps: int, native_bf16: bool | None = None) -> Tensor:
    """torch's `_zeropower_via_newtonschulz` on each matrix of a (n, rows, cols) stack at once (bf16 out):
    the same bf16 quintic iteration, with batched matmuls in place of 2-D ones.

    Where bf16 GEMMs are not native (`native_bf16_matmul`, or `native_bf16=False`), each GEMM runs in fp32
    on the bf16 values and its result is rounded to bf16: bf16 storage with fp32 accumulation, as mkldnn and
    GPU tensor cores compute. Op by op this agrees with torch's bf16 GEMMs to within one bf16 step (tested);
    over the five iterations the roundings compound, so it is close to torch's result, not bit for bit.
    """
    if native_bf16 is None:
        native_bf16 = native_bf16_matmul(G.device)
    a, b, c = DEFAULT_A, DEFAULT_B, DEFAULT_C
    X = G.bfloat16()
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=EPS)
    as_bf16 = (lambda t: t) if native_bf16 else (lambda t: t.bfloat16().float())
    X = X if native_bf16 else X.float()
    for _ in range(ns_steps):
        gram = as_bf16(X @ X.mT)
        X = as_bf16(torch.baddbmm(X, as_bf16(torch.baddbmm(gram, gram, gram, beta=b, alpha=c)), X, beta=a))
    X = X.bfloat16()
    return X.mT if tall else X


def build_optimizers(model: GPT, cfg: TrainConfig) -> tuple[torch.optim.Adam, Muon]:
    """Split parameters as the record does; every parameter lands in exactly one group."""
    named = dict(model.named_parameters())
    embeds = [p for n, p in named.items() if n.startswith(("embed.", "value_embeds."))]
    head = [named["lm_head.weight"]]
    # vectors of the arms go with the scalars: canon_w, and smeared-key's per-head s (blocks.{l}.attn.key_smear)
    scalars = [named["scalars"]] + [p for n, p in named.items() if n == "canon_w" or n.endswith(".key_smear")]
    muon = [p for n, p in named.items() if (n.startswith("blocks.") and p.ndim >= 2) or n.startswith("smear_gate.")]
    assert len(embeds) + len(head) + len(scalars) + len(muon) == len(named), "a parameter has no optimiser"
    groups = [
        dict(params=embeds, lr=cfg.adam_lr * cfg.embed_lr_mul),
        dict(params=head, lr=cfg.adam_lr * cfg.head_lr_mul),
        dict(params=scalars, lr=cfg.adam_lr * cfg.scalar_lr_mul),
    ]
    fused = next(model.parameters()).is_cuda
    adam = torch.optim.Adam(groups, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=0.0, fused=fused or None)
    muon_opt = Muon(muon, lr=cfg.muon_lr, momentum=cfg.muon_momentum[1])
    for opt in (adam, muon_opt):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return adam, muon_opt


@torch.no_grad()
def adam_step(adam: torch.optim.Optimizer, model: GPT, cfg: TrainConfig) -> None:
    """`adam.step()`, with λ's update scaled by `smear_lr_mult`. λ shares the scalars tensor with other
    entries, so it cannot have a param group of its own; but Adam's update is lr · m̂/(√v̂ + eps) with
    moments that do not depend on lr (and no weight decay), so scaling λ's change after the step is
    exactly a step at lr × smear_lr_mult for that entry."""
    if cfg.smear_lr_mult == 1 or not model.arm_spec.learned_lambda:
        adam.step()
        return
    i = 5 * model.config.n_layers
    before = model.scalars[i].clone()
    adam.step()
    model.scalars[i] = before + cfg.smear_lr_mult * (model.scalars[i] - before)


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """1 until the cooldown, then linear down to final_lr_frac at the last step."""
    x = step / cfg.steps
    if x < 1 - cfg.cooldown_frac:
        return 1.0
    w = (1 - x) / cfg.cooldown_frac
    return w + (1 - w) * cfg.final_lr_frac


def muon_momentum(step: int, cfg: TrainConfig) -> float:
    frac = min(step / max(cfg.momentum_warmup_steps, 1), 1.0)
    lo, hi = cfg.muon_momentum
    return (1 - frac) * lo + frac * hi


def window_blocks(step: int, cfg: TrainConfig) -> int:
    """Long window (blocks) for a training step: one schedule entry per equal part of training."""
    return cfg.ws_schedule[min(int(len(cfg.ws_schedule) * step / (cfg.steps + 1)), len(cfg.ws_schedule) - 1)]


def apply_schedules(step: int, cfg: TrainConfig, adam: torch.optim.Optimizer, muon: Muon) -> None:
    mult = lr_multiplier(step, cfg)
    for opt in (adam, muon):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * mult
    for group in muon.param_groups:
        group["momentum"] = muon_momentum(step, cfg)
