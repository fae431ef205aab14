"""`smearlens demo`: the whole study on the embedded corpus, in one command.

Data → every arm (default baseline, smear and the fixed dose dose-0.8) for each seed (two training
processes at a time, one per core, the arms of a seed side by side) with recording → `analyze` → notebooks, figures and the report. Every stage
skips what is already done, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from trainer import checkpoint as ckpt
from trainer.config import get_preset
from trainer.corpus import default_data_dir, embedded_data
from trainer.errors import SmearlensError

DEMO_PRESET = "cpu-small"
DEMO_ARMS = ("baseline", "smear", "dose-0.8")  # the baseline, the record's smear and a fixed dose (no gate)
# a recorder probe (4,096 tokens) costs about one 1,024-token cpu-small step: every 50 steps ≈ 2%
RECORD_EVERY = 50
STEP = re.compile(rb"(\d+)/(\d+) \[")


def run_name(preset: str, seed: int, arm: str) -> str:
    return f"{preset}-s{seed}-{arm}"


def finished(run_dir: Path, steps: int) -> bool:
    done = ckpt.complete_checkpoints(run_dir)
    return bool(done) and ckpt.read_meta(done[-1])["step"] >= steps


def last_step(log: Path) -> int:
    """The newest step a child's progress bar printed (its log is its stderr)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            found = STEP.findall(f.read())
    except OSError:
        return 0
    return int(found[-1][0]) if found else 0


def train_all(preset: str, seeds: list[int], data: Path, out: Path, steps: int, extra: list[str], jobs: int,
              arms: Sequence[str] = DEMO_ARMS) -> None:
    """Train every (seed, arm) not finished yet, `jobs` processes at a time, one progress bar."""
    todo = [(seed, arm) for seed in seeds for arm in arms
            if not finished(out / run_name(preset, seed, arm), steps)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    bar = tqdm(total=steps * len(todo), desc=f"training {len(todo)} runs", unit="step", dynamic_ncols=True)
    running: list[tuple[subprocess.Popen, Path, object]] = []
    done_steps = 0
    while todo or running:
        while todo and len(running) < jobs:
            seed, arm = todo.pop(0)
            name = run_name(preset, seed, arm)
            (out / name).mkdir(parents=True, exist_ok=True)
            log = out / name / "train.log"
            cmd = [sys.executable, "-m", "commands.cli", "train", "--preset", preset, "--arm", arm, "--seed", str(seed),
                   "--data", str(data), "--out", str(out), "--steps", str(steps), *extra]
            if ckpt.complete_checkpoints(out / name):
                cmd.append("--resume")
            handle = open(log, "ab")
            running.append((subprocess.Popen(cmd, stdout=handle, stderr=handle, env=env), log, handle))
        time.sleep(2)
        for proc, log, handle in list(running):
            if proc.poll() is None:
                continue
            handle.close()
            running.remove((proc, log, handle))
            if proc.returncode:
                for other, _, h in running:
                    other.terminate()
                raise SmearlensError(f"training failed (exit {proc.returncode}); see {log}")
            done_steps += steps
        bar.n = done_steps + sum(last_step(log) for _, log, _ in running)
        bar.refresh()
    bar.close()


def run_demo(preset: str = DEMO_PRESET, seeds: int = 3, steps: int | None = None, out: str | Path = "checkpoints",
             figures: str | Path = "figures", jobs: int = 2, notebooks: bool = True, extra: list[str] | None = None,
             arms: Sequence[str] = DEMO_ARMS) -> Path:
    from analysis.analyze import METRICS, analyze
    from analysis.probes import ABLATIONS
    from analysis.report import write_report

    start = time.perf_counter()
    steps = steps or get_preset(preset).train.steps
    out, figures = Path(out), Path(figures)
    print(f"[1/4] data: {default_data_dir(preset)}", flush=True)
    data = embedded_data(preset)
    arms = list(arms)
    print(f"[2/4] training {preset}: arms {', '.join(arms)} × seeds 0..{seeds - 1}, {steps} steps each", flush=True)
    train_all(preset, list(range(seeds)), data, out, steps, ["--record-every", str(RECORD_EVERY), *(extra or [])], jobs,
              arms)
    runs = [out / run_name(preset, s, arm) for s in range(seeds) for arm in arms]
    tables = out / "analysis"
    print(f"[3/4] analysis → {tables}", flush=True)
    # the ablations (21 forwards a checkpoint, 80% of the analysis) only feed final-step figures
    ablations = list(ABLATIONS)
    analyze(runs, out=tables, metrics=[m for m in METRICS if m not in ablations])
    analyze([ckpt.complete_checkpoints(run)[-1] for run in runs], out=tables, metrics=ablations)
    print(f"[4/4] notebooks, figures and report → {figures}", flush=True)
    command = f"smearlens demo --preset {preset} --seeds {seeds} --steps {steps} --arms {','.join(arms)}"
    report = write_report(tables, figures, figures / "report.md", commands=[command], preset=preset,
                          notebooks=notebooks, runs_dir=out)
    minutes = (time.perf_counter() - start) / 60
    print(f"demo finished in {minutes:.1f} min; report: {report}", flush=True)
    return report
