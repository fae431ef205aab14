"""Training-throughput levers of the small presets, before and after, on one thread as the demo runs them.

    python benchmarks/speed_levers.py [--preset cpu-small] [--steps 4] [--reps 5] [--seeds 3]

The demo trains two one-thread processes on two cores, so everything here runs on one thread and is
timed in that thread's CPU time (time.thread_time): on a shared machine the wall clock measures the
other processes as much as ours, while CPU time only counts our thread's work (wall time is shown too).
Variants run interleaved, in rotating order, --reps times; figures are medians, speed-ups the median
of per-repetition ratios against "before".

1. Matmul peaks of one thread, fp32 and bf16 (square torch.mm, best GFLOP/s of CPU time).
2. Full training steps (trainer.train's loop body: schedules, batch, forward, backward of the summed
   loss, finiteness check, Adam, Muon), tokens per CPU-second and MFU against both peaks:
     before            fp32, Muon orthogonalising one matrix at a time (the replaced optimiser step)
     batched Muon      fp32, one batched Newton–Schulz per matrix shape (kept; bit for bit the same)
     Muon fp32 GEMMs   + the Newton–Schulz GEMMs in fp32, rounded to bf16 (kept where the CPU has no
                       bf16 GEMMs, as on AVX2: torch's bf16 fallback there is ~20× slower than fp32)
     bf16 (bf16 attn)  + autocast=bf16 with CPU attention in bf16 (what autocast did before)
     bf16              + autocast=bf16, attention in fp32 (kept; an option, the study stays fp32)
   (the two bf16 rows orthogonalise as the trainer does on this machine: bf16 GEMMs where they are native)
3. Several seeds as one batched model (torch.func: stack_module_state + vmap over the stacked weights
   and each seed's own batch): forward + backward of --seeds runs, batched vs one after another,
   checked bit for bit against the separate runs.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_benchmark import random_bos_tokens  # noqa: E402

import trainer.model as model_module  # noqa: E402
from trainer.config import PRESETS, get_preset, replace  # noqa: E402
from trainer.data import BatchLoader  # noqa: E402
from trainer.model import GPT  # noqa: E402
from trainer.optim import Muon, apply_schedules, build_optimizers, window_blocks  # noqa: E402
from trainer.perf import cpu_name, keep_freed_memory, model_flops_per_token  # noqa: E402


def median(xs) -> float:
    return float(statistics.median(xs))


def peak_gflops(dtype: torch.dtype, n: int = 1024, trials: int = 5) -> float:
    """Best GFLOP/s of one thread's n×n matmul, in CPU time."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(trials):
        t0 = time.thread_time()
        for _ in range(4):
            torch.mm(a, b, out=out)
        best = max(best, 4 * 2 * n**3 / max(time.thread_time() - t0, 1e-9) / 1e9)
    return best


class PerMatrixMuon(Muon):
    """The Muon step before batching: torch's Newton–Schulz on one matrix at a time."""

    @torch.no_grad()
    def step(self, closure=None) -> None:
        from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _adjust_lr, _zeropower_via_newtonschulz

        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                update = p.grad.lerp(buf, mom)
                ortho = torch.stack([_zeropower_via_newtonschulz(m, (DEFAULT_A, DEFAULT_B, DEFAULT_C),
                                                                 group["ns_steps"], EPS)
                                     for m in update.reshape(-1, *update.shape[-2:])])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(ortho.view_as(p).to(p.dtype), alpha=-_adjust_lr(lr, "original", p.shape[-2:]))


