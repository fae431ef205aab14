"""Previous-token scores: TransformerLens `run_with_cache` + `detect_head` versus our streaming probe.

Same model, same tokens, side by side at T = 1,024 and 8,192, and the streaming probe alone at
65,536. Each case runs in a fresh subprocess, so its peak memory is its own: we report the growth
of the peak resident set (ru_maxrss) over what the process held before the probe, and the time of
the first (cold) and of a second (warm) call. TransformerLens's scores are checked against ours
(detect_head = ours × (T−1)/T on one document).

The model is the cpu-small preset (6 layers, 2 heads of 64, attention in 5) with random weights,
its windows counted in the record's 128-token blocks and set as for the record's validation (13
and 20 blocks: 768- to 2,560-token windows), and n_ctx raised so TransformerLens accepts T = 8,192.
`--windows full` makes every window cover the row instead (all-pairs attention). The text is the
embedded corpus, tokenized with a BPE-4096 trained on its first megabyte.

    python benchmarks/probe_benchmark.py [--windows record|full] [--threads N] [--json out.json]

`--recorder` measures instead what recording costs during training: the cpu-small preset (smear
arm, on the embedded corpus's BPE-4096 data, built if missing) trained for --steps steps with and
without the default recorder, --reps times in alternating order, one torch thread (as the demo's
training processes run), after an untimed warm-up run. It reports the ratio of wall times (median
of the paired repetitions; on a shared machine their spread is several percent) and the recorder's
own time over the training steps' time (the steadier figure).

    python benchmarks/probe_benchmark.py --recorder [--steps 200] [--reps 4] [--every 25]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.measures import probes  # noqa: E402
from trainer.config import get_preset, replace  # noqa: E402
from trainer.corpus import load_texts  # noqa: E402
from trainer.model import GPT  # noqa: E402
from trainer.perf import keep_freed_memory  # noqa: E402
from trainer.tokenizer import Tokenizer, train_bpe  # noqa: E402

CASES = [("transformer_lens", 1024), ("streaming", 1024), ("transformer_lens", 8192), ("streaming", 8192),
         ("streaming", 65536)]
BLOCK = 128


def build_model(tokenizer: Tokenizer, windows: str, T: int) -> GPT:
    cfg = replace(get_preset("cpu-small").model, block_size=BLOCK, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id)
    model = GPT(cfg, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised projections would make every head uniform-ish and alike
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    if windows == "record":
        model.set_windows(13, 20)
    else:
        model.set_windows(2 * math.ceil(T / BLOCK))  # half-window layers still cover the row
    model.tokenizer = tokenizer
    model.cfg.n_ctx = 2 * T  # detect_head asks for T < n_ctx
    return model.eval()


def text_of(tokenizer: Tokenizer, T: int) -> str:
    """Corpus text that tokenizes to exactly T − 1 tokens (T with the BOS)."""
    ids = tokenizer.encode("\n\n".join(load_texts(None))[: 8 * T])
    for n in range(T - 1, T - 50, -1):
        text = tokenizer.decode(ids[:n])
        if len(tokenizer.encode(text)) == T - 1:
            return text
    raise RuntimeError(f"no corpus prefix of exactly {T - 1} tokens")


def heads(model: GPT) -> dict[int, list[int]]:
    return {l: list(range(model.config.n_heads)) for l in model.config.attn_layers()}


def transformer_lens_scores(model: GPT, text: str) -> torch.Tensor:
    from transformer_lens.head_detector import detect_head

    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text), remove_batch_dim=True)
        return detect_head(model, text, "previous_token_head", heads=heads(model), cache=cache)


def streaming_scores(model: GPT, text: str) -> torch.Tensor:
    tokens = model.to_tokens(text)
    T = tokens.size(1)
    return probes.previous_token_scores(model, tokens) * (T - 1) / T  # on detect_head's scale


def run_case(case: str, T: int, windows: str, tokenizer_dir: str, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    tokenizer = Tokenizer.load(tokenizer_dir)
    text = text_of(tokenizer, T)
    model = build_model(tokenizer, windows, T)
    fn = transformer_lens_scores if case == "transformer_lens" else streaming_scores
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    scores = fn(model, text)
    cold = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fn(model, text)
    warm = time.perf_counter() - t0
    layers = model.config.attn_layers()
    return dict(case=case, T=T, windows=windows, threads=torch.get_num_threads(), cold_s=cold, warm_s=warm,
                peak_growth_mb=(peak - before) / 1024, layer_windows=model.layer_windows(),
                scores=scores[layers].tolist())


class Timed:
    """A callback wrapper that adds up the time spent in it."""

    def __init__(self, callback):
        self.callback, self.seconds = callback, 0.0

    def __call__(self, **kwargs) -> None:
        t0 = time.perf_counter()
        self.callback(**kwargs)
        self.seconds += time.perf_counter() - t0


def recorder_overhead(steps: int, reps: int, every: int, threads: int | None) -> dict:
    from analysis.measures.recorder import make_recorder
    from trainer.corpus import default_data_dir
    from trainer.corpus import build_dataset
    from trainer.train import make_run, train

    torch.set_num_threads(threads or 1)
    preset = get_preset("cpu-small")
    data = ROOT / default_data_dir("cpu-small")
    build_dataset(data, None, tokenizer=preset.tokenizer, vocab_size=preset.bpe_vocab)  # reused when present
    ratios, step_ratios, shares = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        warm = make_run("cpu-small", preset, "smear", 0, data, name="warm-up", train_overrides=dict(steps=5, val_every=0))
        train(Path(tmp) / warm.name, warm, device="cpu", progress=False)  # first-touch memory, caches: untimed
        for rep in range(reps):
            wall, step_time = {}, {}
            for mode in (("with", "without") if rep % 2 == 0 else ("without", "with")):
                run = make_run("cpu-small", preset, "smear", 0, data, name=f"{mode}-{rep}",
                               train_overrides=dict(steps=steps, val_every=0, n_checkpoints=1))
                recorder = Timed(make_recorder(every)) if mode == "with" else None
                t0 = time.perf_counter()
                summary = train(Path(tmp) / run.name, run, device="cpu", progress=False,
                                callbacks=(recorder,) if recorder else ())
                wall[mode] = time.perf_counter() - t0
                step_time[mode] = summary["seconds"]  # the optimizer steps alone, callbacks excluded
                if recorder:
                    shares.append(recorder.seconds / summary["seconds"])
            ratios.append(wall["with"] / wall["without"])
            step_ratios.append(step_time["with"] / step_time["without"])
            print(f"rep {rep}: {steps} steps without {wall['without']:.1f} s, with {wall['with']:.1f} s: "
                  f"ratio {ratios[-1]:.3f} (steps alone {step_ratios[-1]:.3f}); recorder {shares[-1]:.1%} of step time",
                  flush=True)
    result = dict(steps=steps, reps=reps, every=every, threads=torch.get_num_threads(), wall_ratios=ratios,
                  wall_ratio_median=statistics.median(ratios), step_time_ratios=step_ratios,
                  recorder_share_median=statistics.median(shares))
    print(f"recorder every {every} steps on cpu-small: training wall time ×{result['wall_ratio_median']:.3f} "
          f"(median of {reps}, range {min(ratios):.3f}–{max(ratios):.3f}); the recorder's own time is "
          f"{result['recorder_share_median']:.1%} of the step time")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", choices=["record", "full"], default="record")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--recorder", action="store_true", help="measure the recorder's cost during training instead")
    parser.add_argument("--steps", type=int, default=200, help="--recorder: training steps per run")
    parser.add_argument("--reps", type=int, default=4, help="--recorder: paired repetitions (order alternates)")
    parser.add_argument("--every", type=int, help="--recorder: cadence (default: the recorder's)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--T", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recorder:
        from analysis.measures.recorder import DEFAULT_EVERY

        result = recorder_overhead(args.steps, args.reps, args.every or DEFAULT_EVERY, args.threads)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return
    if args.case:  # one case, in its own process
        print(json.dumps(run_case(args.case, args.T, args.windows, args.tokenizer, args.threads)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        texts = load_texts(None)
        head, size = [], 0
        for t in texts:  # about the first megabyte of the corpus
            head.append(t)
            size += len(t)
            if size > 1_000_000:
                break
        train_bpe(head, 4096).save(tmp)
        results = []
        for case, T in CASES:
            cmd = [sys.executable, __file__, "--case", case, "--T", str(T), "--windows", args.windows, "--tokenizer", tmp]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{case} T={T} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{case:>16} T={T:>6}: cold {r['cold_s']:8.2f} s  warm {r['warm_s']:8.2f} s  "
                  f"peak memory +{r['peak_growth_mb']:8.1f} MB", flush=True)

    by = {(r["case"], r["T"]): r for r in results}
    print(f"\nwindows ({args.windows}) at T=8192: {by['streaming', 8192]['layer_windows']} tokens; "
          f"torch threads: {results[0]['threads']}")
    for T in (1024, 8192):
        tl, ours = by["transformer_lens", T], by["streaming", T]
        diff = max(abs(a - b) for ra, rb in zip(tl["scores"], ours["scores"]) for a, b in zip(ra, rb))
        print(f"T={T}: streaming is {tl['cold_s'] / ours['cold_s']:.1f}× faster cold, {tl['warm_s'] / ours['warm_s']:.1f}× "
              f"warm, uses {tl['peak_growth_mb'] / max(ours['peak_growth_mb'], 1e-3):.1f}× less peak memory; "
              f"max |detect_head − ours·(T−1)/T| = {diff:.1e}")
    s = [by["streaming", T] for T in (1024, 8192, 65536)]
    print("streaming peak memory per 1k tokens: " + ", ".join(
        f"T={r['T']}: {1024 * r['peak_growth_mb'] / r['T']:.2f} MB" for r in s))
    print(f"T=65536 streaming completed: cold {s[2]['cold_s']:.1f} s, warm {s[2]['warm_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
