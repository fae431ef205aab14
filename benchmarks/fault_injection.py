"""Fault injection: SIGKILL a tiny training run at random moments, resume it, compare with a clean run.

    python benchmarks/fault_injection.py --kills 20
    python benchmarks/fault_injection.py --study --kills 12 [--seeds 2]

A reference run trains uninterrupted with a checkpoint every step. The faulty run (same config)
is started, killed with SIGKILL at a random moment once training is under way (often inside a
checkpoint write, since one is written every step), and resumed with --resume, again and again
until it finishes. After each kill the newest complete checkpoint must equal the reference's at
that step (weights and resume state), and the final weights must equal the reference's.

--study: the same for a whole `smearlens study` (tiny, 2 arms × --seeds seeds, restricted metrics): the
study is interrupted at random moments, the first half while it trains, the rest while it analyses, in turn
by SIGKILL of the study process alone (its training children must die with it), SIGKILL of its
whole process group (a power loss) and SIGINT to the group (Ctrl-C), and rerun with the same
command until it finishes. Its tables (analysis/*.parquet, each run's record_*.parquet), loss
logs (without timings) and final weights must equal those of an uninterrupted study, exactly.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer import checkpoint as ckpt  # noqa: E402
from trainer.corpus import build_dataset, embedded_corpus_path, split_gutenberg  # noqa: E402


def train_cmd(data: Path, out: Path, steps: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "commands.cli", "train", "--preset", "tiny", "--arm", "smear", "--data", str(data),
           "--out", str(out), "--run", "run", "--steps", str(steps), "--set", "checkpoint_every=1",
           "--set", "val_every=0", "--record-every", "5"]
    return cmd + (["--resume"] if resume else [])


def same_checkpoint(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / ckpt.MODEL_FILE)), load_file(str(b / ckpt.MODEL_FILE))
    if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
        return False
    sa, sb = ckpt.load_train_state(a), ckpt.load_train_state(b)
    return sa["loader"] == sb["loader"] and sa["step"] == sb["step"]


def newest_step(run: Path) -> int:
    done = ckpt.complete_checkpoints(run)
    return ckpt.read_meta(done[-1])["step"] if done else 0


def run(kills: int, steps: int, seed: int, workdir: Path) -> tuple[int, int, bool]:
    data = make_data(workdir)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    quiet = dict(cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(train_cmd(data, workdir / "ref", steps, False), check=True, **quiet)
    reference = workdir / "ref" / "run"

    rng = random.Random(seed)
    faulty = workdir / "faulty" / "run"
    tried = identical = 0
    while newest_step(faulty) < steps:
        before = newest_step(faulty)
        proc = subprocess.Popen(train_cmd(data, workdir / "faulty", steps, before > 0), **quiet)
        killed = False
        if tried < kills:
            while proc.poll() is None and newest_step(faulty) <= before:  # wait until training is under way
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
        if proc.wait() not in (0, -signal.SIGKILL):
            raise SystemExit(f"the faulty run failed with exit {proc.returncode}")
        if killed:
            tried += 1
            step = newest_step(faulty)
            identical += step > 0 and same_checkpoint(ckpt.step_dir(faulty, step), ckpt.step_dir(reference, step))
            print(f"kill {tried:3d}: newest complete checkpoint step {step:3d}, "
                  f"{'identical to' if identical == tried else 'DIFFERENT from'} the reference", flush=True)
    final = same_checkpoint(ckpt.step_dir(faulty, steps), ckpt.step_dir(reference, steps))
    return tried, identical, final


def make_data(workdir: Path) -> Path:
    data = workdir / "data"
    book = split_gutenberg(embedded_corpus_path().read_text(encoding="utf-8"))[0][:300_000]
    (workdir / "book.txt").write_text(book, encoding="utf-8")
    build_dataset(data, [str(workdir / "book.txt")], vocab_size=512, val_fraction=0.1)
    return data


def study_runs(seeds: int) -> list[str]:
    return [f"tiny-s{seed}-{arm}" for seed in range(seeds) for arm in ("baseline", "smear")]


# the first training interrupt kills the study process alone: its training children must die with it
INTERRUPTS = ("study process killed", "power loss", "ctrl-c")


def study_cmd(data: Path, out: Path, steps: int, seeds: int) -> list[str]:
    return [sys.executable, "-m", "commands.cli", "study", "--out", str(out), "--preset", "tiny",
            "--arms", "baseline,smear", "--seeds", str(seeds), "--steps", str(steps), "--data", str(data),
            "--set", "checkpoint_every=4", "--set", "val_every=0", "--record-every", "5",
            "--metrics", "prev_token", "induction", "smear", "paths", "--path-positions", "8", "--path-draws", "2",
            "--no-progress"]


def study_phase(out: Path, steps: int, runs: list[str]) -> str:
    """Where a study stands by its files: training (a run not finished), analysis, or done."""
    if not all((out / run).exists() and newest_step(out / run) >= steps for run in runs):
        return "training"
    return "done" if (out / "report.md").exists() else "analysis"


def study_files(out: Path, runs: list[str]) -> dict[str, pd.DataFrame]:
    """Every table a study wrote, rows sorted (a resumed analysis may append groups in another order);
    loss logs without their wall-clock column."""
    found = {f"analysis/{p.name}": pd.read_parquet(p) for p in sorted((out / "analysis").glob("*.parquet"))}
    for run in runs:
        for p in sorted((out / run).glob("record_*.parquet")):
            found[f"{run}/{p.name}"] = pd.read_parquet(p)
        found[f"{run}/loss.csv"] = pd.read_csv(out / run / "loss.csv").drop(columns="step_seconds")
    return {k: df.sort_values(list(df.columns), kind="stable").reset_index(drop=True) for k, df in found.items()}


def compare_studies(ref: Path, faulty: Path, steps: int, runs: list[str]) -> tuple[bool, bool, list[str]]:
    """(exactly equal, equal to float tolerance, what differs) over tables, loss logs and final weights."""
    a, b = study_files(ref, runs), study_files(faulty, runs)
    diffs = [f"{k}: only in one study" for k in sorted(set(a) ^ set(b))]
    exact = close = not diffs
    for key in sorted(set(a) & set(b)):
        try:
            pd.testing.assert_frame_equal(a[key], b[key], check_exact=True)
        except AssertionError:
            exact = False
            try:
                pd.testing.assert_frame_equal(a[key], b[key], check_exact=False, rtol=1e-6, atol=1e-9)
                diffs.append(f"{key}: equal only to float tolerance")
            except AssertionError as e:
                close = False
                diffs.append(f"{key}: {str(e).splitlines()[0]}")
    for run in runs:
        if not same_checkpoint(ckpt.step_dir(ref / run, steps), ckpt.step_dir(faulty / run, steps)):
            exact = close = False
            diffs.append(f"{run}: final weights differ")
    return exact, close, diffs


def group_gone(pgid: int, wait: float = 10.0) -> bool:
    """No process of the group is left (within `wait` seconds)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def run_study_faults(kills: int, steps: int, seed: int, seeds: int, workdir: Path) -> dict:
    runs = study_runs(seeds)
    data = make_data(workdir)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    quiet = dict(cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    subprocess.run(study_cmd(data, workdir / "ref", steps, seeds), check=True, **quiet)
    clean_seconds = time.perf_counter() - t0

    rng = random.Random(seed)
    out = workdir / "faulty"
    tried = {"training": 0, "analysis": 0}
    orphans = launches = 0
    t0 = time.perf_counter()
    while study_phase(out, steps, runs) != "done":
        launches += 1
        if launches > 3 * kills + 5:
            raise SystemExit("the faulty study does not finish")
        started = {run: newest_step(out / run) for run in runs}
        # its own process group, as a shell job: "power loss" and ctrl-c reach the study and its children
        proc = subprocess.Popen(study_cmd(data, out, steps, seeds), start_new_session=True, **quiet)
        n = sum(tried.values())
        # the first half of the interrupts while it trains (each waits for training to get on), the rest
        # while it analyses
        target = ("training" if n < (kills + 1) // 2 else "analysis") if n < kills else None
        if target == "training" and study_phase(out, steps, runs) != "training":
            target = "analysis"
        phase = None
        if target:
            while proc.poll() is None:  # wait until the target phase is under way in this launch
                phase = study_phase(out, steps, runs)
                if target == "training" and any(newest_step(out / r) > started[r] for r in runs):
                    break
                if target == "analysis" and phase == "analysis" and (out / "analysis" / "analysis.json").exists():
                    break
                if phase == "done":
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.5 if target == "training" else 1.5))
        how = INTERRUPTS[n % len(INTERRUPTS)]
        if target and proc.poll() is None:
            phase = study_phase(out, steps, runs)
            if how == "power loss":
                os.killpg(proc.pid, signal.SIGKILL)
            elif how == "study process killed":
                proc.send_signal(signal.SIGKILL)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait()
            if code == 0:  # it finished just before the signal
                continue
            if code not in (-signal.SIGKILL, -signal.SIGINT, 130):  # ctrl-c before main() runs: -SIGINT
                raise SystemExit(f"the interrupted study exited with {code}")
            gone = group_gone(proc.pid)
            orphans += not gone
            if phase in tried:
                tried[phase] += 1
            print(f"interrupt {sum(tried.values()):3d}: {how:20s} during {phase:8s} "
                  f"{'' if gone else '— a process of the study outlived it'}", flush=True)
            if not gone:
                os.killpg(proc.pid, signal.SIGKILL)
        elif proc.wait() != 0:
            raise SystemExit(f"the study failed with exit {proc.returncode}")
    faulty_seconds = time.perf_counter() - t0
    exact, close, diffs = compare_studies(workdir / "ref", out, steps, runs)
    for d in diffs:
        print("  " + d)
    return dict(tried=tried, orphans=orphans, exact=exact, close=close, launches=launches,
                clean_seconds=clean_seconds, faulty_seconds=faulty_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, help="training steps (default 150; --study: 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study", action="store_true", help="interrupt a whole tiny `smearlens study` instead")
    parser.add_argument("--seeds", type=int, default=2, help="--study: seeds of its two arms (default 2)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="smearlens-faults-"))
    try:
        if args.study:
            r = run_study_faults(args.kills, args.steps or 12, args.seed, args.seeds, workdir)
        else:
            # ~4 steps pass between kills: room for 20+
            tried, identical, final = run(args.kills, args.steps or 150, args.seed, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.study:
        t = r["tried"]
        print(f"study interrupts: {t['training'] + t['analysis']} (training {t['training']}, analysis "
              f"{t['analysis']}); launches {r['launches']}; processes outliving a killed study: {r['orphans']}; "
              f"tables equal to the uninterrupted study: {'exactly' if r['exact'] else 'to float tolerance' if r['close'] else 'NO'}; "
              f"uninterrupted {r['clean_seconds']:.1f} s, interrupted {r['faulty_seconds']:.1f} s")
        return 0 if r["exact"] and not r["orphans"] else 1
    print(f"kill points tried: {tried}; resumed identically: {identical}; "
          f"final weights equal to the uninterrupted run: {final}")
    return 0 if identical == tried and final else 1


if __name__ == "__main__":
    sys.exit(main())
