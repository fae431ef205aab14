"""`smearlens demo`: the whole study on the embedded corpus, in one command.

The demo is a study (commands/study.py) with a fixed plan: the cpu-small preset, the arms baseline,
smear and the fixed dose dose-0.8, seeds 0..2, recording every 50 steps. Its layout: run folders and
`study.json` in checkpoints/, the tables in checkpoints/analysis/, notebooks, figures and report.md in
figures/. Every stage skips what is already done, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from trainer.config import get_preset

from commands.study import RECORD_EVERY, StudyPlan, run_study

DEMO_PRESET = "cpu-small"
DEMO_ARMS = ("baseline", "smear", "dose-0.8")  # the baseline, the record's smear and a fixed dose (no gate)
DEMO_SEEDS = 3


def demo_plan(preset: str = DEMO_PRESET, seeds: int = DEMO_SEEDS, steps: int | None = None,
              arms: Sequence[str] = DEMO_ARMS, overrides: Sequence[str] = ()) -> StudyPlan:
    return StudyPlan(preset=preset, arms=tuple(arms), seeds=tuple(range(seeds)),
                     steps=steps or get_preset(preset).train.steps, overrides=tuple(overrides),
                     record_every=RECORD_EVERY)


def run_demo(preset: str = DEMO_PRESET, seeds: int = DEMO_SEEDS, steps: int | None = None,
             out: str | Path = "checkpoints", figures: str | Path = "figures", jobs: int = 2, notebooks: bool = True,
             overrides: Sequence[str] = (), arms: Sequence[str] = DEMO_ARMS) -> Path:
    plan = demo_plan(preset, seeds, steps, arms, overrides)
    command = f"smearlens demo --preset {preset} --seeds {seeds} --steps {plan.steps} --arms {','.join(plan.arms)}"
    figures = Path(figures)
    return run_study(plan, out, tables=Path(out) / "analysis", figures=figures, report=figures / "report.md",
                     jobs=jobs, notebooks=notebooks, command=command)
