"""A shortened demo at several `--jobs`, side by side in one run: what a second core (a second run) buys.

    python benchmarks/jobs_benchmark.py                          # --jobs 1 and 2: the demo's arms, 2 seeds, 200 steps
    python benchmarks/jobs_benchmark.py --seeds 1 --steps 50 --rounds 2   # shorter, each setting twice (1 2 2 1)
    python benchmarks/jobs_benchmark.py --jobs 1,2,4 --seeds 3   # on a bigger machine

Each is `smearlens demo --steps STEPS --seeds SEEDS --no-notebooks --jobs J` in a fresh folder (the
embedded corpus built first, untimed): training, analysis and report, as the demo runs them, with fewer
steps so both fit a sitting; with --rounds, every other round in the reverse order, so a machine that
gets busier or quieter meanwhile weighs on each setting alike. Prints the wall seconds, the seconds per run
and the speed-up over the first setting (means over the rounds), with the machine's usable cores and load
average (a shared machine slows both; the load average says how busy it was).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from commands.demo import DEMO_ARMS, DEMO_PRESET  # noqa: E402
from commands.resources import usable_cores  # noqa: E402
from trainer.corpus import embedded_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs to time, in this order")
    parser.add_argument("--steps", type=int, default=200, help="training steps a run (the demo's: 800)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per arm (the demo's: 3)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, every other one in the reverse order")
    args = parser.parse_args()
    runs = len(DEMO_ARMS) * args.seeds
    os.chdir(REPO)  # the demo's data folder is data/ here
    embedded_data(DEMO_PRESET)
    print(f"demo: {runs} runs ({', '.join(DEMO_ARMS)} × {args.seeds} seeds) of {args.steps} steps, no notebooks; "
          f"{usable_cores()} usable cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    settings = [int(j) for j in args.jobs.split(",")]
    seconds: dict[int, list[float]] = {j: [] for j in settings}
    try:
        for r in range(args.rounds):
            for jobs in settings if r % 2 == 0 else settings[::-1]:
                out = work / f"jobs{jobs}-{r}"
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "commands.cli", "demo", "--steps", str(args.steps), "--seeds",
                                str(args.seeds), "--out", str(out / "checkpoints"), "--figures", str(out / "figures"),
                                "--no-notebooks", "--jobs", str(jobs)], check=True, capture_output=True)
                seconds[jobs].append(time.perf_counter() - t0)
                print(f"round {r + 1} --jobs {jobs}: {seconds[jobs][-1]:6.1f} s, {seconds[jobs][-1] / runs:5.1f} s a run "
                      f"(load average before {load:.1f}, after {os.getloadavg()[0]:.1f})", flush=True)
        first = sum(seconds[settings[0]]) / args.rounds
        for jobs in settings:
            mean = sum(seconds[jobs]) / args.rounds
            print(f"--jobs {jobs}: {mean:6.1f} s, {mean / runs:5.1f} s a run, {first / mean:.2f}× --jobs {settings[0]}",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
