"""Statistics over the analysis tables: pure functions, DataFrames in, DataFrames or dicts out.

`claims` holds the primary claims and their verdicts (paired by seed, Holm, TOST, power) and is re-exported
here, so `from analysis import stats` is the one way in to them; `inference` the array statistics they rest
on (paired t, sign-flip, Welch, bootstrap); `mechanism_stats` the paired statistics of the mechanism tables;
`dose_response` the fits across doses and the studies they pool; `gate_arms` why the learned gate stays low;
`sizes` trends across model widths; `steps_saved` an arm's loss difference as training steps of the baseline
at matched loss (the speedrun's currency); `planned` a later study's own primary claims (any reference arm, Holm
over the declared family, 2 × 2 interactions as removal costs); `induction` the induction study's per-seed values;
`speedrun` the speedrun study's four claims (layer 0's attention, the early smear) and its exploratory numbers.
May import `analysis.tables`, `analysis.schema`, the trainer and the mechanism's pure table functions (never a
model's forward), never the write-up: statistics read tables, not models.
"""

from analysis.stats.claims import *  # noqa: F401,F403 (the claims are the package's public face)
from analysis.stats.claims import __all__  # noqa: F401
