"""`smearlens demo`: the whole study on the embedded corpus, in one command.

The demo is a study (commands/study.py) with a fixed plan: the cpu-small preset, the arms baseline,
smear and the fixed dose dose-0.8, seeds 0..2, recording every 50 steps. Its layout: run folders and
`study.json` in checkpoints/, the tables in checkpoints/analysis/, notebooks, figures and report.md in
figures/. Every stage skips what is already done, so an interrupted demo continues where it stopped.

To fit ten minutes on two CPU cores (install included) the demo trains 800 steps (half an epoch of the
embedded corpus; cpu-small's own schedule is 1,600) under bf16 autocast, 1.7× faster a step than fp32
(benchmarks/speed_levers.py) where the CPU multiplies bf16 natively (AVX-512 or AMX). On an AVX2-only CPU
torch's bf16 fallback makes autocast 7.8× *slower* than fp32 (3,294 against 425 CPU ms a cpu-small step on an
AMD EPYC), so there the demo trains in fp32: slower than ten minutes, and a run's numbers differ in their
last bits from the bf16 demo's. Every baseline seed still forms a previous-token head (≥ 0.4: they pass
0.4 by step ~300 of 800). The reference study stays fp32 at 1,600 steps (figures/study/PLAN.md);
`smearlens demo --steps 1600 --set autocast=fp32` trains the demo that way.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

import torch

from trainer.config import get_preset
from trainer.optim import native_bf16_matmul

from commands.resources import Launch
from commands.study import RECORD_EVERY, StudyPlan, override_name, run_study

DEMO_PRESET = "cpu-small"
DEMO_ARMS = ("baseline", "smear", "dose-0.8")  # the baseline, the record's smear and a fixed dose (no gate)
DEMO_SEEDS = 3
DEMO_STEPS = 800
# The powered study (32 pairs, figures/study/PLAN.md): its verdicts stand beside the demo's 3 seeds, which cannot
# decide the primary claims. In the repository, not the package: a demo run outside a checkout goes without it.
REFERENCE_STUDY = Path(__file__).resolve().parents[1] / "figures" / "study" / "powered"


def demo_overrides() -> tuple[str, ...]:
    """The demo's own settings: bf16 autocast where this machine has bf16 GEMMs, else fp32 (see above)."""
    return ("autocast=bf16",) if native_bf16_matmul(torch.device("cpu")) else ("autocast=fp32",)


def demo_plan(preset: str = DEMO_PRESET, seeds: int = DEMO_SEEDS, steps: int | None = None,
              arms: Sequence[str] = DEMO_ARMS, overrides: Sequence[str] = ()) -> StudyPlan:
    """The demo's plan: `overrides` (NAME=VALUE) replace the demo's own of the same name."""
    given = {override_name(o): o for o in overrides}
    merged = [o for o in demo_overrides() if override_name(o) not in given] + list(given.values())
    return StudyPlan(preset=preset, arms=tuple(arms), seeds=tuple(range(seeds)),
                     steps=steps or (DEMO_STEPS if preset == DEMO_PRESET else get_preset(preset).train.steps),
                     overrides=tuple(merged), record_every=RECORD_EVERY)


def run_demo(preset: str = DEMO_PRESET, seeds: int = DEMO_SEEDS, steps: int | None = None,
             out: str | Path = "checkpoints", figures: str | Path = "figures", launch: Launch = Launch(),
             notebooks: bool = True, overrides: Sequence[str] = (), arms: Sequence[str] = DEMO_ARMS) -> Path:
    plan = demo_plan(preset, seeds, steps, arms, overrides)
    command = shlex.join(["smearlens", "demo", "--preset", preset, "--seeds", str(seeds), "--steps", str(plan.steps),
                          "--arms", ",".join(plan.arms), *(x for o in plan.overrides for x in ("--set", o))])
    figures = Path(figures)
    reference = REFERENCE_STUDY if preset == DEMO_PRESET and (REFERENCE_STUDY / "summary.csv").is_file() else None
    return run_study(plan, out, tables=Path(out) / "analysis", figures=figures, report=figures / "report.md",
                     launch=launch, notebooks=notebooks, command=command, reference=reference)
