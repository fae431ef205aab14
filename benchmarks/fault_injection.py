"""Fault injection: SIGKILL a tiny training run at random moments, resume it, compare with a clean run.

    python benchmarks/fault_injection.py --kills 20

A reference run trains uninterrupted with a checkpoint every step. The faulty run (same config)
is started, killed with SIGKILL at a random moment once training is under way (often inside a
checkpoint write, since one is written every step), and resumed with --resume, again and again
until it finishes. After each kill the newest complete checkpoint must equal the reference's at
that step (weights and resume state), and the final weights must equal the reference's.
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
    data = workdir / "data"
    book = split_gutenberg(embedded_corpus_path().read_text(encoding="utf-8"))[0][:300_000]
    (workdir / "book.txt").write_text(book, encoding="utf-8")
    build_dataset(data, [str(workdir / "book.txt")], vocab_size=512, val_fraction=0.1)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=150)  # ~4 steps pass between kills: room for 20+
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="smearlens-faults-"))
    try:
        tried, identical, final = run(args.kills, args.steps, args.seed, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"kill points tried: {tried}; resumed identically: {identical}; "
          f"final weights equal to the uninterrupted run: {final}")
    return 0 if identical == tried and final else 1


if __name__ == "__main__":
    sys.exit(main())
