"""The GPU check, one prepared run: CUDA tests, step timings, then as many paired seeds as fit.

    bash benchmarks/gpu_check.sh [RESULTS_DIR]          # on a machine with one NVIDIA GPU (installs, then runs this)
    python benchmarks/gpu_check.py --out RESULTS_DIR    # the same stages, the environment already set up
    python benchmarks/gpu_check.py --dry --out DIR      # every stage at tiny size on the CPU (CI runs this)

Stages, each bounded by what is left of --budget (default 300 s, of which the script keeps a
reserve for packing the results):
1. `env`: device, torch and CUDA versions.
2. `tests`: the tests that need CUDA (tests/test_cuda.py: flex_attention vs the explicit path,
   the compiled training step vs eager).
3. `step`: benchmarks/gpu_step.py for both arms of speedrun-124m (ms/step, tokens/s, smear/baseline
   on the same GPU; the record's 8×H100 step time is context only).
4. `study`: `smearlens study` of 2 tiny runs (baseline and smear of seed 0) with --gpus-per-run 1: each
   run on a GPU of its own (CUDA_VISIBLE_DEVICES; one after the other on a one-GPU machine), analysed and
   reported; each run's run.json must say it trained on CUDA.
5. `pairs`: cpu-small pairs (baseline and smear of one seed, same initial weights and data order)
   for as many seeds as fit in half the time then left, several processes sharing the GPU, then
   `smearlens analyze` (previous-token metrics) and the paired statistics.
6. `full`: if time remains, a speedrun-124m pair at one GPU's share of the record's batch, capped at
   one epoch of the embedded corpus (GPT-2 tokens), recorded: previous-token heads at full width
   (small data for 124M parameters: a reading of head formation, not of the record's model).

Everything lands in RESULTS_DIR: `summary.md` (what ran, what was skipped and why, the numbers),
one log per stage, `step.json`, the analysis tables, and `results.tar.gz` holding all of it (the
device tool brings back at most 8 files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


class Budget:
    """Wall-clock seconds left for the whole check, less a reserve for packing the results."""

    def __init__(self, seconds: float, reserve: float):
        self.end = time.monotonic() + seconds - reserve

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


class Check:
    def __init__(self, out: Path, budget: Budget, dry: bool):
        self.out, self.budget, self.dry = out, budget, dry
        self.lines: list[str] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def run(self, stage: str, cmd: list[str], timeout: float) -> subprocess.CompletedProcess | None:
        """Run one command with its output in STAGE.log; None (and a note) when it would not fit."""
        if timeout < 5:
            self.note(f"- `{stage}`: skipped, {timeout:.0f} s left")
            return None
        log = self.out / f"{stage}.log"
        start = time.monotonic()
        with open(log, "ab") as f:
            f.write(f"$ {shlex.join(cmd)}\n".encode())
            f.flush()
            try:
                proc = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                self.note(f"- `{stage}`: stopped at its {timeout:.0f} s limit (see {log.name})")
                return None
        self.note(f"- `{stage}`: exit {proc.returncode} in {time.monotonic() - start:.0f} s (see {log.name})")
        return proc

    def device_args(self) -> list[str]:
        return ["--device", "cpu"] if self.dry else ["--device", "cuda"]


def stage_env(check: Check) -> None:
    import torch

    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available(), dry=check.dry,
                device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    (check.out / "env.json").write_text(json.dumps(info, indent=1))
    check.note(f"- `env`: {info}")
    if not check.dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --dry to run the stages at tiny size on the CPU")


def stage_tests(check: Check) -> None:
    check.run("tests", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
              min(150.0, check.budget.left() * 0.3))


def stage_step(check: Check) -> None:
    cmd = [PY, "benchmarks/gpu_step.py", "--json", str(check.out / "step.json")]
    cmd += ["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0"] if check.dry else ["--steps", "10"]
    check.run("step", cmd, min(180.0, check.budget.left() * 0.4))
    if (check.out / "step.json").exists():
        step = json.loads((check.out / "step.json").read_text())
        for arm, r in step["arms"].items():
            check.note(f"  - {step['preset']} {arm}: {r['mean_ms']:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s")
        if "smear_over_baseline" in step:
            check.note(f"  - smear/baseline step time on this device: {step['smear_over_baseline']:.3f}")


def train_cmd(check: Check, preset: str, arm: str, seed: int, runs: Path, extra: list[str]) -> list[str]:
    return [PY, "-m", "commands.cli", "train", "--preset", preset, "--arm", arm, "--seed", str(seed),
            "--out", str(runs), *check.device_args(), *extra]


def stage_study(check: Check) -> None:
    """A 2-run study with one GPU a run (the dry run: on the CPU, --gpus-per-run 0)."""
    out = check.out / "study"
    proc = check.run("study", [PY, "-m", "commands.cli", "study", "--out", str(out), "--preset", "tiny", "--arms",
                               "baseline,smear", "--seeds", "1", "--steps", "20", "--metrics", "prev_token",
                               "--gpus-per-run", "0" if check.dry else "1", "--no-progress"],
                     min(180.0, check.budget.left() * 0.3))
    if proc is None or proc.returncode:
        return
    log = (check.out / "study.log").read_text(errors="replace")
    slots = next((line.split("; ", 1)[-1] for line in log.splitlines() if line.startswith("[2/3]")), "?")
    devices = [json.loads((out / f"tiny-s0-{arm}" / "run.json").read_text())["machine"]["device"]
               for arm in ("baseline", "smear")]
    want = "cpu" if check.dry else "cuda"
    check.note(f"  - 2 runs, {slots}; trained on {', '.join(devices)}: "
               f"{'as asked' if set(devices) == {want} else 'NOT on ' + want}; report: {(out / 'report.md').exists()}")


def stage_pairs(check: Check, jobs: int, max_seeds: int) -> list[Path]:
    """Paired seeds of cpu-small, `jobs` processes at a time, until half the time left is spent."""
    preset, runs = ("tiny", check.out / "runs") if check.dry else ("cpu-small", check.out / "runs")
    extra = ["--steps", "6", "--record-every", "3"] if check.dry else ["--record-every", "50", "--set", "autocast=fp32"]
    deadline = time.monotonic() + check.budget.left() / 2
    log = open(check.out / "pairs.log", "ab")
    running: list[tuple[subprocess.Popen, int]] = []
    done: dict[int, int] = {}
    seed, pair_seconds, started = 0, None, {}
    while True:
        now = time.monotonic()
        # start a pair only when it should finish before the deadline (after the first pair's time is known)
        while len(running) < jobs and seed < max_seeds and (pair_seconds is None and seed < jobs // 2 or
                                                            pair_seconds is not None and now + pair_seconds < deadline):
            started[seed] = now
            for arm in ("baseline", "smear"):
                running.append((subprocess.Popen(train_cmd(check, preset, arm, seed, runs, extra), cwd=REPO,
                                                 env=check.env, stdout=log, stderr=subprocess.STDOUT), seed))
            seed += 1
        if not running:
            break
        time.sleep(1)
        for proc, s in list(running):
            if proc.poll() is None:
                if time.monotonic() > deadline + 60:
                    proc.kill()
                continue
            running.remove((proc, s))
            if proc.returncode == 0:
                done[s] = done.get(s, 0) + 1
                if done[s] == 2:
                    pair_seconds = max(pair_seconds or 0, time.monotonic() - started[s])
    log.close()
    seeds = sorted(s for s, n in done.items() if n == 2)
    check.note(f"- `pairs`: {len(seeds)} complete {preset} pairs (seeds {seeds}), "
               f"{pair_seconds or 0:.0f} s a pair with {jobs} processes on the device")
    return [runs / f"{preset}-s{s}-{arm}" for s in seeds for arm in ("baseline", "smear")]


def stage_analysis(check: Check, run_dirs: list[Path], name: str = "analysis") -> None:
    """Previous-token metrics of the final checkpoints, and the paired statistics (statistics-NAME.md)."""
    if not run_dirs:
        return
    tables = check.out / name
    proc = check.run(name, [PY, "-m", "commands.cli", "analyze", *map(str, run_dirs), "--out", str(tables),
                                 "--metrics", "prev_token", "bos", "entropy", "--no-progress", *check.device_args()],
                     check.budget.left() * 0.5)
    if proc is None or proc.returncode:
        return
    from analysis import stats

    from analysis.writeup.report import statistics_markdown

    text = statistics_markdown(stats.summarize(stats.load_tables(tables, runs_dir=run_dirs[0].parent)))
    (check.out / f"statistics-{name}.md").write_text(text)
    check.note(text)


def stage_full(check: Check) -> None:
    """One speedrun-124m pair at one GPU's share of a record step, one epoch of the embedded corpus."""
    from trainer.corpus import embedded_data

    preset, rows, row_tokens = ("tiny", 2, 256) if check.dry else ("speedrun-124m", 1, 49_152)
    data = embedded_data(preset)
    epoch = json.loads((data / "meta.json").read_text())["train"]["tokens"]
    # one epoch: 124M parameters on ~1.5M tokens is small data (the dry run only checks the plumbing)
    steps = 4 if check.dry else max(2, epoch // (rows * row_tokens))
    extra = ["--data", str(data), "--steps", str(steps), "--batch-size", str(rows), "--seq-len", str(row_tokens),
             "--record-every", str(max(1, steps // 10)), "--set", f"val_every={steps}"]
    check.note(f"- `full`: {preset} pair, {steps} steps of {rows}×{row_tokens} tokens (an epoch is {epoch:,})")
    first = check.budget.left() / 2
    for arm in ("baseline", "smear"):
        proc = check.run(f"full-{arm}", train_cmd(check, preset, arm, 0, check.out / "full", extra),
                         first if arm == "baseline" else check.budget.left())
        if proc is None or proc.returncode:
            return
    stage_analysis(check, [check.out / "full" / f"{preset}-s0-{arm}" for arm in ("baseline", "smear")], "full-analysis")


def pack(out: Path) -> Path:
    archive = out / "results.tar.gz"
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(out.iterdir()):
            if path != tmp and path.name != archive.name:
                tar.add(path, arcname=path.name)
    tmp.replace(archive)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check"), help="results folder (default $OUT)")
    parser.add_argument("--budget", type=float, default=300, help="seconds for the whole check (default 300)")
    parser.add_argument("--jobs", type=int, default=8, help="training processes sharing the GPU in `pairs`")
    parser.add_argument("--dry", action="store_true", help="every stage at tiny size on the CPU (for CI)")
    parser.add_argument("--stages", nargs="+", default=["env", "tests", "step", "study", "pairs", "full"],
                        choices=["env", "tests", "step", "study", "pairs", "full"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, Budget(args.budget, reserve=min(20.0, args.budget / 10)), args.dry)
    check.note(f"# GPU check ({'dry run on the CPU' if args.dry else 'CUDA'}), budget {args.budget:.0f} s")
    if "env" in args.stages:
        stage_env(check)
    if "tests" in args.stages:
        stage_tests(check)
    if "step" in args.stages:
        stage_step(check)
    if "study" in args.stages:
        stage_study(check)
    if "pairs" in args.stages:
        stage_analysis(check, stage_pairs(check, 2 if args.dry else args.jobs, 1 if args.dry else 10_000))
    if "full" in args.stages:
        stage_full(check)
    (out / "summary.md").write_text("\n".join(check.lines) + "\n")
    print(f"results: {pack(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
