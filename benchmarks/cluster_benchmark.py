"""The Ray path's overhead against local processes, on the same tiny study, side by side in one run.

    python benchmarks/cluster_benchmark.py                 # 1 round: local processes, then Ray
    python benchmarks/cluster_benchmark.py --rounds 2      # alternating, each round in the other order

The study: tiny, arms baseline and smear × seeds 0, 1 (4 runs), 30 steps, prev_token and smear metrics,
the same as tests/test_cluster.py's. Local: `smearlens study --jobs 2` (two single-thread processes, the
default on 2 cores). Ray: `--cluster ray --address local`, a Ray cluster in the driver's process with the
same usable cores (its start is part of the Ray time), each run's training and analysis a Ray task running
the same command. Prints each study's wall seconds, per run, and the ratio; the tables of the two must be
equal (they are compared), and the load average (the machine may be shared) beside them.
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

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fault_injection import make_data  # noqa: E402

RUNS = 4


def study_cmd(data: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "commands.cli", "study", "--out", str(out), "--preset", "tiny",
            "--arms", "baseline,smear", "--seeds", "2", "--steps", str(steps), "--data", str(data),
            "--set", "checkpoint_every=5", "--set", "val_every=0", "--record-every", "5",
            "--metrics", "prev_token", "smear", "--no-progress"]


WAYS = {"local": ["--jobs", "2"], "ray": ["--cluster", "ray", "--address", "local"]}


def timed(way: str, data: Path, out: Path, steps: int) -> float:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run([*study_cmd(data, out, steps), *WAYS[way]], cwd=REPO, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the {way} study failed:\n{proc.stderr[-3000:]}")
    return seconds


def same_tables(a: Path, b: Path) -> bool:
    for table in sorted((a / "analysis").glob("*.parquet")):
        pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(b / "analysis" / table.name),
                                      check_exact=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each both ways (alternating which first)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs Ray: pip install -e '.[cluster]'")
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        data = make_data(work)
        seconds: dict[str, list[float]] = {w: [] for w in WAYS}
        print(f"tiny study, {RUNS} runs of {args.steps} steps; {os.cpu_count()} CPUs, "
              f"{len(os.sched_getaffinity(0))} usable", flush=True)
        for r in range(args.rounds):
            order = list(WAYS) if r % 2 == 0 else list(WAYS)[::-1]
            for way in order:
                out = work / f"{way}{r}"
                load = os.getloadavg()[0]
                s = timed(way, data, out, args.steps)
                seconds[way].append(s)
                print(f"round {r + 1} {way:5s}: {s:6.1f} s, {s / RUNS:5.1f} s a run (load average before: "
                      f"{load:.1f})", flush=True)
            same_tables(work / f"local{r}", work / f"ray{r}")
        local, ray_ = (sum(seconds[w]) / len(seconds[w]) for w in ("local", "ray"))
        print(f"mean: local {local:.1f} s ({local / RUNS:.1f} s a run), ray {ray_:.1f} s ({ray_ / RUNS:.1f} s a run); "
              f"ray/local {ray_ / local:.2f}, {(ray_ - local) / RUNS:+.1f} s a run; tables equal: yes", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
