"""Training benchmark: matmul peak, tokens/s and MFU, the smear's cost, and kernel time per step.

    python benchmarks/train_benchmark.py [--preset cpu-small] [--batch-size B] [--autocast bf16] [--steps N] [--reps R]

1. The matmul peak of this machine (torch.mm on square matrices, torch's default threads), in
   fp32 (what the trainer computes in on CPU) and bf16 (for reference), best GFLOP/s; and what the
   model's own forward GEMM shapes reach, as a ceiling for the real step.
2. Full training steps of the preset (the train loop's body: schedules, BOS-aligned batch, forward,
   backward, Adam + Muon step) with the real model and optimisers on random BOS-aligned tokens:
   step time, tokens/s and MFU = model FLOPs/token (trainer.perf.model_flops_per_token) × tokens/s
   ÷ peak, against both the fp32 and the bf16 peak (--autocast bf16 steps as `--set autocast=bf16`
   trains). benchmarks/speed_levers.py compares the levers one thread at a time, in CPU time.
3. The smear arm's step time over the baseline's, same preset and batch.
4. User and kernel (sys) CPU time per step (getrusage, all threads) with trainer.perf's
   keep_freed_memory(), and without it in a subprocess (mallopt is process-wide), driven block by
   block from here so that both run interleaved and never at the same time.

The machine is shared and noisy: every timed phase is split into --reps repetitions whose order
rotates (smear, baseline, no-mallopt child), each preceded by a short wait (--wait-idle) for other
processes to leave the CPUs. Every block records how many CPUs other processes used meanwhile
(/proc/stat busy time less our own); a repetition is "quiet" when, in all of its blocks, they left
our threads their CPUs (used under cpu_count − threads + 0.2). Figures are medians over steps, for
all repetitions and for the quiet ones (the targets are judged on the quiet ones when there are at
least 3); ratios also over paired repetitions. With two OpenMP threads on two cores, one busy
neighbour makes every op wait for a descheduled, spin-waiting sibling thread: contended steps are
many times slower (measured here 0.42 s → 12-19 s; OMP_WAIT_POLICY=PASSIVE or --threads 1 ≈ 1 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainer.config import PRESETS, get_preset, replace
from trainer.data import BatchLoader
from trainer.model import GPT
from trainer.optim import apply_schedules, build_optimizers, native_bf16_matmul, window_blocks
from trainer.perf import cpu_name, keep_freed_memory, model_flops_per_token

PEAK_SIZES = (256, 512, 1024, 2048)
TARGET_MFU = 0.30
TARGET_SMEAR = 1.03
QUIET = 0.2  # a block is "quiet" when other processes left our threads their CPUs, give or take this


def quiet_limit() -> float:
    """Most CPUs other processes may use for a block to count as quiet: what our threads leave + QUIET."""
    return max(0, (os.cpu_count() or 1) - torch.get_num_threads()) + QUIET


# ---- helpers ------------------------------------------------------------------------------------

def median(xs) -> float:
    return float(statistics.median(xs))


def quartiles(xs) -> tuple[float, float]:
    q = np.percentile(np.asarray(xs, dtype=float), [25, 75])
    return float(q[0]), float(q[1])


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (every process, every CPU), from /proc/stat."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def wait_for_idle(max_seconds: float) -> float:
    """Sleep until other processes use under quiet_limit() CPUs (over a quarter second), at most
    max_seconds. Returns the seconds waited. (PSI's "some" misses one busy process beside an idle core.)"""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_seconds:
        b0, w0 = busy_cpu_seconds(), time.perf_counter()
        time.sleep(0.25)
        if not (busy_cpu_seconds() - b0) / (time.perf_counter() - w0) >= quiet_limit():  # NaN: no /proc/stat
            break
    return time.perf_counter() - t0


def rusage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)  # the whole process: every thread
    return r.ru_utime, r.ru_stime


# ---- 1. matmul peak -----------------------------------------------------------------------------

