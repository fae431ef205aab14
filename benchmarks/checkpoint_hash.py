"""What the checkpoint hashes cost: sha256 of a checkpoint's files against the time to write it.

Saves a `cpu-small` checkpoint (weights, and a resume state with Adam's and Muon's moments filled as
after a step) REPEATS times, then times the hashing alone (the save includes it: it reads the files back
from the page cache) and the check a load does. Prints both side by side.

    python benchmarks/checkpoint_hash.py [--preset cpu-small] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import checkpoint as ckpt  # noqa: E402
from trainer.config import get_preset  # noqa: E402
from trainer.model import GPT  # noqa: E402
from trainer.optim import build_optimizers  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    preset = get_preset(args.preset)
    model = GPT(preset.model)
    adam, muon = build_optimizers(model, preset.train)
    for param in model.parameters():  # one step, so the optimisers hold their moments as a real checkpoint does
        param.grad = torch.randn_like(param) * 1e-3
    adam.step()
    muon.step()
    state = dict(step=1, adam=adam.state_dict(), muon=muon.state_dict(), loader=dict(epoch=0, cursor=0, batches=1),
                 rng=dict(torch=torch.get_rng_state()))
    meta = dict(model_config={}, arm="smear", seed=0)
    saves, hashes, checks = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            t0 = time.perf_counter()
            out = ckpt.save_checkpoint(Path(tmp), i + 1, model, meta, state)
            saves.append(time.perf_counter() - t0)
            files = [out / ckpt.MODEL_FILE, out / ckpt.STATE_FILE]
            t0 = time.perf_counter()
            for f in files:
                ckpt.file_sha256(f)
            hashes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            meta_on_disk = json.loads((out / ckpt.META_FILE).read_text())
            for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE):
                ckpt.verified_file(out, name, meta_on_disk, name)
            checks.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in files)
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    print(f"{args.preset} checkpoint: {size / 2**20:.1f} MiB in {len(files)} files (weights and resume state), "
          f"median of {args.repeats}")
    print(f"  save_checkpoint, all of it           {ms(saves):8.1f} ms")
    print(f"    of which writing (save - hashing)  {ms(saves) - ms(hashes):8.1f} ms")
    share, rate = 100 * ms(hashes) / ms(saves), size / 2**20 / ms(hashes) * 1e3
    print(f"    of which hashing both files        {ms(hashes):8.1f} ms  = {share:.0f}% of the save, {rate:.0f} MiB/s")
    print(f"  checking both hashes on a load       {ms(checks):8.1f} ms")


if __name__ == "__main__":
    main()
