"""`smearlens steps-saved STUDY --budgets DIR [DIR ...]`: each arm's loss difference as baseline training steps.

    smearlens study --out studies/budgets-1360 --preset cpu-small --arms baseline --seeds 0-7 --steps 1360
    smearlens steps-saved studies/powered --budgets studies/budgets-1360 studies/budgets-1490 studies/budgets-1730

Each budget folder is an ordinary study of the baseline at another `--steps` (its own schedule), of the same
preset, `--set` overrides and data as STUDY; the study's own baseline is the 1× point. The statistics are
`analysis.stats.steps_saved`'s. Writes, into --out (default STUDY, beside its report.md, which then gains the
section "Steps saved at matched loss" the next time it is written): `steps_saved.csv` (per arm),
`steps_saved_seeds.csv` (per arm × seed), `steps_saved_rate.csv` (the fitted shape and the exchange rate),
`steps_saved_budgets.csv` (the baseline's runs at every budget) and `figures/steps_saved.{png,svg}`.
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
    """The baseline's finished runs at every budget (seed, steps, val_loss, folder): the study's own at 1×, then
    each budget study's; every input problem is one AnalysisError naming the folder or argument."""
    base = study.runs[study.runs["arm"] == BASELINE]
    if base.empty:
        raise AnalysisError(f"{study.folder}: no finished baseline runs: the study's baseline is the 1× point")
    parts = [base.assign(folder=str(study.folder))]
    seen = {study.folder.resolve(): str(study.folder)}
    for folder in map(Path, budgets):
        if folder.resolve() in seen:
            raise AnalysisError(f"--budgets {folder}: the same folder as {seen[folder.resolve()]}")
        seen[folder.resolve()] = str(folder)
        try:
            got = ss.read_study_losses(folder, arms=[BASELINE])
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
            raise AnalysisError(f"--budgets {folder}: no finished baseline runs (train them: smearlens study --out "
                                f"{folder} --preset {study.preset} --arms baseline --steps {got.steps})")
        parts.append(got.runs.assign(folder=str(folder)))
    return pd.concat(parts, ignore_index=True)[["seed", "steps", "val_loss", "folder"]]


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
    except AnalysisError as e:
        raise AnalysisError(f"--budgets: {e}") from None
    out = Path(out) if out is not None else main.folder
    (out / "figures").mkdir(parents=True, exist_ok=True)
    rate = rate.assign(folders=" ".join(sorted(set(points["folder"]))))  # where the budget points came from
    anchors = main.runs[main.runs["arm"] == BASELINE].set_index("seed")["val_loss"]
    fitted = ss.fitted_points(points, shape, anchors).merge(points[["seed", "steps", "folder"]], on=["seed", "steps"])
    for name, df in ((ss.SUMMARY_FILE, summary), (ss.SEEDS_FILE, seeds), (ss.RATE_FILE, rate),
                     (ss.BUDGETS_FILE, fitted)):
        atomic_write_text(out / name, df.to_csv(index=False))
    save(steps_saved_figure(fitted, shape, summary, rate), out / "figures", ss.FIGURE)
    return summary


def summary_lines(summary: pd.DataFrame) -> list[str]:
    """One line per arm for the terminal (no number where there is none)."""
    num = lambda v, fmt: "n/a" if pd.isna(v) else fmt.format(v)
    lines = []
    for r in summary.to_dict("records"):
        steps = (f"steps saved {num(r['steps_saved'], '{:+.1f}')} [{num(r['ci_low'], '{:+.1f}')}, "
                 f"{num(r['ci_high'], '{:+.1f}')}] of {r['preset_steps']} ({num(r['pct_saved'], '{:+.2f}%')}); "
                 f"mean loss converted {num(r['pct_at_mean_loss'], '{:+.2f}%')}; " if r["n"] else "")
        lines.append(f"{r['arm']}: Δ loss {r['loss_diff']:+.4f}; {steps}{r['verdict']}")
    return lines


__all__ = ["run_steps_saved", "budget_points", "summary_lines", "SAME_PLAN"]
