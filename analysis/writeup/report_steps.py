"""The report's section "Steps saved at matched loss": the tables `smearlens steps-saved` wrote beside report.md
(per arm: the loss difference in nats beside the baseline steps it is worth), the exchange rate, the learned
smear against the record's author's "about 5 steps of 1,645", and the figure."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from analysis.stats import steps_saved as ss
from analysis.tables import BASELINE
from analysis.writeup.markdown import _interval, _md_table, _num


def _ci(lo: float, hi: float, fmt: str) -> str:
    return _interval(lo, hi, fmt, "")


def _read(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path) if path.is_file() else None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return None


def steps_markdown_section(folder: str | Path, figures_dir: str | Path, where: str | Path) -> list[str]:
    """The section's lines, or none when `folder` (the report's own) holds no `steps_saved.csv`."""
    folder, figures_dir, where = Path(folder), Path(figures_dir), Path(where)
    path = folder / ss.SUMMARY_FILE
    if not path.is_file():
        return []
    summary, rate = _read(path), _read(folder / ss.RATE_FILE)
    body = ["## Steps saved at matched loss", ""]
    if summary is None or not set(ss.SUMMARY_COLUMNS) <= set(summary.columns):
        return body + [f"*Absent: `{path.name}` is not a steps-saved table (rerun `smearlens steps-saved`).*", ""]
    own, summary = summary[summary["curve"] != BASELINE], summary[summary["curve"] == BASELINE]
    if rate is not None and not set(ss.RATE_COLUMNS) <= set(rate.columns):
        rate = None  # not a rate table: the section goes on without the rates
    own_rate = rate[rate["curve"] != BASELINE].set_index("curve") if rate is not None else None
    rate = rate[rate["curve"] == BASELINE] if rate is not None else None
    # a study of the baseline alone (part C before the arms) has a curve and a rate but no summary row
    fit = summary if len(summary) else rate if rate is not None and len(rate) else None
    n0 = int(fit["preset_steps"].iloc[0]) if fit is not None else 0
    body += [f"The baseline trained as full runs at other step budgets, its final loss fitted against ln(steps) "
             f"({fit['shape'].iloc[0] if fit is not None else '—'}; `analysis/stats/steps_saved.py`), and each arm "
             f"placed at the baseline steps that reach its loss, paired by seed: steps saved = those steps − "
             f"{n0} (positive: the arm is ahead). A seed whose loss the budgets do not reach has no number "
             f"(\"{ss.BEYOND}\"); the column \"mean Δ loss as % of training\" converts the mean loss difference "
             "instead, every seed in it.", ""]
    if rate is not None and len(rate):
        r = rate.iloc[0]
        body += [f"Exchange rate at {n0} steps: 1% more steps lowers the validation loss by "
                 f"{_num(r['nats_per_pct'], '{:.4f}')} nats {_ci(r['ci_low'], r['ci_high'], '{:.4f}')} "
                 f"({int(r['n_seeds'])} seeds, {int(r['n_points'])} runs; budgets {r['budgets']}).", ""]
        if "not monotone" in str(r["shape"]):
            body += [not_monotone_line(_read(folder / ss.BUDGETS_FILE)), ""]
    if len(summary):
        rows = [_cells(r) + [r["verdict"]] for r in summary.to_dict("records")]
        body += [_md_table(_columns(n0) + ["verdict"], rows), "", record_comparison(summary), ""]
    else:
        body += ["No arm is converted here: the study has finished runs of its baseline alone, whose curve and "
                 "exchange rate convert other studies (`smearlens steps-saved STUDY --shape-from` this folder).", ""]
    if len(own):
        body += own_curve_lines(own, own_rate, n0)
    png = figures_dir / f"{ss.FIGURE}.png"
    if png.is_file():
        rel = Path(os.path.relpath(png.resolve(), where.resolve())).as_posix()
        body += [f"![Steps saved at matched loss]({rel})", "",
                 "*The baseline's final loss at each budget (points moved by their seed's 1× distance from the "
                 "mean) and the fitted curve; each arm on the curve at its matched steps with its 95% CI (filled: "
                 "mean over seeds; hollow: the mean loss difference converted)"
                 + ("; dashed, an arm's own curve and its runs, the square where it reaches the baseline's 1× loss"
                    if len(own) else "") + ".*", ""]
    return body


def not_monotone_line(budgets: pd.DataFrame | None) -> str:
    """The warning for a baseline curve that turns inside its budgets, with the mean final loss at each."""
    means = ""
    if budgets is not None and {"arm", "steps", "val_loss"} <= set(budgets.columns):
        m = budgets[budgets["arm"] == BASELINE].groupby("steps")["val_loss"].agg(["mean", "size"])
        means = " (the baseline's mean final loss by budget: " + ", ".join(
            f"{int(n):,} steps {r['mean']:.4f} ({int(r['size'])} seeds)" for n, r in m.iterrows()) + ")"
    return ("**The baseline's final loss is not monotone in its budget here**" + means + ": a loss difference is "
            "read on the fitted curve's branch through 1×, the nearest budget that reaches it; budgets below the "
            "turn may reach the same loss in fewer steps, so the speedrun's currency is ill-defined at this size "
            "beyond small differences, and the exchange rate is the curve's local slope at 1×.")


def _columns(n0: int) -> list[str]:
    return ["arm", "Δ validation loss, nats [95% CI]", f"steps saved of {n0} [95% CI]", "% of training [95% CI]",
            "seeds with a value", "mean Δ loss as % of training [95% CI]"]


def _cells(r: dict) -> list[str]:
    """A summary row's cells under `_columns`."""
    return [r["arm"], f"{_num(r['loss_diff'], '{:+.4f}')} {_ci(r['loss_ci_low'], r['loss_ci_high'], '{:+.4f}')}",
            f"{_num(r['steps_saved'], '{:+.1f}')} {_ci(r['ci_low'], r['ci_high'], '{:+.1f}')}",
            f"{_num(r['pct_saved'], '{:+.2f}%')} {_ci(r['pct_ci_low'], r['pct_ci_high'], '{:+.2f}')}",
            f"{int(r['n'])} of {int(r['n_seeds'])}" + (f" ({int(r['n_beyond'])} beyond)" if r["n_beyond"] else ""),
            f"{_num(r['pct_at_mean_loss'], '{:+.2f}%')} {_ci(r['pct_at_mean_ci_low'], r['pct_at_mean_ci_high'], '{:+.2f}')}"]


