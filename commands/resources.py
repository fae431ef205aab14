"""Where a study's jobs run: this machine's usable cores and GPUs, split into slots, or a Ray cluster.

A slot is where one job runs: its CPU threads and, on a GPU machine, GPUs of its own
(`CUDA_VISIBLE_DEVICES`). On CPUs a study runs one single-thread run per usable core (a d=128 model
gains little from a second thread; a second run gains nearly 2×), capped by the runs it can start, so a
short study on a big machine gives each run several threads. On N GPUs it runs N // gpus-per-run runs at
a time, each on its own GPUs; a run with several GPUs trains under torchrun, a rank per GPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from trainer.errors import ConfigError

CLUSTERS = ("local", "ray")  # local: processes on this machine (the default); ray: tasks on a Ray cluster


@dataclass(frozen=True)
class Launch:
    """How a study runs its jobs: where, and how many at a time."""

    jobs: int | None = None  # at most this many jobs at a time (None: every usable core, or every GPU slot)
    gpus_per_run: int | None = None  # None: 1 where GPUs are found, else 0 (the runs train on CPUs)
    cluster: str = "local"
    address: str = "auto"  # --cluster ray: Ray's cluster address ("auto": the cluster this node joined; "local": in-process)

    def __post_init__(self) -> None:
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"--jobs {self.jobs} must be at least 1")
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise ConfigError(f"--gpus-per-run {self.gpus_per_run} must be at least 0 (0: train on the CPU)")
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"--cluster {self.cluster!r}: one of {', '.join(CLUSTERS)}")


@dataclass(frozen=True)
class Slot:
    """Where one local job runs: its CPU threads and its GPUs (none: the CPU, every GPU hidden from it)."""

    threads: int = 1
    gpus: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        return {"OMP_NUM_THREADS": str(self.threads), "CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus(env: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES's entries where it is set (CUDA stops at
    the first invalid one, e.g. -1), else every device torch counts."""
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        devices = []
        for d in (d.strip() for d in given.split(",")):
            if not d or d.startswith("-"):
                break
            devices.append(d)
        return devices
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(devices: Sequence[str], per_run: int) -> list[tuple[str, ...]]:
    """`devices` cut into disjoint sets of `per_run`, in order: len(devices) // per_run of them (a remainder
    smaller than a run stays idle)."""
    if per_run < 1:
        raise ConfigError(f"--gpus-per-run {per_run} must be at least 1 to share out GPUs")
    if per_run > len(devices):
        raise ConfigError(f"--gpus-per-run {per_run}: this machine shows {len(devices)} GPU(s)"
                          f"{' (' + ', '.join(devices) + ')' if devices else ''}; use --gpus-per-run 0 to train on the CPU")
    return [tuple(devices[i:i + per_run]) for i in range(0, len(devices) - per_run + 1, per_run)]


def local_slots(launch: Launch, runs: int, cores: int | None = None,
                gpus: Sequence[str] | None = None) -> list[Slot]:
    """The slots of this machine for a study with `runs` runs left to start: on CPUs one a usable core, at
    most `runs` (then each gets a share of the cores as threads) and at most --jobs; on GPUs one per
    --gpus-per-run GPUs (at most --jobs), the cores shared among them."""
    cores = usable_cores() if cores is None else cores
    gpus = visible_gpus() if gpus is None else list(gpus)
    per_run = gpus_per_run(launch, len(gpus))
    if per_run:
        sets = gpu_slots(gpus, per_run)[:launch.jobs]
        return [Slot(max(1, cores // len(sets)), s) for s in sets]
    n = max(1, min(launch.jobs or cores, runs))
    return [Slot(max(1, cores // n))] * n


def gpus_per_run(launch: Launch, gpus: int) -> int:
    """--gpus-per-run, or its default: 1 where there are GPUs, else 0."""
    return launch.gpus_per_run if launch.gpus_per_run is not None else (1 if gpus else 0)


def train_command(args: Sequence[str], ranks: int = 1) -> list[str]:
    """The command that runs `smearlens train ARGS`: one process, or torchrun with `ranks` ranks on this
    node (--standalone: a free port of its own, so several run side by side; NCCL on GPUs, gloo on CPUs)."""
    if ranks <= 1:
        return [sys.executable, "-m", "commands.cli", "train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
            "-m", "commands.cli", "train", *args]


__all__ = ["Launch", "Slot", "CLUSTERS", "usable_cores", "visible_gpus", "gpu_slots", "local_slots", "gpus_per_run",
           "train_command"]
