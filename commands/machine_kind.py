"""Machine kinds in a study: a seed's arms are pairs, so they train on one kind of machine.

A run's last bits depend on the machine's kernels (`trainer.train.machine_info`: Muon's Newton–Schulz uses bf16
GEMMs where the CPU has them natively and fp32 ones rounded to bf16 elsewhere; a GPU differs again), and a
`--set autocast=bf16` study on a CPU without native bf16 GEMMs (e.g. AVX2 only) runs many times slower than fp32. CPUs of
both kinds can report the same model name ("AMD EPYC"), so the kind is read from the kernels, not the name.

Before a local study trains (`held_seeds`), it holds back every seed that has runs begun on another kind (training
it here would split the seed's pairs across kinds, or a run itself), says so, and trains the other seeds, unless
`--allow-split-pairs` is given; and it warns where bf16 autocast meets a CPU without native bf16 GEMMs. On a
cluster each node decides where a task runs, so the check is left to the report, which states every seed's kinds
(`analysis.writeup.report.machines_sentence`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

from commands.resources import Launch, gpus_per_run, visible_gpus
from trainer.checkpoint import RUN_FILE

SPLIT_FLAG = "--allow-split-pairs"
NATIVE_CPU = "CPU with native bf16 GEMMs"
EMULATED_CPU = "CPU without native bf16 GEMMs"


def kind_of(machine: Mapping) -> str:
    """A run's machine kind, as far as its numbers go: its GPU, or whether its CPU has native bf16 GEMMs."""
    if machine.get("gpu"):
        return f"GPU {machine['gpu']}"
    gemm = machine.get("bf16_gemm")
    return {"native": NATIVE_CPU, None: "CPU (bf16 GEMMs not recorded)"}.get(gemm, EMULATED_CPU)


def this_kind(launch: Launch) -> str:
    """The kind of machine this study's local runs train on (a GPU where the launch hands them out)."""
    import torch

    from trainer.train import machine_info

    on_gpu = gpus_per_run(launch, len(visible_gpus())) and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    return kind_of(machine_info(device))


def recorded_kind(run_dir: Path) -> str | None:
    """The kind a run was begun on, from its run.json (None: not begun, or recorded before kinds were)."""
    try:
        machine = json.loads((run_dir / RUN_FILE).read_text()).get("machine")
    except (OSError, ValueError, AttributeError):
        return None
    return kind_of(machine) if isinstance(machine, dict) else None


def split_runs(runs_by_seed: Mapping[int, Sequence[Path]], to_train: set[Path], here: str) -> dict[str, dict[int, list[str]]]:
    """Runs begun on a kind other than `here` in the seeds with runs still to train: kind → seed → run names."""
    split: dict[str, dict[int, list[str]]] = {}
    for seed, runs in sorted(runs_by_seed.items()):
        if any(r in to_train for r in runs):
            for r in runs:
                if (kind := recorded_kind(r)) is not None and kind != here:
                    split.setdefault(kind, {}).setdefault(seed, []).append(r.name)
    return split


def held_seeds(study: Path, runs_by_seed: Mapping[int, Sequence[Path]], to_train: set[Path], here: str,
               overrides: Sequence[str], allow_split: bool = False) -> list[int]:
    """The seeds not to train here: those whose runs began on another kind (none with `allow_split`), each named
    on stderr with its runs and kind. Also warns where bf16 autocast meets a CPU without native bf16 GEMMs."""
    if to_train and here == EMULATED_CPU and any(o.replace(" ", "") == "autocast=bf16" for o in overrides):
        print(f"warning: this is a {here}: --set autocast=bf16 runs many times slower here than fp32 "
              "(docs/benchmarks.md: 3,294 against 425 ms a cpu-small step on an AVX2 EPYC; about 100 ms in bf16 "
              "where bf16 GEMMs are native)", file=sys.stderr, flush=True)
    split = {} if allow_split else split_runs(runs_by_seed, to_train, here)
    if split:
        where = "; ".join(
            f"seeds {', '.join(map(str, seeds))} on a {kind} ({', '.join(sorted(n for ns in seeds.values() for n in ns)[:3])}"
            f"{', …' if sum(map(len, seeds.values())) > 3 else ''})" for kind, seeds in split.items())
        print(f"{study}: held back: this machine is a {here}, and runs of seeds it would train began on another "
              f"kind: {where}. Training the rest of those seeds here would split their pairs across machine kinds "
              f"(a run's last bits depend on the kernels), so they wait for a machine of that kind; the other seeds "
              f"train. {SPLIT_FLAG} trains them here anyway (the report then names the split seeds).",
              file=sys.stderr, flush=True)
    return sorted({seed for seeds in split.values() for seed in seeds})
