"""The figures the report and the notebooks draw from the tables, by name, with their titles and captions;
drawing them all; and the notebook cell bodies that load the tables and show one figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from matplotlib.figure import Figure

from analysis.stats import dose_response as dr
from analysis.stats import speedrun as sp
from analysis import stats
from analysis.writeup.plots.dose import dose_response as dose_response_figure
from analysis.writeup.plots.freed import ablation_by_head, freed_head_profiles
from analysis.writeup.plots.gate import coefficient_over_training, lambda_gradient
from analysis.writeup.plots.induction import (formation_over_training, freed_head_offsets, key_share_bars,
                                              knockout_copy_losses)
from analysis.writeup.plots.mechanism import edge_shares, knockout_effects, offset_attention, path_shares, readout_by_layer
from analysis.writeup.plots.heads import prev_heads_vs_threshold, prev_mass_over_training, prev_token_heatmaps
from analysis.writeup.plots.smear import coefficient_by_class, coefficient_histogram, smear_lambda, vocab_extremes
from analysis.writeup.plots.speedrun import attn0_grid, early_coefficient, prev_mass_layers
from analysis.writeup.plots.summary import summary_figure
from analysis.stats.headline import smear_shares
from analysis.writeup.plots.style import arms_in, display_markdown, save, seed_text, show_figure
from analysis.stats import DEFAULT_THRESHOLD, Tables
from trainer.errors import AnalysisError, SmearlensError


def _speedrun(tables: Tables) -> Tables:
    """`tables`, or AnalysisError when they hold no arm of the speedrun study (its figures belong to its section)."""
    if not sp.study_present(tables.arms):
        raise AnalysisError("no arm of the speedrun study (`<arm>-noattn0`, `smear-hold-<c>-<k>`, `dose-<c>-anneal-<k>`)")
    return tables


def _per_seed_losses(tables: Tables, threshold: float):
    """The per-seed claims with each run's final validation loss, as `stats.summarize` builds them."""
    per_seed = stats.per_seed_claims(tables.heads, threshold)
    return per_seed.merge(tables.losses, on="run", how="left") if tables.losses is not None else per_seed


@dataclass(frozen=True)
class FigureSpec:
    title: str
    caption: str
    draw: Callable[[Tables, float], Figure]


