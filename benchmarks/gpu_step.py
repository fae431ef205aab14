"""GPU training step of speedrun-124m, both arms: ms per step and tokens/s against the record.

    python benchmarks/gpu_step.py [--steps 20] [--warmup 3] [--arms smear baseline] [--json out.json]
    python benchmarks/gpu_step.py --device cpu --tiny --steps 2     # smoke test of the same code path

One GPU does one rank's share of a record step: 393,216 tokens a step over 8 GPUs is 49,152 per
GPU, one row of our BOS-aligned loader (batch 1 × 49,152 tokens, documents cut at 2,048 tokens)
of synthetic tokens. Each step is the training loop's body (trainer/train.py): window and
learning-rate schedules, the batch, forward under bf16 autocast through the `torch.compile`d model
(flex_attention with document and sliding-window masks: the model's path on CUDA), backward, the
loop's loss and gradient checks, fused Adam and Muon. The record's step time also varies with the
window, so each arm is timed at the three training windows (3, 7, 11 blocks: a third of the run
each) and the mean of the three is compared with the record's per-GPU step, 152.8 s / 1645 steps =
92.9 ms on 8×H100 (target ≤ 1.15×), and the smear arm with the baseline (target ≤ 1.02).

Not counted against the record but worth knowing when reading the ratio: on one GPU our Muon
orthogonalises every matrix, where the record's shares them over 8 GPUs; and the record's lm_head
runs in FP8. Without CUDA (and without --device cpu) the script says it measured nothing and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from trainer.config import get_preset, replace
from trainer.data import BatchLoader
from trainer.model import GPT
from trainer.optim import apply_schedules, build_optimizers, window_blocks
from trainer.train import autocast_for

RECORD_STEPS, RECORD_SECONDS, RECORD_GPUS = 1645, 152.8, 8
RECORD_STEP_MS = 1000 * RECORD_SECONDS / RECORD_STEPS  # 92.9 ms, each GPU doing its share
RECORD_TOKENS_PER_STEP = 393_216
TARGET_RATIO, TARGET_SMEAR = 1.15, 1.02


def synthetic_tokens(vocab: int, bos: int, n_tokens: int, seed: int = 0) -> np.ndarray:
    """A random stream of documents that each start with BOS; lengths log-normal around 400 tokens
    (FineWeb's median is about that), so the 2,048-token cut and many short documents both occur."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab - 1, n_tokens, dtype=np.int64)
    tokens[tokens >= bos] += 1  # BOS only where a document starts
    lengths = np.clip(rng.lognormal(np.log(400), 1.0, n_tokens // 50), 8, 20_000).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    tokens[starts[starts < n_tokens]] = bos
    return tokens


class Arm:
    """One arm's model, optimisers and loader, stepped as trainer.train's loop steps them."""

    def __init__(self, preset_name: str, smear: bool, device: torch.device, compile: bool, batch: int, seq_len: int,
                 tokens: np.ndarray):
        preset = get_preset(preset_name)
        self.cfg = replace(preset.train, batch_size=batch, seq_len=seq_len)
        self.mcfg = replace(preset.model, smear=smear)
        self.device = device
        torch.manual_seed(self.cfg.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # each arm's own peak
        self.model = GPT(self.mcfg, seed=self.cfg.seed).to(device)
        self.adam, self.muon = build_optimizers(self.model, self.cfg)  # fused Adam on CUDA
        self.forward = torch.compile(self.model) if compile else self.model
        self.autocast = autocast_for(self.cfg, device)
        self.loader = BatchLoader(tokens, self.mcfg.bos_id, batch, seq_len, self.cfg.seed,
                                  max_doc_len=self.cfg.max_doc_len)

    def step_in_third(self, third: int, i: int) -> int:
        """The i-th step number taken from the middle half of that third of the run, so that the
        window and learning rates are those of the real run and stay in that third."""
        third_len = (self.cfg.steps + 1) / 3
        return int((third + 0.25) * third_len) + i % max(1, int(third_len / 2))

    def step(self, step: int) -> float:
        """One training step; returns its wall time in seconds (the GPU synchronised both ends)."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.model.set_windows(window_blocks(step, self.cfg))
        apply_schedules(step, self.cfg, self.adam, self.muon)
        inputs, targets = self.loader.next_batch()
        with self.autocast:
            loss = self.forward(inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True),
                                return_type="loss")
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        value = loss.item()  # the loop logs the loss and checks it and the gradients every step
        finite = np.isfinite(value) and bool(torch.isfinite(torch.stack([g.norm() for g in grads]).sum()))
        if not finite:
            raise FloatingPointError(f"non-finite loss or gradient at benchmark step {step} (loss {value})")
        self.adam.step()
        self.muon.step()
        self.model.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0


def measure(arm: Arm, steps: int, warmup: int) -> dict:
    """Median step time at each training window (windows only grow: thirds in order)."""
    per_window = {}
    for third in range(len(arm.cfg.ws_schedule)):
        window = window_blocks(arm.step_in_third(third, 0), arm.cfg)
        for i in range(warmup):  # compiles the new window's graph
            arm.step(arm.step_in_third(third, i))
        times = [arm.step(arm.step_in_third(third, warmup + i)) for i in range(steps)]
        per_window[window] = dict(median_ms=1000 * statistics.median(times), best_ms=1000 * min(times))
    mean_ms = statistics.mean(w["median_ms"] for w in per_window.values())
    tokens = arm.cfg.batch_size * arm.cfg.seq_len
    out = dict(per_window=per_window, mean_ms=mean_ms, tokens_per_step=tokens, tokens_per_s=tokens / (mean_ms / 1000))
    if arm.device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(arm.device) / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (for --tiny smoke runs)")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset and its own batch, not speedrun-124m")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per window (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per window, compilation included (default 3)")
    parser.add_argument("--arms", nargs="+", choices=["smear", "baseline"], default=["smear", "baseline"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on CUDA)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"CUDA is not available here: GPU step time not measured (targets on a GPU: ≤ {TARGET_RATIO}× the "
              f"record's {RECORD_STEP_MS:.1f} ms per step, smear/baseline ≤ {TARGET_SMEAR})")
        return 0
    compile = device.type == "cuda" if args.compile is None else args.compile
    if args.tiny:
        preset_name = "tiny"
        batch, seq_len = get_preset("tiny").train.batch_size, get_preset("tiny").train.seq_len
    else:
        preset_name = "speedrun-124m"
        batch, seq_len = 1, RECORD_TOKENS_PER_STEP // RECORD_GPUS
    mcfg = get_preset(preset_name).model
    tokens = synthetic_tokens(mcfg.vocab_size, mcfg.bos_id, max(4 * batch * (seq_len + 1), 2_000_000 if not args.tiny else 50_000))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{preset_name} on {name}: {batch}×{seq_len} tokens a step, compile={compile}, "
          f"autocast={'bf16' if device.type == 'cuda' else 'fp32'}, {args.steps} timed steps per window")

    results: dict = dict(device=name, preset=preset_name, batch=batch, seq_len=seq_len, compile=compile,
                         record_step_ms=RECORD_STEP_MS, arms={})
    for arm_name in args.arms:
        arm = Arm(preset_name, arm_name == "smear", device, compile, batch, seq_len, tokens)
        r = measure(arm, args.steps, args.warmup)
        if not args.tiny:
            r["vs_record"] = r["mean_ms"] / RECORD_STEP_MS
        results["arms"][arm_name] = r
        windows = ", ".join(f"{w}: {v['median_ms']:.1f}" for w, v in r["per_window"].items())
        line = f"{arm_name:>8}: {r['mean_ms']:8.1f} ms/step  {r['tokens_per_s']:12,.0f} tokens/s  (ms by window {windows})"
        if "vs_record" in r:
            line += f"  {r['vs_record']:.3f}× the record's {RECORD_STEP_MS:.1f} ms (target ≤ {TARGET_RATIO})"
        print(line)
        del arm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if {"smear", "baseline"} <= set(results["arms"]):
        ratio = results["arms"]["smear"]["mean_ms"] / results["arms"]["baseline"]["mean_ms"]
        results["smear_over_baseline"] = ratio
        print(f"smear/baseline step time: {ratio:.3f} (target ≤ {TARGET_SMEAR})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
