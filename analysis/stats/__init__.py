"""Statistics over the analysis tables: pure functions, DataFrames in, DataFrames or dicts out.

`claims` holds the primary claims and their verdicts (paired by seed, Holm, TOST, power) and is re-exported
here, so `from analysis import stats` is the one way in to them; `inference` the array statistics they rest
on (paired t, sign-flip, Welch, bootstrap); `mechanism_stats` the paired statistics of the mechanism tables;
`dose_response` the fits across doses and the studies they pool; `gate_arms` why the learned gate stays low;
`sizes` trends across model widths; `steps_saved` an arm's loss difference as training steps of the baseline
at matched loss (the speedrun's currency). May import `analysis.tables`, `analysis.schema` and the trainer, never
the measures, the mechanism or the write-up: statistics read tables, not models.
"""

from analysis.stats.claims import *  # noqa: F401,F403 (the claims are the package's public face)
from analysis.stats.claims import __all__  # noqa: F401