FIGURES: dict[str, FigureSpec] = {
    "summary": FigureSpec(
        "Summary: previous-token attention against the smear's share",
        "Per arm, the total previous-token mass (left) and the previous-token heads (right) at the final step, "
        "against the share of token i−1's effect on the prediction at i that the arm's smear term carries (0 "
        "without one). Small points: seeds (head counts spread by ±0.08 so none hides another); up to 8 seeds, grey "
        "lines join each seed to its baseline; large: arm means with t 95% CIs.",
        lambda t, th: summary_figure(stats.per_seed_claims(t.heads, th), smear_shares(t.get("paths")), th)),
    "prev_token_heatmaps": FigureSpec(
        "Previous-token score per head",
        "Seed-mean previous-token score of each head at the final step; outlined: previous-token heads; "
        "hatched: layers without attention.",
        lambda t, th: prev_token_heatmaps(t.heads, th)),
    "prev_heads_vs_threshold": FigureSpec(
        "Previous-token heads across thresholds",
        "Previous-token heads per run at thresholds 0.2–0.8 (line: mean over seeds, band: min–max).",
        lambda t, th: prev_heads_vs_threshold(t.heads, threshold=th)),
    "prev_mass_over_training": FigureSpec(
        "Previous-token mass over training",
        "Sum of previous-token scores over all heads, per arm (line: mean over seeds, band: min–max; "
        "dotted: the attention windows grow).",
        lambda t, th: prev_mass_over_training(t.heads, t.get("record_heads"), stats.window_growth_tokens(t.configs))),
    "smear_lambda": FigureSpec(
        "Smear λ over training",
        "The learned smear scale λ per seed, and the effective coefficient on data (mean, 5–95% band).",
        lambda t, th: smear_lambda(t.get("smear"), t.get("record_smear"))),
    "coefficient_histogram": FigureSpec(
        "Smear coefficient on data",
        "Distribution of the effective coefficient λ·σ(w·e) over token positions of held-out text.",
        lambda t, th: coefficient_histogram(t.get("smear_tokens"))),
    "vocab_extremes": FigureSpec(
        "Tokens that smear most and least",
        "Vocabulary tokens with the lowest and highest effective coefficient (mean over seeds).",
        lambda t, th: vocab_extremes(t.get("smear_vocab"))),
    "coefficient_by_class": FigureSpec(
        "Smear coefficient by token class",
        "Effective coefficient by class of the receiving token (word start = leading space).",
        lambda t, th: coefficient_by_class(t.get("smear_vocab"), t.get("smear_tokens"))),
    "freed_head_profiles": FigureSpec(
        "What the freed heads do",
        "At the places of the baseline's previous-token heads: each metric in both arms (bars: seed mean, "
        "dots: seeds, dotted: mean of the other heads).",
        lambda t, th: freed_head_profiles(t.heads, th)),
    "ablation_by_head": FigureSpec(
        "Per-head ablation loss",
        "Loss increase when each head is ablated, both arms; shaded: baseline previous-token heads.",
        lambda t, th: ablation_by_head(t.heads, th)),
    "path_shares": FigureSpec(
        "Where token i−1's effect goes",
        "Fisher-linear share of the change in the prediction at i when token i−1 is resampled that flows through "
        "the smear term alone, through every other route, and their interaction (they add up to 1); every position, "
        "and split by the smear gate at i (bars: seed mean, dots: seeds).",
        lambda t, th: path_shares(t.get("paths"))),
    "edge_shares": FigureSpec(
        "Which heads carry the earlier tokens",
        "Share of token i−1's (top) and i−2's (bottom) effect through each head at query i reading that position "
        "(its key and value patched, nothing else), seed mean; hatched: layers without attention.",
        lambda t, th: edge_shares(t.get("paths"))),
    "offset_attention": FigureSpec(
        "What the query at i reads",
        "Attention of query i on i, i−1, i−2 and the BOS per head (top), and the same weighted by the head's output "
        "gate and the norm of what it writes from there (bottom); bars: seed mean, dots: seeds.",
        lambda t, th: offset_attention(t.get("offsets"))),
    "readout_by_layer": FigureSpec(
        "Where the previous token becomes readable",
        "Held-out accuracy of a linear probe for token i−1 (and the controls i, i−2) at each layer's residual "
        "input, above a baseline that guesses it from token i alone (backward bigram); lines: seed mean, dots: seeds.",
        lambda t, th: readout_by_layer(t.get("readout"))),
    "knockout_effects": FigureSpec(
        "Knock-outs: smear, previous-token heads, both",
        "Loss increase at inference when the smear term is knocked out, when the top-k previous-token heads are "
        "mean-ablated, and their interaction (both − heads − smear + neither; above 0: the routes stand in for "
        "each other); bars: seed mean, dots: seeds.",
        lambda t, th: knockout_effects(t.get("knockouts"))),
    "dose_response": FigureSpec(
        "Dose-response",
        "Each measure against the fixed dose c (left, log axis; the baseline as its mean and 95% CI band, learned "
        "arms at their mean coefficient on data) and against the measured share of token i−1's effect through the "
        "smear term (right; the learned arm is gated per token, the doses are not). Small markers: seeds; large: "
        "arm means with t 95% CI; line and band: fit with a random intercept per seed and its pointwise 95% CI "
        "(validation loss: quadratic); red: the fitted dose of lowest loss with its CI, and the dose of lowest mean "
        "paired loss. Drawn when the tables hold at least two fixed doses.",
        lambda t, th: dose_response_figure(dr.dose_response(t, th))),
    "coefficient_over_training": FigureSpec(
        "λ and the coefficient over training, every arm",
        "λ (left) and the mean coefficient λ·gate on data (right) of every arm with a smear term, recorded during "
        "training (dots: checkpoints); line: mean over seeds, band: min–max; dashed: the fixed doses.",
        lambda t, th: coefficient_over_training(t.get("smear"), t.get("record_smear"))),
    "lambda_gradient": FigureSpec(
        "What drives λ early in training",
        "The pressure on λ, dL/dλ = Σ_i gate_i·⟨∂L/∂term_i, e[i−1]⟩ (> 0: gradient descent lowers λ), over the first "
        "steps (running mean), λ over the same steps, and the mean pressure split by where token i sits in its "
        "document, by the gate value at i and by sign; bands and dots: min–max over seeds.",
        lambda t, th: lambda_gradient(t.get("record_lambda"))),
    "speedrun_attn0": FigureSpec(
        "Layer 0's attention with and without a smear",
        "Final validation loss of each arm run with and without layer 0's attention (record #131), one panel per "
        "arm: thin lines join a seed's two runs, points are means with t 95% CIs, one loss scale for all panels. "
        "Last panel: the cost of the removal per seed; P1 and P2 ask whether the smear's and the dose's costs lie "
        "below the baseline's (dashed).",
        lambda t, th: attn0_grid(_per_seed_losses(_speedrun(t), th))),
    "speedrun_prev_by_layer": FigureSpec(
        "Previous-token mass per layer",
        "The sum of each layer's heads' previous-token scores at the final step, per arm (mean over seeds, t 95% "
        "CI; arms slightly offset); dashed, in its base arm's colour: the arm without layer 0's attention, which "
        "has no point at layer 0.",
        lambda t, th: prev_mass_layers(sp.prev_mass_by_layer(_speedrun(t).heads))),
    "speedrun_early_coefficient": FigureSpec(
        "The early smear's coefficient over training",
        "Mean coefficient λ·gate on the training batch of each early-smear arm (held then learned, or annealed) "
        "against the learned smear's and the fixed dose 0.8's (dashed); dotted: each early arm's release step. "
        "Right, where recorded: dL/dλ, running mean (> 0: gradient descent lowers λ). Line: mean over seeds, band: "
        "min–max.",
        lambda t, th: early_coefficient(sp.coefficient_curves(_speedrun(t).get("record_lambda"),
                                                              t.get("record_smear")))),
    "induction_formation": FigureSpec(
        "When the induction head forms",
        "Per arm, the highest induction score of any head (the recorder's `induction_heldout`: attention from a "
        "second-copy token to the token after its first occurrence, mean over the held-out lengths 11, 19, 27 and "
        "40) at every recorded step; thin lines: seeds, thick: their mean; circles: each run's formation step (the "
        "first record ≥ 0.2); crosses: runs that never formed one, censored one record past their last.",
        lambda t, th: formation_over_training(t.get("record_heads"))),
    "induction_key_shares": FigureSpec(
        "Where the induction head's key gets token j−1",
        "For the strongest induction head of each run (final checkpoint), the drop in its attention logit from "
        "query i to key j when token j−1 is resampled, split by route: the previous-token heads, the arm's own "
        "mixing (smear term, key shift or key smear) and everything else; the shares add up to 1. Bars: seed "
        "means, stacked; dots: each seed's share through each route, unstacked. Runs without an induction head "
        "have no shares.",
        lambda t, th: key_share_bars(t.get("key_shares"))),
    "induction_knockouts": FigureSpec(
        "Knock-outs: does the copy still need the previous-token heads?",
        "Loss on the second copy of repeated random sequences (held-out lengths) at the final checkpoint: clean, "
        "with every previous-token head before the best induction head mean-ablated, with the arm's mixing "
        "removed, and both. Bars: seed means; dots: seeds; dotted: the first copy's loss, which no head can "
        "predict. Claim (a) is the second bar minus the first.",
        lambda t, th: knockout_copy_losses(t.get("induction_knockouts"))),
    "induction_freed_heads": FigureSpec(
        "The baseline's previous-token places in each arm",
        "At the places (layer, head) of the baseline's previous-token heads of each seed, in every arm of that "
        "seed: where a query on text looks (i−1, itself, i−2, the BOS, further; stacked seed means, dots: each "
        "seed's i−1) and the place's induction and duplicate-token scores on repeated random sequences (bars: seed "
        "means, dots: seeds).",
        lambda t, th: freed_head_offsets(t.heads, t.get("head_roles"), th)),
}
NOTEBOOK_FIGURES = {
    "01_previous_token_heads": ["prev_token_heatmaps", "prev_heads_vs_threshold", "prev_mass_over_training"],
    "02_smear_gate": ["smear_lambda", "coefficient_histogram", "vocab_extremes", "coefficient_by_class"],
    "03_freed_heads": ["freed_head_profiles", "ablation_by_head"],
    "05_mechanism": ["path_shares", "edge_shares", "offset_attention", "readout_by_layer", "knockout_effects"],
    "06_induction": ["induction_formation", "induction_key_shares", "induction_knockouts", "induction_freed_heads"],
}
SUMMARY_FIGURES = ["summary"]  # the report's first screen, not its Figures section
MECHANISM_FIGURES = NOTEBOOK_FIGURES["05_mechanism"]  # the report's mechanism section, not its Figures section
DOSE_FIGURES = ["dose_response"]  # the report's dose-response section (only with ≥ 2 fixed doses)
GATE_FIGURES = ["coefficient_over_training", "lambda_gradient"]  # the report's "why the gate stays low" section
SPEEDRUN_FIGURES = ["speedrun_attn0", "speedrun_prev_by_layer", "speedrun_early_coefficient"]  # "The speedrun's questions"
INDUCTION_FIGURES = NOTEBOOK_FIGURES["06_induction"]  # the report's induction section (only with its tables)


