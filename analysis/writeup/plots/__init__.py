"""Figures for "does the smear free up heads?": each function takes tables and returns a Figure.

Figures are built with `matplotlib.figure.Figure` (no pyplot): no global state, no GUI backend,
safe in notebooks, tests and the report alike. Arms always have the same colours and names;
scores on 0–1 share one colour scale. Missing input raises AnalysisError saying what is missing;
`show` (for notebooks) and `draw_all` (for the report) turn that into a message instead of a figure.

By family: `heads` (previous-token heads), `smear` (the smear gate), `freed` (freed heads and
ablations), `gate` (why the learned gate stays low: λ of every arm, what drives it), `inspection` (one
text, precomputed patterns), `mechanism` (where the previous token travels: path shares, edges, offsets,
read-out, knock-outs), `induction` (the induction study: formation, key shares, copy knock-outs, what the
baseline's previous-token heads became), `dose` (the fixed doses' dose-response), `steps` (steps saved at matched
loss), `speedrun` (the speedrun study: layer 0's attention with and without a smear, mass per layer, the early
smear), `summary`
(the report's first figure); `style` holds the shared look and saving,
`registry` the named figures the report and notebooks draw. Everything public is re-exported here,
so `from analysis import plots; plots.show(...)` is the one way in.
"""

from analysis.writeup.plots.dose import dose_response
from analysis.writeup.plots.freed import MAX_BAR_HEADS, ablation_by_head, freed_head_profiles
from analysis.writeup.plots.heads import prev_heads_vs_threshold, prev_mass_over_training, prev_token_heatmaps
from analysis.writeup.plots.inspection import (_best_head, attention_grid, attention_head, coefficients_over_text,
                                       inspect_arrays, notebook_inspect, pick_runs, show_inspect)
from analysis.writeup.plots.gate import coefficient_over_training, lambda_gradient
from analysis.writeup.plots.induction import (formation_over_training, freed_head_offsets, key_share_bars,
                                              knockout_copy_losses)
from analysis.writeup.plots.mechanism import edge_shares, knockout_effects, offset_attention, path_shares, readout_by_layer
from analysis.writeup.plots.registry import (DOSE_FIGURES, FIGURES, GATE_FIGURES, INDUCTION_FIGURES, MECHANISM_FIGURES,
                                     NOTEBOOK_FIGURES, SPEEDRUN_FIGURES, SUMMARY_FIGURES, FigureSpec, draw_all, draw_figure,
                                     notebook_tables, show)
from analysis.writeup.plots.sizes import size_sweep
from analysis.writeup.plots.speedrun import attn0_grid, early_coefficient, prev_mass_layers
from analysis.writeup.plots.steps import steps_saved_figure
from analysis.writeup.plots.smear import coefficient_by_class, coefficient_histogram, smear_lambda, vocab_extremes
from analysis.writeup.plots.summary import summary_figure
from analysis.writeup.plots.style import (ABSENT_COLOR, ARM_COLORS, ARM_LABELS, DPI, METRIC_LABELS, PROFILE_METRICS,
                                  SCORE_CMAP, display_markdown, display_token, save)

__all__ = [
    "ABSENT_COLOR", "ARM_COLORS", "ARM_LABELS", "DPI", "FIGURES", "MAX_BAR_HEADS", "METRIC_LABELS", "NOTEBOOK_FIGURES",
    "PROFILE_METRICS", "SCORE_CMAP", "FigureSpec", "ablation_by_head", "attention_grid", "attention_head",
    "coefficient_by_class", "coefficient_histogram", "coefficients_over_text", "display_markdown", "display_token",
    "DOSE_FIGURES", "dose_response", "INDUCTION_FIGURES", "formation_over_training", "key_share_bars",
    "knockout_copy_losses", "freed_head_offsets",
    "MECHANISM_FIGURES", "GATE_FIGURES", "coefficient_over_training", "lambda_gradient", "draw_all",
    "draw_figure", "edge_shares", "freed_head_profiles", "knockout_effects",
    "offset_attention", "path_shares", "readout_by_layer", "inspect_arrays", "notebook_inspect", "notebook_tables",
    "pick_runs", "prev_heads_vs_threshold", "prev_mass_over_training", "prev_token_heatmaps", "save", "show",
    "show_inspect", "size_sweep", "SPEEDRUN_FIGURES", "attn0_grid", "early_coefficient", "prev_mass_layers",
    "smear_lambda", "steps_saved_figure", "SUMMARY_FIGURES", "summary_figure", "vocab_extremes",
]