def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """Best GFLOP/s of `a @ b` (m×k @ k×n) over a few timed trials lasting about `seconds` in all."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm: first-call dispatch, packing buffers
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    once = max(time.perf_counter() - t0, 1e-6)
    trials = max(1, min(5, int(seconds / once)))  # one trial where a call alone outlasts `seconds` (AVX2's bf16)
    per_trial = max(1, int(seconds / trials / once))
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(per_trial):
            torch.mm(a, b, out=out)
        dt = (time.perf_counter() - t0) / per_trial
        best = max(best, 2 * m * k * n / dt / 1e9)
    return best


def measure_peak(rounds: int, seconds: float, gemms: list[tuple[str, int, int, int]]) -> tuple[dict, dict]:
    """Square matmuls of each size and dtype, and the model's fp32 GEMMs, in interleaved rounds;
    the best of all rounds per cell."""
    best = {(dt, n): 0.0 for dt in ("fp32", "bf16") for n in PEAK_SIZES}
    model = {name: 0.0 for name, *_ in gemms}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for _ in range(rounds):
        for n in PEAK_SIZES:
            for name, dt in dtypes.items():
                best[name, n] = max(best[name, n], gemm_gflops(n, n, n, dt, seconds))
        for name, m, k, n in gemms:
            model[name] = max(model[name], gemm_gflops(m, k, n, torch.float32, seconds))
    return best, model


def model_gemms(mcfg, rows: int) -> list[tuple[str, int, int, int]]:
    """The forward GEMMs of one training step (rows = batch × seq_len tokens): name, m, k, n."""
    d, h = mcfg.d_model, mcfg.mlp_ratio * mcfg.d_model
    return [("attn qkv", rows, d, 3 * d), ("attn out", rows, d, d), ("mlp fc", rows, d, h),
            ("mlp proj", rows, h, d), ("lm_head", rows, d, mcfg.padded_vocab)]


# ---- 2-4. training steps ------------------------------------------------------------------------

def random_bos_tokens(vocab: int, bos: int, n_tokens: int, seed: int = 0) -> np.ndarray:
    """A random token stream of documents (lengths 16..511) that each start with BOS."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab - 1, n_tokens, dtype=np.int64)
    tokens[tokens >= bos] += 1  # never BOS inside a document
    starts = np.cumsum(rng.integers(16, 512, n_tokens // 16))
    tokens[np.concatenate([[0], starts[starts < n_tokens]])] = bos
    return tokens.astype(np.uint16 if vocab <= 65536 else np.int64)


class Blocks:
    """Step times and CPU times (process user + sys, all threads) over all recorded blocks."""

    @property
    def step_times(self) -> list[float]:
        return [t for b in self.blocks for t in b["times"]]

    @property
    def step_cpu(self) -> list[float]:
        return [t for b in self.blocks for t in b["cpu"]]


class Arm(Blocks):
    """One arm's model, optimisers and loader, stepped exactly as trainer.train's loop does."""

    def __init__(self, preset, smear: bool, tokens: np.ndarray, autocast: str = "fp32"):
        self.cfg = cfg = preset.train
        self.autocast = autocast
        self.mcfg = replace(preset.model, smear=smear)
        torch.manual_seed(cfg.seed)
        self.model = GPT(self.mcfg, seed=cfg.seed)
        self.adam, self.muon = build_optimizers(self.model, cfg)
        self.loader = BatchLoader(tokens, self.mcfg.bos_id, cfg.batch_size, cfg.seq_len, cfg.seed,
                                  max_doc_len=cfg.max_doc_len)
        self.window = window_blocks(0, cfg)  # the first third of training's windows, for every step
        self.step_no = 0
        self.blocks: list[dict] = []  # one per repetition: step times, CPU times, rusage, others' CPUs

    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len

    def step(self) -> None:
        self.model.set_windows(self.window)
        apply_schedules(self.step_no, self.cfg, self.adam, self.muon)
        inputs, targets = self.loader.next_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast == "bf16"):
            loss = self.model(inputs, targets, return_type="loss")
        (loss * self.tokens_per_step()).backward()  # the sum over the step's tokens, as trainer.train
        loss = loss.detach().view(1)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]  # (one process: no all-reduce)
        train_loss = loss.item()
        finite = np.isfinite(train_loss) and bool(torch.isfinite(torch.stack([g.norm() for g in grads]).sum()))
        if not finite:  # the loop would stop or skip; a benchmark step must not
            raise FloatingPointError(f"non-finite loss or gradient at benchmark step {self.step_no} (loss {train_loss})")
        self.adam.step()
        self.muon.step()
        self.model.zero_grad(set_to_none=True)
        self.step_no += 1

    def run(self, n: int, record: bool = True) -> dict:
        u0, s0 = rusage()
        busy0, cpu0, wall0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        times, cpu = [], []
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        u1, s1 = rusage()
        others = ((busy_cpu_seconds() - busy0) - (time.process_time() - cpu0)) / (time.perf_counter() - wall0)
        block = dict(times=times, cpu=cpu, user=u1 - u0, sys=s1 - s0, steps=n, others=max(0.0, others))
        if record:
            self.blocks.append(block)
        return block


