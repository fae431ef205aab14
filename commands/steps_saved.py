"""`smearlens steps-saved STUDY --budgets DIR [DIR ...]`: each arm's loss difference as training steps.

    smearlens study --out studies/budgets-1360 --preset cpu-small --arms baseline --seeds 0-7 --steps 1360
    smearlens steps-saved studies/powered --budgets studies/budgets-1360 studies/budgets-1490 studies/budgets-1730

Each budget folder is an ordinary study at another `--steps` (its own schedule), of the same preset, `--set`
overrides and data as STUDY; the study's own runs are the 1× points. Its baseline runs give the baseline's curve,
on which every arm of STUDY is placed (the baseline steps that reach the arm's loss). An arm that has budget runs
of its own (`--arms dose-0.8` in a budget study) also gets its own curve, read where it reaches the baseline's 1×
loss: the steps the arm needs for the baseline's result, the speedrun's currency for an arm better than the
baseline. The statistics are `analysis.stats.steps_saved`'s. Writes, into --out (default STUDY, beside its
report.md, which then gains the section "Steps saved at matched loss" the next time it is written), each table
with a `curve` column (whose curve: "baseline" or the arm's): `steps_saved.csv` (per arm and curve),
`steps_saved_seeds.csv` (per arm, curve and seed), `steps_saved_rate.csv` (each fitted shape and its exchange
rate), `steps_saved_budgets.csv` (the runs at every budget) and `figures/steps_saved.{png,svg}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.stats import steps_saved as ss
from analysis.tables import BASELINE
from trainer.errors import AnalysisError
from trainer.io import atomic_write_text

SAME_PLAN = ("preset", "overrides", "data")  # a budget study differs from the study only in its steps


def _setting(plan: dict, key: str) -> object:
    value = plan.get(key)
    return list(value) if isinstance(value, (list, tuple)) else value


def budget_points(study: ss.StudyLosses, budgets: Sequence[str | Path]) -> pd.DataFrame:
    """The finished runs at every budget (arm, seed, steps, val_loss, folder): each budget study's, and the
    study's own at 1× of the baseline and of every arm with budget runs; every input problem is one
    AnalysisError naming the folder or argument."""
    if not (study.runs["arm"] == BASELINE).any():
        raise AnalysisError(f"{study.folder}: no finished baseline runs: the study's baseline is the 1× point")
    parts = []
    seen = {study.folder.resolve(): str(study.folder)}
    for folder in map(Path, budgets):
        if folder.resolve() in seen:
            raise AnalysisError(f"--budgets {folder}: the same folder as {seen[folder.resolve()]}")
        seen[folder.resolve()] = str(folder)
        try:
            got = ss.read_study_losses(folder)
        except AnalysisError as e:
            raise AnalysisError(f"--budgets {e}") from None
        for key in SAME_PLAN:
            mine, theirs = _setting(got.plan, key), _setting(study.plan, key)
            if mine != theirs:
                raise AnalysisError(f"--budgets {folder}: a budget study of {key} {mine!r}, but {study.folder} has "
                                    f"{theirs!r}; a budget study differs from the study only in --steps")
        if got.steps == study.steps:
            raise AnalysisError(f"--budgets {folder}: trained for {got.steps} steps, the study's own budget (its "
                                "baseline is the 1× point): budgets are other step counts")
        if got.runs.empty:
            raise AnalysisError(f"--budgets {folder}: no finished runs (train them: smearlens study --out "
                                f"{folder} --preset {study.preset} --arms baseline --steps {got.steps})")
        parts.append(got.runs.assign(folder=str(folder)))
    budget_arms = set(pd.concat(parts)["arm"]) | {BASELINE}
    ones = study.runs[study.runs["arm"].isin(budget_arms)].assign(folder=str(study.folder))
    return pd.concat([ones, *parts], ignore_index=True)[["arm", "seed", "steps", "val_loss", "folder"]]


def run_steps_saved(study: str | Path, budgets: Sequence[str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """Read STUDY and the budget studies, write the tables and the figure into `out` (default STUDY); returns
    the per-arm summary."""
    from analysis.writeup.plots import save, steps_saved_figure

    main = ss.read_study_losses(study)
    points = budget_points(main, budgets)
    arms = main.runs[main.runs["arm"] != BASELINE]
    if arms.empty:
        raise AnalysisError(f"{main.folder}: no finished runs of an arm other than the baseline to convert")
    try:
        shape, rate, seeds, summary = ss.steps_saved_tables(points, main.runs, main.steps)
        arm_shapes, arm_rate, arm_seeds, arm_summary = ss.arm_curve_tables(points, main.runs, main.steps)
    except AnalysisError as e:
        raise AnalysisError(f"--budgets: {e}") from None
    shapes = {BASELINE: shape, **arm_shapes}
    out = Path(out) if out is not None else main.folder
    (out / "figures").mkdir(parents=True, exist_ok=True)
    folders = points.groupby("arm")["folder"].agg(lambda f: " ".join(sorted(set(f))))  # where each curve's runs came from
    rate = pd.concat([rate, arm_rate], ignore_index=True)
    rate["folders"] = rate["curve"].map(folders)
    fitted = pd.concat([ss.fitted_points(points, sh, main.runs[main.runs["arm"] == arm].set_index("seed")["val_loss"])
                        for arm, sh in shapes.items()], ignore_index=True)
    fitted = fitted.merge(points[["arm", "seed", "steps", "folder"]], on=["arm", "seed", "steps"])
    summary = pd.concat([summary, arm_summary], ignore_index=True)
    for name, df in ((ss.SUMMARY_FILE, summary), (ss.SEEDS_FILE, pd.concat([seeds, arm_seeds], ignore_index=True)),
                     (ss.RATE_FILE, rate), (ss.BUDGETS_FILE, fitted)):
        atomic_write_text(out / name, df.to_csv(index=False))
    save(steps_saved_figure(fitted, shapes, summary, rate), out / "figures", ss.FIGURE)
    return summary


def summary_lines(summary: pd.DataFrame) -> list[str]:
    """One line per arm for the terminal (no number where there is none)."""
    num = lambda v, fmt: "n/a" if pd.isna(v) else fmt.format(v)
    lines = []
    for r in summary.to_dict("records"):
        steps = (f"steps saved {num(r['steps_saved'], '{:+.1f}')} [{num(r['ci_low'], '{:+.1f}')}, "
                 f"{num(r['ci_high'], '{:+.1f}')}] of {r['preset_steps']} ({num(r['pct_saved'], '{:+.2f}%')}); "
                 f"mean loss converted {num(r['pct_at_mean_loss'], '{:+.2f}%')}; " if r["n"] else "")
        curve = "" if r["curve"] == BASELINE else " (on its own curve: its steps to the baseline's 1× loss)"
        lines.append(f"{r['arm']}{curve}: Δ loss {r['loss_diff']:+.4f}; {steps}{r['verdict']}")
    return lines


__all__ = ["run_steps_saved", "budget_points", "summary_lines", "SAME_PLAN"]