def own_curve_lines(own: pd.DataFrame, rate: pd.DataFrame | None, n0: int) -> list[str]:
    """The arms trained at the budgets too, each on its own curve: the steps it needs to reach its seed's baseline
    1× loss (the speedrun's currency for an arm better than the baseline, whose loss no baseline budget reaches)."""
    lines = ["### On the arm's own curve: its steps to the baseline's loss", "",
             "The speedrun's own currency: each of these arms was trained at the budgets too, its final loss fitted "
             "the same way (a shape shared by its seeds, each seed anchored at the arm's own 1× run), and read where "
             f"it reaches its seed's baseline loss at {n0} steps. Steps saved = {n0} − those steps (positive: the "
             "arm gets the baseline's result sooner).", ""]
    rows = []
    for r in own.to_dict("records"):
        fit = rate.loc[r["arm"]] if rate is not None and r["arm"] in rate.index else None
        own_rate = ("—" if fit is None else f"{_num(fit['nats_per_pct'], '{:.4f}')} "
                    f"{_ci(fit['ci_low'], fit['ci_high'], '{:.4f}')} ({int(fit['n_seeds'])} seeds; {fit['budgets']})")
        rows.append(_cells(r) + [own_rate, r["verdict"]])
    return lines + [_md_table(_columns(n0) + ["its own rate, nats per 1% [95% CI]", "verdict"], rows), ""]


def record_comparison(summary: pd.DataFrame, arm: str = ss.RECORD_ARM) -> str:
    """The learned smear's steps saved beside the record's author's estimate (5 of 1,645 steps)."""
    author = ss.record_author_pct()
    said = (f"The record's author put the smear's gain at about {ss.RECORD_AUTHOR_STEPS} steps of "
            f"{ss.RECORD_STEPS:,} ({author:.2f}% of training, at 124M parameters)")
    rows = summary[summary["arm"] == arm]
    if rows.empty:
        return said + f"; this study has no {arm} arm to set beside it."
    r = rows.iloc[0]
    # the headline, as for the verdict: the mean loss difference converted (every seed in it)
    pct, lo, hi = r["pct_at_mean_loss"], r["pct_at_mean_ci_low"], r["pct_at_mean_ci_high"]
    if not math.isfinite(pct):
        return said + f"; the learned smear's mean loss difference here is {r['at_mean_status']}: no number."
    if not math.isfinite(lo):
        place = " (no CI)"
    elif lo <= author <= hi and lo <= 0 <= hi:
        place = f"; both 0 and {author:.2f}% lie inside that 95% CI: too few seeds to tell them apart"
    else:
        place = f"; {author:.2f}% lies {'inside' if lo <= author <= hi else 'outside'} that 95% CI"
    return (said + f". The learned smear here (its mean loss difference converted): {pct:+.2f}% "
            f"{_ci(lo, hi, '{:+.2f}')} of {int(r['preset_steps'])} steps{place}.")


__all__ = ["steps_markdown_section", "own_curve_lines", "record_comparison"]
