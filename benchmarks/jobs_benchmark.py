"""A shortened demo at several `--jobs`, side by side in one run: what a second core (a second run) buys.

    python benchmarks/jobs_benchmark.py                          # --jobs 1 and 2: the demo's arms, 2 seeds, 200 steps
    python benchmarks/jobs_benchmark.py --jobs 1,2,4 --seeds 3   # on a bigger machine

Each is `smearlens demo --steps STEPS --seeds SEEDS --no-notebooks --jobs J` in a fresh folder (the
embedded corpus built first, untimed): training, analysis and report, as the demo runs them, with fewer
steps so both fit a sitting. Prints the wall seconds, the seconds per run and each setting's speed-up
over the first, with the machine's usable cores and load average (a shared machine slows both; the load
average says how busy it was).
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
    args = parser.parse_args()
    runs = len(DEMO_ARMS) * args.seeds
    os.chdir(REPO)  # the demo's data folder is data/ here
    embedded_data(DEMO_PRESET)
    print(f"demo: {runs} runs ({', '.join(DEMO_ARMS)} × {args.seeds} seeds) of {args.steps} steps, no notebooks; "
          f"{usable_cores()} usable cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    first = None
    try:
        for jobs in (int(j) for j in args.jobs.split(",")):
            out = work / f"jobs{jobs}"
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "commands.cli", "demo", "--steps", str(args.steps), "--seeds",
                            str(args.seeds), "--out", str(out / "checkpoints"), "--figures", str(out / "figures"),
                            "--no-notebooks", "--jobs", str(jobs)], check=True, capture_output=True)
            seconds = time.perf_counter() - t0
            first = first or seconds
            print(f"--jobs {jobs}: {seconds:6.1f} s, {seconds / runs:5.1f} s a run, {first / seconds:.2f}× the first "
                  f"(load average before {load:.1f}, after {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
