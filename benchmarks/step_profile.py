"""Where a training step's CPU time goes: every aten op timed in its thread's CPU time.

    python benchmarks/step_profile.py [--preset cpu-small] [--batch-size B] [--autocast bf16] [--steps 10]

torch.profiler reports wall time, which on a shared machine charges an op for the time its thread
spent descheduled (measured here under load: a 1 ms division shown as 20 ms). This times each op
with time.thread_time_ns inside a TorchDispatchMode instead, one thread, over --steps steps of
trainer.train's loop body, and prints the step's phases (without the mode), the op families
(GEMM, attention, the loss head's element-wise work, the rest; forward + backward, Adam, Muon)
and the costliest ops.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_benchmark import random_bos_tokens  # noqa: E402

from trainer.config import PRESETS, get_preset, replace  # noqa: E402
from trainer.data import BatchLoader  # noqa: E402
from trainer.model import GPT  # noqa: E402
from trainer.optim import apply_schedules, build_optimizers, window_blocks  # noqa: E402
from trainer.perf import keep_freed_memory  # noqa: E402

GEMMS = ("mm", "addmm", "bmm", "baddbmm")


class OpTimer(TorchDispatchMode):
    """CPU nanoseconds and calls per (phase, op, first input's shape)."""

    def __init__(self):
        super().__init__()
        self.phase = "?"
        self.acc: dict = collections.defaultdict(lambda: [0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        dt = time.thread_time_ns() - t0
        first = args[0] if args else None
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        entry = self.acc[self.phase, func.__name__, tuple(first.shape) if isinstance(first, torch.Tensor) else (), shapes]
        entry[0] += 1
        entry[1] += dt
        return out


def family(phase: str, op: str, shapes: tuple, vocab: int) -> str:
    base = op.split(".")[0]
    kind = "gemm" if base in GEMMS else "attention" if "attention" in base else "element-wise"
    head = any(vocab in s for s in shapes)  # the (tokens, padded vocab) logits or the head's weight
    where = phase if phase in ("adam", "muon") else "fwd+bwd"
    return f"{where} {'head ' if head and where == 'fwd+bwd' else ''}{kind}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small", choices=list(PRESETS))
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--autocast", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    preset = get_preset(args.preset)
    cfg = replace(preset.train, **({"batch_size": args.batch_size} if args.batch_size else {}))
    mcfg = replace(preset.model, smear=True)
    tokens = random_bos_tokens(mcfg.vocab_size, mcfg.bos_id, 2_000_000)
    torch.manual_seed(cfg.seed)
    model = GPT(mcfg, seed=cfg.seed)
    adam, muon = build_optimizers(model, cfg)
    loader = BatchLoader(tokens, mcfg.bos_id, cfg.batch_size, cfg.seq_len, cfg.seed, max_doc_len=cfg.max_doc_len)
    timer = OpTimer()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.autocast == "bf16" else nullcontext

    def step(i: int) -> dict:
        marks: dict = {}

        def phase(name: str) -> None:
            timer.phase, marks[name] = name, time.thread_time()

        phase("schedules+batch")
        model.set_windows(window_blocks(i, cfg))
        apply_schedules(i, cfg, adam, muon)
        inputs, targets = loader.next_batch()
        phase("forward")
        with autocast():
            loss = model(inputs, targets, return_type="loss")
        phase("backward")
        (loss * cfg.batch_size * cfg.seq_len).backward()
        phase("check")
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        loss.item()
        bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        phase("adam")
        adam.step()
        phase("muon")
        muon.step()
        phase("zero_grad")
        model.zero_grad(set_to_none=True)
        phase("end")
        names = list(marks)
        return {a: marks[b] - marks[a] for a, b in zip(names, names[1:])}

    for i in range(3):
        step(i)
    n = args.steps
    phases: collections.Counter = collections.Counter()
    for i in range(3, 3 + n):
        phases.update(step(i))
    total = sum(phases.values()) / n
    print(f"{args.preset}, {cfg.batch_size} rows × {cfg.seq_len}, {args.autocast}, one thread: "
          f"{total * 1e3:.1f} CPU ms a step ({cfg.batch_size * cfg.seq_len / total:.0f} tokens per CPU-second)")
    print("  " + ", ".join(f"{k} {v / n * 1e3:.1f}" for k, v in phases.items()))
    with timer:
        for i in range(3 + n, 3 + 2 * n):
            step(i)
    acc = timer.acc
    ops = sum(v[1] for v in acc.values()) / n / 1e6
    calls = sum(v[0] for v in acc.values()) / n
    print(f"ops' own CPU time {ops:.1f} ms a step over {calls:.0f} op calls (the rest is Python and dispatch)")
    fams: dict = collections.defaultdict(float)
    for (ph, op, _, shapes), (_, dt) in acc.items():
        fams[family(ph, op, shapes, mcfg.padded_vocab)] += dt / n / 1e6
    print(f"\n{'op family':>28} {'ms':>7} {'share':>6}")
    for k, v in sorted(fams.items(), key=lambda kv: -kv[1]):
        print(f"{k:>28} {v:>7.1f} {v / ops:>6.1%}")
    by_op: dict = collections.defaultdict(lambda: [0, 0])
    for (ph, op, first, _), (c, dt) in acc.items():
        by_op[ph, op, first][0] += c
        by_op[ph, op, first][1] += dt
    print(f"\n{'phase':>9} {'op':>48} {'first input':>20} {'calls':>6} {'ms':>7}")
    for (ph, op, first), (c, dt) in sorted(by_op.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{ph:>9} {op[:48]:>48} {str(first):>20} {c / n:>6.0f} {dt / n / 1e6:>7.2f}")


if __name__ == "__main__":
    main()
