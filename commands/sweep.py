"""`smearlens sweep`: one study per preset (a size each) under one folder, then the sweep's report.

    smearlens sweep --out studies/sizes --presets cpu-small-d96,cpu-small,cpu-small-d192 --seeds 3 --set val_every=100

Each preset's runs are a study in `OUT/PRESET/` (`commands/study.py`'s `run_study`: resumable, a plan
that only grows); then `OUT/report.md`, `OUT/figures/` and `OUT/tables/` set the sizes side by side
(`analysis/writeup/sweep_report.py`). `sweep.json` records the presets, so `smearlens sweep --out OUT` alone
continues the sweep; every other setting lives in each study's study.json. `smearlens sweep-report
STUDY... --out OUT` writes the report over finished study folders made any other way.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Sequence

from commands.resources import Launch
from commands.study import (StudyPlan, copy_present, copy_study, load_plan, merge_plan, parse_names, resolve_plan,
                            run_study)
from trainer import checkpoint as ckpt
from trainer.config import get_preset
from trainer.errors import ConfigError
from trainer.io import atomic_write_text

MANIFEST = "sweep.json"
SIZE_PRESETS = ("cpu-small-d96", "cpu-small", "cpu-small-d192")


def parse_presets(text: str) -> tuple[str, ...]:
    """`a,b,c` → the presets, each checked, duplicates dropped."""
    return tuple(parse_names(text, "--presets", get_preset))


def sweep_presets(out: Path, presets: Sequence[str] | None) -> tuple[str, ...]:
    """The presets given added to those in OUT/sweep.json (a sweep only grows), in order."""
    path = out / MANIFEST
    old: tuple[str, ...] = ()
    if path.exists():
        d = ckpt.read_json(path, "sweep plan")
        if not isinstance(d.get("presets"), list) or not all(isinstance(p, str) for p in d["presets"]):
            raise ConfigError(f"{path}: not a sweep plan (expected {{\"presets\": [...]}})")
        old = tuple(d["presets"])
    grown = tuple(dict.fromkeys(old + tuple(presets or ())))
    if not grown:
        raise ConfigError(f"{out}: no {MANIFEST} here: a new sweep needs --presets")
    return grown


def sweep_plans(out: Path, presets: Sequence[str], **study_kw) -> list[StudyPlan]:
    """Each preset's study plan, checked against its folder's study.json before any training starts."""
    plans = []
    for preset in presets:
        folder = out / preset
        plan = resolve_plan(folder, preset=preset, **study_kw)
        old = load_plan(folder)
        plans.append(merge_plan(old, plan, folder / "study.json") if old else plan)
    return plans


def run_sweep(out: str | Path, presets: Sequence[str] | None = None, *, launch: Launch = Launch(), progress: bool = True,
              command: str | None = None, allow_split: bool = False, **study_kw) -> Path:
    """Train, analyse and report every preset's study (skipping what is done), then the sweep report."""
    from analysis.writeup.sweep_report import write_sweep_report

    out = Path(out)
    presets = sweep_presets(out, presets)
    for p in presets:
        get_preset(p)
    plans = sweep_plans(out, presets, **study_kw)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps({"presets": list(presets)}, indent=1))
    for i, plan in enumerate(plans, 1):
        print(f"== size {i}/{len(plans)}: {plan.preset} → {out / plan.preset}", flush=True)
        run_study(plan, out / plan.preset, launch=launch, progress=progress, allow_split=allow_split)
    command = command or shlex.join(["smearlens", "sweep", "--out", str(out), "--presets", ",".join(presets)])
    path = write_sweep_report([out / p for p in presets], out, commands=[command])
    print(f"sweep report: {path}", flush=True)
    return path


def copy_sweep(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the sweep in `src` to `dst` without checkpoints: sweep.json, its report, figures and tables,
    and each preset's study as `copy_study` copies it (the copy resumes with `smearlens sweep --out DST`).
    Returns the runs copied, as PRESET/RUN."""
    src, dst = Path(src), Path(dst)
    presets = sweep_presets(src, None)
    copy_present(src, dst, [MANIFEST, "report.md"], ["figures", "tables"])
    return [f"{p}/{run}" for p in presets if (src / p).is_dir() for run in copy_study(src / p, dst / p)]


__all__ = ["run_sweep", "copy_sweep", "parse_presets", "sweep_presets", "MANIFEST", "SIZE_PRESETS"]