def bf16_sdpa(q, k, v, mask, scale):
    """CPU attention as autocast ran it before: in bf16."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class Variant:
    """One configuration's model, optimisers and loader, stepped as trainer.train's loop does."""

    def __init__(self, name: str, preset, tokens: np.ndarray, *, bf16: bool, per_matrix_muon: bool,
                 bf16_attention: bool = False, native_bf16_muon: bool | None = True):
        self.name, self.cfg = name, preset.train
        self.mcfg = replace(preset.model, smear=True)
        self.bf16, self.bf16_attention = bf16, bf16_attention
        torch.manual_seed(self.cfg.seed)
        self.model = GPT(self.mcfg, seed=self.cfg.seed)
        self.adam, self.muon = build_optimizers(self.model, self.cfg)
        self.muon.native_bf16 = native_bf16_muon
        if per_matrix_muon:
            self.muon.__class__ = PerMatrixMuon
        self.loader = BatchLoader(tokens, self.mcfg.bos_id, self.cfg.batch_size, self.cfg.seq_len, self.cfg.seed,
                                  max_doc_len=self.cfg.max_doc_len)
        self.i, self.cpu, self.wall, self.rep_cpu = 0, [], [], []

    def step(self) -> None:
        cfg, model = self.cfg, self.model
        model.set_windows(window_blocks(self.i, cfg))
        apply_schedules(self.i, cfg, self.adam, self.muon)
        inputs, targets = self.loader.next_batch()
        original = model_module.sdpa
        if self.bf16_attention:
            model_module.sdpa = bf16_sdpa
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext():
                loss = model(inputs, targets, return_type="loss")
        finally:
            model_module.sdpa = original
        (loss * cfg.batch_size * cfg.seq_len).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not (np.isfinite(loss.item()) and bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))):
            raise FloatingPointError(f"{self.name}: non-finite loss or gradient at step {self.i}")
        self.adam.step()
        self.muon.step()
        model.zero_grad(set_to_none=True)
        self.i += 1

    def run(self, n: int, record: bool = True) -> None:
        cpu = []
        for _ in range(n):
            c0, w0 = time.thread_time(), time.perf_counter()
            self.step()
            cpu.append(time.thread_time() - c0)
            if record:
                self.wall.append(time.perf_counter() - w0)
        if record:
            self.cpu += cpu
            self.rep_cpu.append(median(cpu))


def batched_seeds(preset, tokens: np.ndarray, n_seeds: int, reps: int) -> None:
    """Forward + backward of n_seeds runs as one vmapped model vs one after another; bits and time."""
    from torch.func import functional_call, stack_module_state, vmap

    cfg, mcfg = preset.train, replace(preset.model, smear=True)
    models = [GPT(mcfg, seed=s) for s in range(n_seeds)]
    for m in models:
        m.set_windows(window_blocks(0, cfg))
    loaders = [BatchLoader(tokens, mcfg.bos_id, cfg.batch_size, cfg.seq_len, s, max_doc_len=cfg.max_doc_len)
               for s in range(n_seeds)]
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")
    shared = {k: v[0] for k, v in buffers.items()}  # windows and YaRN state follow the one schedule

    def loss_of(p, x, y):
        return functional_call(skeleton, (p, shared), (x, y), dict(return_type="loss"))

    batched = vmap(loss_of)
    scale = cfg.batch_size * cfg.seq_len

    def separate(batch):
        for m, (x, y) in zip(models, batch):
            (m(x, y, return_type="loss") * scale).backward()

    def together(batch):
        (batched(params, torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])).sum() * scale).backward()

    def clear():
        for m in models:
            m.zero_grad(set_to_none=True)
        for v in params.values():
            v.grad = None

    batch = [ld.next_batch() for ld in loaders]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        together(batch)
    separate(batch)
    named = [dict(m.named_parameters()) for m in models]
    unequal = [(k, i) for k, v in params.items() for i in range(n_seeds) if not torch.equal(named[i][k].grad, v.grad[i])]
    fallbacks = sorted({str(w.message).split("batching rule for ")[1].split(".")[0]
                        for w in caught if "batching rule for" in str(w.message)})
    t_sep, t_tog = [], []
    for _ in range(reps):
        batch = [ld.next_batch() for ld in loaders]
        clear()
        c0 = time.thread_time()
        separate(batch)
        t_sep.append(time.thread_time() - c0)
        clear()
        c0 = time.thread_time()
        together(batch)
        t_tog.append(time.thread_time() - c0)
    tokens_n = n_seeds * scale
    print(f"\n== 3. {n_seeds} seeds as one vmapped model: forward + backward, fp32 ==")
    print(f"gradients bit-equal to separate runs: {len(params) * n_seeds - len(unequal)} of {len(params) * n_seeds}"
          + (f" (differ: {unequal[:4]})" if unequal else ""))
    print(f"ops without a vmap batching rule (run as a loop): {', '.join(fallbacks) or 'none'}")
    print(f"{'':>12} {'CPU ms':>8} {'tokens/CPU-s':>13}")
    for label, ts in (("separate", t_sep), ("vmapped", t_tog)):
        print(f"{label:>12} {median(ts) * 1e3:>8.0f} {tokens_n / median(ts):>13.0f}")
    print(f"speed-up (median of paired reps): {median([a / b for a, b in zip(t_sep, t_tog)]):.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small", choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per repetition")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--seeds", type=int, default=3, help="runs batched into one model in part 3 (0: skip)")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    preset = get_preset(args.preset)
    print(f"smearlens training levers: preset {args.preset}, {preset.train.batch_size} rows × {preset.train.seq_len} "
          f"tokens, one thread, {args.steps} steps × {args.reps} reps per variant")
    print(f"torch {torch.__version__}, {cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    p32, p16 = max(peak_gflops(torch.float32) for _ in range(2)), max(peak_gflops(torch.bfloat16) for _ in range(2))
    print(f"\n== 1. one thread's matmul peak (1024², CPU time): fp32 {p32:.1f} GFLOP/s, bf16 {p16:.1f} GFLOP/s "
          f"({p16 / p32:.2f}×) ==")

    tokens = random_bos_tokens(preset.model.vocab_size, preset.model.bos_id, 2_000_000)
    variants = [Variant("before", preset, tokens, bf16=False, per_matrix_muon=True),
                Variant("batched Muon", preset, tokens, bf16=False, per_matrix_muon=False),
                Variant("Muon fp32 GEMMs", preset, tokens, bf16=False, per_matrix_muon=False, native_bf16_muon=False),
                Variant("bf16 (bf16 attn)", preset, tokens, bf16=True, per_matrix_muon=False, bf16_attention=True,
                        native_bf16_muon=None),
                Variant("bf16", preset, tokens, bf16=True, per_matrix_muon=False, native_bf16_muon=None)]
    for v in variants:
        v.run(args.warmup, record=False)
    for r in range(args.reps):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            v.run(args.steps)

    v0 = variants[0]
    flops = model_flops_per_token(v0.mcfg, v0.cfg.seq_len, tuple(int(w) for w in v0.model.window_blocks))
    tps = v0.cfg.batch_size * v0.cfg.seq_len
    print(f"\n== 2. training steps, one thread: {flops / 1e6:.2f} MFLOP/token (trainer.perf) ==")
    print(f"{'variant':>17} {'CPU ms':>7} {'wall ms':>8} {'tokens/CPU-s':>13} {'MFU fp32pk':>11} {'MFU bf16pk':>11} "
          f"{'speed-up':>9}")
    for v in variants:
        t = median(v.cpu)
        rate = flops * tps / t / 1e9
        up = median([a / b for a, b in zip(v0.rep_cpu, v.rep_cpu)])
        print(f"{v.name:>17} {t * 1e3:>7.1f} {median(v.wall) * 1e3:>8.0f} {tps / t:>13.0f} {rate / p32:>11.1%} "
              f"{rate / p16:>11.1%} {up:>8.2f}×")
    if args.seeds:
        batched_seeds(preset, tokens, args.seeds, args.reps)
    print(f"\nload average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
