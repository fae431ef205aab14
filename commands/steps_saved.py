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

    smearlens steps-saved studies/powered --shape-from studies/speedrun

converts a study without budget runs of its own on the baseline's curve another steps-saved fitted (the same
preset and budget; each seed anchored at this study's own baseline). Where the two studies' settings differ
(bf16 budget runs, fp32 study runs), the tables and the report's section say so beside the shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.stats import steps_saved as ss
from analysis.tables import BASELINE
from trainer.errors import AnalysisError, one_line
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


def _read_study(study: str | Path, baseline_only: bool = False) -> ss.StudyLosses:
    """STUDY's final losses; with `baseline_only`, a study whose only finished runs are its baseline's is read
    too (its budget curves then give the exchange rate, and no arm is converted yet)."""
    main = ss.read_study_losses(study)
    if not baseline_only and not (main.runs["arm"] != BASELINE).any():
        raise AnalysisError(f"{main.folder}: no finished runs of an arm other than the baseline to convert")
    return main


def _write(out: Path, summary: pd.DataFrame, seeds: pd.DataFrame, rate: pd.DataFrame, fitted: pd.DataFrame,
           shapes: dict[str, ss.Shape]) -> None:
    from analysis.writeup.plots import save, steps_saved_figure

    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, df in ((ss.SUMMARY_FILE, summary), (ss.SEEDS_FILE, seeds), (ss.RATE_FILE, rate), (ss.BUDGETS_FILE, fitted)):
        atomic_write_text(out / name, df.to_csv(index=False))
    save(steps_saved_figure(fitted, shapes, summary, rate), out / "figures", ss.FIGURE)


def run_steps_saved(study: str | Path, budgets: Sequence[str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """Read STUDY and the budget studies, write the tables and the figure into `out` (default STUDY); returns
    the per-arm summary (empty, the curve and the exchange rate written all the same, while STUDY has finished
    runs of the baseline only)."""
    main = _read_study(study, baseline_only=True)
    points = budget_points(main, budgets)
    try:
        shape, rate, seeds, summary = ss.steps_saved_tables(points, main.runs, main.steps)
        arm_shapes, arm_rate, arm_seeds, arm_summary = ss.arm_curve_tables(points, main.runs, main.steps)
    except AnalysisError as e:
        raise AnalysisError(f"--budgets: {e}") from None
    shapes = {BASELINE: shape, **arm_shapes}
    folders = points.groupby("arm")["folder"].agg(lambda f: " ".join(sorted(set(f))))  # where each curve's runs came from
    rate = pd.concat([rate, arm_rate], ignore_index=True)
    rate["folders"] = rate["curve"].map(folders)
    fitted = pd.concat([ss.fitted_points(points, sh, main.runs[main.runs["arm"] == arm].set_index("seed")["val_loss"])
                        for arm, sh in shapes.items()], ignore_index=True)
    fitted = fitted.merge(points[["arm", "seed", "steps", "folder"]], on=["arm", "seed", "steps"])
    summary = pd.concat([summary, arm_summary], ignore_index=True)
    _write(Path(out) if out is not None else main.folder, summary, pd.concat([seeds, arm_seeds], ignore_index=True),
           rate, fitted, shapes)
    return summary


def _read_csv(path: Path, flag: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise AnalysisError(f"{flag} {path}: not a steps-saved table ({one_line(e)})") from None


def run_shape_from(study: str | Path, source: str | Path, out: str | Path | None = None) -> pd.DataFrame:
    """Convert STUDY's arms on the baseline's curve that `smearlens steps-saved` fitted for another study
    (`source`: the folder holding its steps_saved_rate.csv and steps_saved_budgets.csv), each seed's curve
    anchored at STUDY's own baseline; the tables say where the shape came from, and with which settings."""
    main = _read_study(study)
    source = Path(source)
    rate_path, budgets_path = source / ss.RATE_FILE, source / ss.BUDGETS_FILE
    if not rate_path.is_file():
        raise AnalysisError(f"--shape-from {source}: no {ss.RATE_FILE} here (write it first: smearlens steps-saved "
                            f"{source} --budgets DIR …)")
    rate = _read_csv(rate_path, "--shape-from")
    budgets = _read_csv(budgets_path, "--shape-from") if budgets_path.is_file() else None
    try:
        shape = ss.shape_from_tables(rate, budgets)
    except AnalysisError as e:
        raise AnalysisError(f"--shape-from {source}: {e}") from None
    if shape.n0 != main.steps:
        raise AnalysisError(f"--shape-from {source}: its shape is fitted around {shape.n0} steps, but {main.folder} "
                            f"trained for {main.steps}: a shape converts only a study of its own budget")
    where = f"fitted in {source}"
    plan_path = source / "study.json"
    if plan_path.is_file():
        theirs = ss.read_study_losses(source, arms=[]).plan  # its plan only, not its runs' logs
        if theirs.get("preset") != main.preset:
            raise AnalysisError(f"--shape-from {source}: a shape of preset {theirs.get('preset')!r}, but "
                                f"{main.folder} has {main.preset!r}")
        differ = [k for k in ("overrides", "data") if _setting(theirs, k) != _setting(main.plan, k)]
        if differ:  # e.g. bf16 budget runs converting fp32 runs: allowed, and said wherever the shape is named
            where += "; " + ", ".join(f"its runs' {k} {_setting(theirs, k)!r}, this study's {_setting(main.plan, k)!r}"
                                      for k in differ)
    seeds = ss.per_seed_steps(main.runs, shape)
    summary = ss.summarize_steps(seeds, shape).assign(shape=f"{shape.describe()}, {where}")
    rate = ss.exchange_rate(shape).assign(shape=f"{shape.describe()}, {where}", folders=str(source))
    fitted = (budgets[budgets["arm"] == BASELINE] if budgets is not None and "arm" in budgets.columns else budgets)
    if fitted is None or not len(fitted):
        raise AnalysisError(f"--shape-from {source}: no baseline rows in {ss.BUDGETS_FILE} to draw the curve from")
    _write(Path(out) if out is not None else main.folder, summary, seeds, rate, fitted, {BASELINE: shape})
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


def rate_lines(rate: pd.DataFrame) -> list[str]:
    """One line per curve: the exchange rate at 1×, nats per 1% of steps, with its CI."""
    return [f"exchange rate on the {r['curve']}'s curve at {r['preset_steps']} steps: {r['nats_per_pct']:.5f} nats "
            f"per 1% of steps [{r['ci_low']:.5f}, {r['ci_high']:.5f}] ({r['n_seeds']} seeds; {r['shape']})"
            for r in rate.to_dict("records")]


__all__ = ["run_steps_saved", "run_shape_from", "budget_points", "summary_lines", "rate_lines", "SAME_PLAN"]