def draw_figure(name: str, tables: Tables, threshold: float = DEFAULT_THRESHOLD) -> Figure:
    if name not in FIGURES:
        raise AnalysisError(f"unknown figure {name!r}; choose one of: {', '.join(FIGURES)}")
    return FIGURES[name].draw(tables, threshold)


def draw_all(tables: Tables, folder: str | Path, threshold: float = DEFAULT_THRESHOLD,
             names: Sequence[str] | None = None, formats: Sequence[str] = ("png", "svg")) -> dict[str, Path | str]:
    """Draw and save each figure; value: the first file written (PNG by default), or why the figure is absent."""
    out: dict[str, Path | str] = {}
    for name in names or FIGURES:
        try:
            out[name] = save(draw_figure(name, tables, threshold), folder, name, formats)[0]
        except SmearlensError as e:
            out[name] = str(e)
    return out


# ---------------------------------------------------------------------------------------------
# Notebook cell bodies (01–03, 05)


def notebook_tables(tables_dir: str | Path, preset: str | None = None,
                    runs_dir: str | Path | None = None) -> Tables | None:
    """Load and check the tables for a notebook; show what limits the analysis, or why there is none."""
    try:
        tables = stats.load_tables(tables_dir, runs_dir=runs_dir, preset=preset)
    except SmearlensError as e:
        display_markdown(f"**No analysis possible:** {e}.")
        return None
    runs = tables.heads.drop_duplicates("run")
    lines = [f"Preset **{tables.preset}**, tables from `{tables_dir}`: "
             + "; ".join(f"{arm}: {seed_text(len(tables.seeds(arm)))}" for arm in arms_in(tables.heads))
             + f" ({len(runs)} run{'s' if len(runs) != 1 else ''})."]
    lines += [f"- **Note:** {n}" for n in tables.notes]
    display_markdown("\n".join(lines))
    return tables


def show(name: str, tables: Tables | None, figures_dir: str | Path,
         threshold: float = DEFAULT_THRESHOLD) -> Path | None:
    """Notebook cell body: draw a figure, save it into figures_dir and display it, or say why not."""
    title = FIGURES[name].title if name in FIGURES else name
    if tables is None:
        display_markdown(f"*{title}: not drawn (no tables, see above).*")
        return None
    return show_figure(title, lambda: draw_figure(name, tables, threshold), figures_dir, name)