def bench_preset(args):
    """The preset, with --batch-size rows a step when given."""
    preset = get_preset(args.preset)
    if args.batch_size:
        preset = dataclasses.replace(preset, train=replace(preset.train, batch_size=args.batch_size))
    return preset


def child_main(args) -> None:
    """The no-mallopt arm: the smear model without keep_freed_memory(), stepped on request.

    Protocol on stdin/stdout, one JSON line each: "ready" after warm-up, then a block's result
    for every "run N" line, until "quit" or EOF.
    """
    preset = bench_preset(args)
    tokens = random_bos_tokens(preset.model.vocab_size, preset.model.bos_id, args.data_tokens)
    arm = Arm(preset, smear=True, tokens=tokens, autocast=args.autocast)
    arm.run(args.warmup, record=False)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        print(json.dumps(arm.run(int(cmd[1]))), flush=True)


class Child(Blocks):
    def __init__(self, args):
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", "--preset", args.preset,
               *(["--threads", str(args.threads)] if args.threads else []),
               *(["--batch-size", str(args.batch_size)] if args.batch_size else []), "--autocast", args.autocast,
               "--warmup", str(args.warmup), "--data-tokens", str(args.data_tokens)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read()
        self.blocks: list[dict] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark child exited with {self.proc.wait()}")
        return json.loads(line)

    def run(self, n: int) -> dict:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        block = self._read()
        self.blocks.append(block)
        return block

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def per_step(blocks: list[dict], key: str) -> float:
    """Median over blocks of a block's CPU seconds per step."""
    return median([b[key] / b["steps"] for b in blocks])


def quiet_reps(*runners) -> list[int]:
    """The repetitions in which every runner's block had its CPUs to itself (others < quiet_limit())."""
    n = min(len(r.blocks) for r in runners)
    return [i for i in range(n) if all(r.blocks[i]["others"] < quiet_limit() for r in runners)]


def steps_of(runner, reps: list[int] | None = None) -> list[float]:
    blocks = runner.blocks if reps is None else [runner.blocks[i] for i in reps]
    return [t for b in blocks for t in b["times"]]


