"""The dose-response over several studies pooled: one markdown page, its figure and its tables.

    write_dose_report(["studies/powered", "screen=figures/study/screen/dose_table.csv"], "figures/study/dose-response",
                      arms=["baseline", "smear", "dose-0.05", ...], commands=[...])

A source is a study folder (its `analysis/` tables), a tables folder (heads.parquet) or a dose table a
report wrote (dose_table.csv), optionally named `NAME=PATH` (default: the folder's name). The first source's
seeds are the units `0, 1, …`; a later source's are `NAME:0, …`, paired with that source's own baseline
(`dose_response.pool_dose_tables`). Writes `report.md`, `figures/dose_response.{png,svg}` and
`tables/{dose_table,fits,arms,learned}.{parquet,csv}` under the output folder.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.stats import dose_response as dr
from analysis.writeup.markdown import _md_table
from analysis.writeup.plots import FIGURES, save
from analysis.writeup.plots.dose import dose_response as dose_response_figure
from analysis.writeup.report_arms import dose_markdown, unit_span
from analysis.stats import DEFAULT_THRESHOLD
from analysis.tables import load_tables, write_table
from trainer.errors import AnalysisError
from trainer.io import atomic_write_text

FIGURE = "dose_response"


def read_dose_source(spec: str, threshold: float = DEFAULT_THRESHOLD) -> tuple[str, pd.DataFrame, Path]:
    """`[NAME=]PATH` → (name, its dose table, path). PATH: a study folder, a tables folder or a dose table file."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    p = Path(path)
    name = name or (p.parent.name if p.is_file() else p.name)
    if not name or ":" in name:
        raise AnalysisError(f"{spec}: a source's name must be non-empty and without ':' (write NAME=PATH)")
    if p.is_file():
        readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet}
        if p.suffix not in readers:
            raise AnalysisError(f"{p}: a dose table is a .csv or .parquet file (a report's dose_table.csv)")
        try:
            return name, readers[p.suffix](p), p
        except (OSError, ValueError) as e:
            raise AnalysisError(f"{p}: unreadable dose table ({type(e).__name__}: {e})") from None
    for tables_dir, runs_dir in ((p / "analysis", p), (p, None)):
        if (tables_dir / "heads.parquet").exists():
            return name, dr.dose_table(load_tables(tables_dir, runs_dir=runs_dir), threshold), p
    raise AnalysisError(f"{p}: neither a study folder (analysis/heads.parquet), a tables folder (heads.parquet) nor a "
                        "dose table file (.csv/.parquet)")


def sources_markdown(table: pd.DataFrame, paths: dict[str, Path]) -> str:
    """Which runs each source gave: its arms with their seeds."""
    rows = []
    for name, g in table.groupby("study", sort=False):
        arms = ", ".join(f"{a} ({unit_span(gg['unit'])})" for a, gg in g.groupby("arm", sort=False))
        rows.append([name, f"`{paths[name]}`", len(g), arms])
    return _md_table(["study", "source", "runs", "arms (seeds)"], rows)


def write_dose_report(sources: Sequence[str], out: str | Path, *, arms: Sequence[str] | None = None,
                      threshold: float = DEFAULT_THRESHOLD, commands: Sequence[str] = ()) -> Path:
    """Pool the sources' dose tables (only `arms`, when given), fit the dose-response and write the report,
    its figure and its tables under `out`; returns the report's path."""
    loaded = [read_dose_source(s, threshold) for s in sources]
    names = [n for n, _, _ in loaded]
    if len(set(names)) != len(names):
        raise AnalysisError(f"sources {', '.join(names)}: two share a name (write NAME=PATH)")
    table = dr.pool_dose_tables([(n, t) for n, t, _ in loaded], list(arms) if arms else None)
    result = dr.dose_response_of(table, threshold)
    out = Path(out)
    for name, df in (("dose_table", result.table), ("fits", result.fit_table), ("arms", result.arms),
                     ("learned", result.learned)):
        write_table(df, out / "tables", name)
    png = save(dose_response_figure(result), out / "figures", FIGURE)[0]
    spec = FIGURES[FIGURE]
    text = "\n".join([
        "# Dose-response over pooled studies", "",
        f"*Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} · previous-token threshold "
        f"{threshold:g}.*", "",
        "## Sources", "", sources_markdown(result.table, {n: p for n, _, p in loaded}), "",
        "## Dose-response", "", dose_markdown(result), "",
        f"![{spec.title}]({png.relative_to(out)})", "", f"*{spec.caption}*", "",
        "## How these numbers were made", "", "Tables: `tables/` (dose_table: one row per run; fits, arms, "
        "learned: the tidy results above).", "", "```bash", *commands, "```", ""])
    path = out / "report.md"
    atomic_write_text(path, text)
    return path


__all__ = ["FIGURE", "read_dose_source", "sources_markdown", "write_dose_report"]
