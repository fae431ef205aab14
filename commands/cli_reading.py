"""`smearlens` commands that read finished studies into a report or tables: sweep-report, dose-report,
steps-saved (their parsers and what each runs; `commands/cli.py` holds the rest of the command line)."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.stats import DEFAULT_THRESHOLD


def cmd_sweep_report(args: argparse.Namespace) -> None:
    from analysis.writeup.sweep_report import write_sweep_report

    print(f"wrote {write_sweep_report(args.studies, args.out, commands=[*args.commands, args.command_line])}")


def cmd_dose_report(args: argparse.Namespace) -> None:
    from analysis.writeup.dose_report import write_dose_report

    arms = [a for item in args.arms for a in item.split(",") if a] or None
    path = write_dose_report(args.sources, args.out, arms=arms, threshold=args.threshold, commands=[args.command_line])
    print(f"wrote {path}")


def cmd_steps_saved(args: argparse.Namespace) -> None:
    import pandas as pd

    from analysis.stats.steps_saved import RATE_FILE
    from commands.steps_saved import rate_lines, run_shape_from, run_steps_saved, summary_lines

    summary = (run_shape_from(args.study, args.shape_from, args.out) if args.shape_from else
               run_steps_saved(args.study, args.budgets, args.out))
    out = Path(args.out or args.study)
    print("\n".join(rate_lines(pd.read_csv(out / RATE_FILE)) + (
        summary_lines(summary) or ["no arm but the baseline has finished runs: its curve and exchange rate only"])))
    print(f"wrote {out / 'steps_saved.csv'} (and _seeds, _rate, _budgets) and {out / 'figures' / 'steps_saved.png'}")


def add_reading_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep-report", help="the size sweep's report over finished study folders (one size each)")
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study folders made by `smearlens study`")
    p.add_argument("--out", required=True, help="folder for report.md, figures/ and tables/")
    p.add_argument("--command", dest="commands", action="append", default=[], metavar="CMD",
                   help="a command that produced the studies, listed in the report (repeatable)")
    p.set_defaults(func=cmd_sweep_report)

    p = sub.add_parser("dose-report", help="the dose-response over several studies pooled (a seed of a later "
                                           "study is a unit of its own, paired with its own baseline)")
    p.add_argument("sources", nargs="+", metavar="[NAME=]PATH",
                   help="study folders, tables folders or dose_table.csv files; the first one's seeds are 0, 1, …")
    p.add_argument("--arms", action="append", default=[], metavar="ARM[,ARM…]", help="keep only these arms")
    p.add_argument("--out", required=True, help="folder for report.md, figures/ and tables/")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"previous-token head threshold (default {DEFAULT_THRESHOLD})")
    p.set_defaults(func=cmd_dose_report)

    import commands.steps_saved as steps

    p = sub.add_parser("steps-saved", help="each arm's loss difference as training steps at matched loss, from the "
                                           "baseline (and any arm) trained at other step budgets",
                       description=steps.__doc__.split("\n\n")[0])
    p.add_argument("study", metavar="STUDY", help="the study folder whose arms are converted (its baseline: 1×)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--budgets", nargs="+", metavar="DIR",
                     help="study folders at other --steps (same preset, --set and data): the baseline's give its "
                          "curve, an arm's its own")
    src.add_argument("--shape-from", metavar="DIR",
                     help="instead: the baseline's curve that steps-saved wrote into DIR for another study of the "
                          "same preset and budget")
    p.add_argument("--out", help="folder for steps_saved*.csv and figures/steps_saved.{png,svg} (default: STUDY, "
                                 "beside its report.md, which then shows them)")
    p.set_defaults(func=cmd_steps_saved)


__all__ = ["add_reading_parsers"]