# ---- the report ---------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small", choices=list(PRESETS))
    ap.add_argument("--batch-size", type=int, default=None, help="rows a step (default: the preset's)")
    ap.add_argument("--autocast", choices=("fp32", "bf16"), default="fp32",
                    help="compute the steps in fp32 (the trainer's CPU default) or under bf16 autocast")
    ap.add_argument("--steps", type=int, default=24, help="timed steps per arm, split over the repetitions")
    ap.add_argument("--reps", type=int, default=24, help="interleaved repetitions (arm order rotates)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, all cores)")
    ap.add_argument("--wait-idle", type=float, default=8.0,
                    help="before each peak round and repetition, wait up to this many seconds for other "
                         "processes to leave the CPUs (0: never wait)")
    ap.add_argument("--budget", type=float, default=150.0,
                    help="seconds after which the run stops repeating (an unfinished repetition is dropped; "
                         "at least 3 are kept); bounds a run on a busy machine")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    ap.add_argument("--peak-rounds", type=int, default=3)
    ap.add_argument("--no-child", action="store_true", help="skip the no-mallopt subprocess (part 4)")
    ap.add_argument("--data-tokens", type=int, default=2_000_000, help=argparse.SUPPRESS)
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        return child_main(args)

    tuned = keep_freed_memory()  # as trainer.train does, before anything is allocated
    t_start, waited = time.perf_counter(), 0.0
    preset = bench_preset(args)
    reps = max(1, min(args.reps, args.steps))
    per_rep = max(1, args.steps // reps)
    print(f"smearlens training benchmark: preset {args.preset}, {per_rep} steps × {reps} reps per arm "
          f"(+{args.warmup} warm-up)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"keep_freed_memory() in this process: {tuned}")

    # 1. peak
    print("\n== 1. matmul peak: torch.mm, square, best GFLOP/s ==")
    rows = preset.train.batch_size * preset.train.seq_len
    gemms = model_gemms(preset.model, rows)
    peak, gemm_best = {}, {}
    for _ in range(args.peak_rounds):
        waited += wait_for_idle(args.wait_idle)
        one, model_one = measure_peak(1, 0.2, gemms)
        peak = {key: max(v, peak.get(key, 0.0)) for key, v in one.items()}
        gemm_best = {key: max(v, gemm_best.get(key, 0.0)) for key, v in model_one.items()}
    print(f"{'size':>6} {'fp32':>9} {'bf16':>9} {'bf16/fp32':>10}")
    for n in PEAK_SIZES:
        print(f"{n:>6} {peak['fp32', n]:>9.1f} {peak['bf16', n]:>9.1f} {peak['bf16', n] / peak['fp32', n]:>10.2f}")
    p32 = max(v for (dt, _), v in peak.items() if dt == "fp32")
    p16 = max(v for (dt, _), v in peak.items() if dt == "bf16")
    print(f"{'peak':>6} {p32:>9.1f} {p16:>9.1f} {p16 / p32:>10.2f}   (MFU below uses the fp32 peak)")
    print(f"bf16 GEMMs native here (mkldnn): {native_bf16_matmul(torch.device('cpu'))}; where not, Muon's "
          "Newton–Schulz runs as fp32 GEMMs rounded to bf16")

    print(f"\nthe model's forward GEMMs at {rows} rows, fp32, best GFLOP/s:")
    print(f"{'gemm':>10} {'m×k @ k×n':>22} {'GFLOP/s':>9} {'of peak':>8}")
    for name, m, k, n in gemms:
        g = gemm_best[name]
        print(f"{name:>10} {f'{m}×{k} @ {k}×{n}':>22} {g:>9.1f} {g / p32:>8.0%}")

    # 2-4. training: every repetition runs each arm's block, in rotating order
    tokens = random_bos_tokens(preset.model.vocab_size, preset.model.bos_id, args.data_tokens)
    child = None if args.no_child else Child(args)  # builds and warms up alone, before we do
    arms = {"smear": Arm(preset, True, tokens, args.autocast), "baseline": Arm(preset, False, tokens, args.autocast)}
    for arm in arms.values():
        arm.run(args.warmup, record=False)
    runners = {**arms, **({"no-mallopt": child} if child else {})}
    names = list(runners)
    def over_budget(r: int) -> bool:
        return r >= 3 and time.perf_counter() - t_start > args.budget

    for r in range(reps):
        if over_budget(r):
            break
        waited += wait_for_idle(args.wait_idle)
        order = names[r % len(names):] + names[:r % len(names)]
        for i, name in enumerate(order):
            if i and over_budget(r):  # drop the unfinished repetition: blocks stay paired
                for done in order[:i]:
                    runners[done].blocks.pop()
                break
            runners[name].run(per_rep)
        else:
            continue
        break
    if len(runners["smear"].blocks) < reps:
        print(f"\n(time budget of {args.budget:.0f} s spent: kept {len(runners['smear'].blocks)} of {reps} repetitions)")
    if child:
        child.close()
    wall = time.perf_counter() - t_start
    s, b = arms["smear"], arms["baseline"]
    quiet = quiet_reps(*runners.values())
    n_reps = len(s.blocks)
    print(f"\nquiet repetitions (other processes used < {quiet_limit():.1f} CPU during every block of the repetition): "
          f"{len(quiet)} of {n_reps}; other processes' CPUs per block: median "
          f"{median([x['others'] for r in runners.values() for x in r.blocks]):.2f}")
    use_quiet = len(quiet) >= 3
    subsets = [("all", None)] + ([(f"quiet ({len(quiet)})", quiet)] if quiet else [])

    # 2. throughput and MFU
    print(f"\n== 2. training steps: B={preset.train.batch_size} × T={preset.train.seq_len}, "
          f"fwd + bwd + Adam + Muon, {args.autocast} ==")
    flops = {}
    for name, arm in arms.items():
        flops[name] = model_flops_per_token(arm.mcfg, arm.cfg.seq_len, tuple(int(w) for w in arm.model.window_blocks))
        check_flops(arm, flops[name])
    n6 = 6 * sum(p.numel() for n, p in s.model.named_parameters()
                 if p.ndim >= 2 and not n.startswith(("embed.", "value_embeds.")))
    print(f"model FLOPs/token: {flops['smear'] / 1e6:.3f} M = 6·N_matmul {n6 / 1e6:.3f} M + attention "
          f"{(flops['smear'] - n6) / 1e6:.3f} M (windows {s.model.layer_windows()} tokens); fp32 peak {p32:.1f} GFLOP/s")
    print(f"{'arm':>9} {'reps':>10} {'step ms':>8} {'IQR ms':>12} {'best ms':>8} {'tokens/s':>9} {'GFLOP/s':>8} "
          f"{'MFU':>6} {'MFU@best':>9} {'MFU bf16pk':>11}   (MFU: of the fp32 peak)")
    mfu = {}
    for name, arm in arms.items():
        for label, subset in subsets:
            times = steps_of(arm, subset)
            t, best = median(times), min(times)
            q1, q3 = quartiles(times)
            tps = arm.tokens_per_step() / t
            gf = flops[name] * tps / 1e9
            mfu[name, label] = gf / p32
            print(f"{name:>9} {label:>10} {t * 1e3:>8.0f} {f'{q1 * 1e3:.0f}–{q3 * 1e3:.0f}':>12} {best * 1e3:>8.0f} "
                  f"{tps:>9.0f} {gf:>8.1f} {gf / p32:>6.1%} {flops[name] * tps * t / best / 1e9 / p32:>9.1%} "
                  f"{gf / p16:>11.1%}")
    judged = subsets[-1][0] if use_quiet else "all"
    lo = min(mfu["smear", judged], mfu["baseline", judged])
    print(f"MFU target ≥ {TARGET_MFU:.0%}: {'meets' if lo >= TARGET_MFU else 'BELOW'} "
          f"(smear {mfu['smear', judged]:.1%}, baseline {mfu['baseline', judged]:.1%}, {judged} reps)")

    # 3. smear cost
    print("\n== 3. smear / baseline step time ==")
    print(f"{'':>30} {'smear ms':>9} {'baseline ms':>12} {'ratio':>7}")
    ratio = {}
    for label, subset in subsets:
        ts, tb = steps_of(s, subset), steps_of(b, subset)
        ratio[label] = median(ts) / median(tb)
        print(f"{'median step, ' + label + ' reps':>30} {median(ts) * 1e3:>9.0f} {median(tb) * 1e3:>12.0f} "
              f"{ratio[label]:>7.3f}")
    paired = [median(x["times"]) / median(y["times"]) for x, y in zip(s.blocks, b.blocks)]
    print(f"{'paired reps, median':>30} {'':>9} {'':>12} {median(paired):>7.3f}   "
          f"per rep: {' '.join(f'{x:.2f}' for x in paired)}")
    print(f"{'best step':>30} {min(s.step_times) * 1e3:>9.0f} {min(b.step_times) * 1e3:>12.0f} "
          f"{min(s.step_times) / min(b.step_times):>7.3f}")
    print(f"{'CPU time/step (user+sys)':>30} {median(s.step_cpu) * 1e3:>9.0f} {median(b.step_cpu) * 1e3:>12.0f} "
          f"{median(s.step_cpu) / median(b.step_cpu):>7.3f}")
    print(f"smear cost target ≤ {TARGET_SMEAR:.2f}: {'meets' if ratio[judged] <= TARGET_SMEAR else 'ABOVE'} "
          f"({ratio[judged]:.3f}, {judged} reps)")

    # 4. kernel time
    print("\n== 4. CPU time per step (getrusage, all threads), smear arm ==")
    if child is None:
        print("(skipped: --no-child)")
    else:
        print(f"{'':>22} {'reps':>10} {'wall ms':>8} {'user ms':>8} {'sys ms':>8} {'sys/(u+s)':>10}")
        res = {}
        for label, runner in (("keep_freed_memory on", s), ("off (subprocess)", child)):
            for sub_label, subset in subsets:
                blocks = runner.blocks if subset is None else [runner.blocks[i] for i in subset]
                w = median([t for x in blocks for t in x["times"]])
                u, k = per_step(blocks, "user"), per_step(blocks, "sys")
                res[label, sub_label] = (w, u, k)
                print(f"{label:>22} {sub_label:>10} {w * 1e3:>8.0f} {u * 1e3:>8.0f} {k * 1e3:>8.1f} {k / (u + k):>10.1%}")
        for sub_label, subset in subsets:
            (w1, u1, k1), (w0, u0, k0) = res["keep_freed_memory on", sub_label], res["off (subprocess)", sub_label]
            sys_ratio = f"{k0 / k1:>7.0f}×" if k1 >= 1e-4 else f"{'>' + format(k0 / 1e-4, '.0f'):>7}×"
            print(f"{'off / on':>22} {sub_label:>10} {w0 / w1:>7.2f}× {u0 / u1:>7.2f}× {sys_ratio}")
        paired = [median(x["times"]) / median(y["times"]) for x, y in zip(child.blocks, s.blocks)]
        (w1, _, k1), (w0, _, k0) = res["keep_freed_memory on", judged], res["off (subprocess)", judged]
        print(f"keep_freed_memory: step {w0 / w1:.2f}× faster, sys {k0 * 1e3:.0f} → {k1 * 1e3:.1f} ms/step "
              f"({judged} reps); paired reps: median {median(paired):.2f}× ({' '.join(f'{x:.2f}' for x in paired)})")

    print(f"\nwaited {waited:.0f} s for idle CPUs; load average {os.getloadavg()[0]:.2f}; total {wall:.0f} s")
    if not use_quiet:
        print("NOTE: fewer than 3 quiet repetitions: other processes shared the CPUs, so the figures above "
              "measure contention as much as the trainer (rerun on an idle machine).")


def check_flops(arm: Arm, flops: float) -> None:
    """Recount model_flops_per_token's figure from the live model: its matmul weights and windows."""
    model, T = arm.model, arm.cfg.seq_len
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.ndim >= 2 and not name.startswith(("embed.", "value_embeds.")))
    attn = [i for i, blk in enumerate(model.blocks) if blk.has_attn]
    windows = model.layer_windows()
    keys = [sum(min(q, windows[i]) + 1 for q in range(T)) / T for i in attn]
    recount = 6 * n + sum(12 * arm.mcfg.d_model * k for k in keys)
    if abs(recount - flops) > 1e-6 * flops:
        raise AssertionError(f"model_flops_per_token {flops:.0f} ≠ recount from the model {recount:.0f}")


if __name__ == "__main__":
    main()
