"""The write-up: reports, figures and pages made from the tables and the statistics.

`report` the study report (report.md) with `report_arms` (the many-arms sections) and `report_mechanism`;
`dose_report` and `sweep_report` the reports that pool studies; `markdown` the formatting helpers;
`notebook_runner` runs the notebooks headless; `views` the interactive inspect page; `plots/` every figure,
by family. The top of the analysis layers: it may import everything below it, and nothing in `analysis`
imports it.
"""

from pathlib import Path

# here, not in `report`, so the command line's help can name it without importing matplotlib
DEFAULT_FIGURES = Path("figures")
