"""Build the notebooks from this file, so their cells stay in sync with `analysis.writeup.plots`.

    python notebooks/build_notebooks.py          # rewrite notebooks/*.ipynb (unexecuted)

Each notebook is thin: a parameters cell (papermill), a cell that loads and checks the tables, then
one call into analysis.writeup.plots / analysis.writeup.report per figure, with the narration in markdown.
Run one headless:

    papermill notebooks/01_previous_token_heads.ipynb out.ipynb --cwd notebooks \\
        -p tables_dir ../checkpoints/analysis -p figures_dir ../figures
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

TABLE_PARAMS = '''tables_dir = "../checkpoints/analysis"  # heads.parquet and smear*.parquet written by the analysis
figures_dir = "../figures"  # figures are saved here as PNG and SVG
runs_dir = None  # run folders holding record_*.parquet and run.json (None: the parent of tables_dir)
preset = None  # keep only this preset's runs when the tables hold several
threshold = 0.4  # a previous-token head scores at least this'''

LOAD = '''from analysis.writeup import plots, report

tables = plots.notebook_tables(tables_dir, preset=preset, runs_dir=runs_dir)'''


def params(source: str):
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    return cell


def show(name: str):
    return new_code_cell(f'plots.show("{name}", tables, figures_dir, threshold);')  # ";": no return value shown


NOTEBOOKS = {
    "01_previous_token_heads": [
        new_markdown_cell(
            "# Previous-token heads in both arms\n\n"
            "The smear gate adds a fraction of the previous token's embedding to each token before the first "
            "block. If that does the job some attention heads otherwise learn — attending to the token just "
            "before — the smear arm should grow **fewer previous-token heads** and less previous-token "
            "attention overall. This notebook shows where those heads are, how many there are at any "
            "threshold, and when they form, then tests the difference across seeds.\n\n"
            "Parameters (papermill `-p`): `tables_dir`, `figures_dir`, `runs_dir`, `preset`, `threshold`."),
        params(TABLE_PARAMS),
        new_code_cell(LOAD),
        new_markdown_cell(
            "## Where the previous-token heads are\n\n"
            "Each cell is one head's previous-token score (its mean attention from a token to the one just "
            "before it) at the final checkpoint, averaged over seeds. Both arms share the 0–1 colour scale. "
            "Outlined heads reach the threshold; hatched layers have no attention. Where the baseline is "
            "bright and the smear arm is dark, the smear has taken over that head's job."),
        show("prev_token_heatmaps"),
        new_markdown_cell(
            "## How many, at any threshold\n\n"
            "The default cut of 0.4 is a convention. A real difference between the arms should hold across "
            "thresholds, not at one value only. Lines are the mean over seeds, bands span the seeds."),
        show("prev_heads_vs_threshold"),
        new_markdown_cell(
            "## When they form\n\n"
            "Total previous-token mass (the sum of the scores over all heads) at each checkpoint, and at every "
            "recorded step when the training logged it. Tokens seen are on the x axis."),
        show("prev_mass_over_training"),
        new_markdown_cell(
            "## Statistics\n\n"
            "Per-seed values at the final step; each arm − baseline paired by seed (paired t, exact sign-flip "
            "test, t-based 95% CI). The primary claims, fixed in advance with a smallest effect of interest "
            "each, are Holm-corrected and, where not significant, tested for equivalence (TOST) with the power "
            "at that effect. Heads count as freed up only when both the number of previous-token heads "
            "and the previous-token mass are significantly lower in the smear arm. Where a test cannot be "
            "made (an arm missing, fewer than 2 seeds per arm) the table says why."),
        new_code_cell('report.notebook_statistics(tables, threshold, claims=["n_prev_heads", "prev_mass", "best_prev"], '
                      'sweep=True);'),
    ],
    "02_smear_gate": [
        new_markdown_cell(
            "# The smear gate\n\n"
            "Each token receives `λ · σ(w · e[:12])` of the previous token's embedding, where `e` is its own "
            "embedding: the coefficient depends on the token id alone. This notebook follows the learned "
            "scale λ over training, shows the coefficient's distribution on text, which vocabulary tokens "
            "smear most and least, and how it differs between word starts, continuations, punctuation and "
            "digits.\n\nParameters (papermill `-p`): `tables_dir`, `figures_dir`, `runs_dir`, `preset`."),
        params(TABLE_PARAMS),
        new_code_cell(LOAD),
        new_markdown_cell(
            "## λ over training\n\n"
            "λ starts at 0 (no smear) and is learned. Left: λ per seed; right: the effective coefficient on "
            "data (mean per seed, band from the 5th to the 95th percentile over tokens)."),
        show("smear_lambda"),
        new_markdown_cell(
            "## The coefficient on text\n\n"
            "Distribution of the coefficient over the token positions of held-out text at the last "
            "checkpoint: the filled histogram pools the seeds, the outlines are single seeds."),
        show("coefficient_histogram"),
        new_markdown_cell(
            "## Which tokens smear\n\n"
            "The vocabulary's lowest and highest coefficients (mean over seeds). `␣` marks a leading space "
            "(a word start in GPT-2-style BPE), `⏎` a newline."),
        show("vocab_extremes"),
        new_markdown_cell(
            "## By token class\n\n"
            "A continuation piece (`ing`) is part of the word before it, so blending in the previous token "
            "is most useful there; a word start needs less of it. Left: each vocabulary token once; right: "
            "tokens as they occur in text."),
        show("coefficient_by_class"),
        new_markdown_cell("## Numbers at the last checkpoint"),
        new_code_cell("plots.display_markdown(report.smear_markdown(tables))"),
    ],
    "03_freed_heads": [
        new_markdown_cell(
            "# What the freed heads do\n\n"
            "Take the places (layer, head) of the baseline's previous-token heads. In the smear arm, trained "
            "from the same initial weights on the same data, what do the heads at those places do instead: "
            "induction, duplicate-token attention, broad or narrow attention (entropy, distance), attention "
            "to the first token? And how much does the loss rise when each head is ablated?\n\n"
            "Parameters (papermill `-p`): `tables_dir`, `figures_dir`, `runs_dir`, `preset`, `threshold`."),
        params(TABLE_PARAMS),
        new_code_cell(LOAD),
        new_markdown_cell(
            "## Profiles at the baseline's previous-token places\n\n"
            "Bars: mean over seeds; dots: single seeds; dotted lines: the mean of all other heads in each "
            "arm, for reference. Under each place: in how many baseline seeds it is a previous-token head."),
        show("freed_head_profiles"),
        new_markdown_cell(
            "## Ablation: how much each head matters\n\n"
            "The loss increase when one head's output is replaced (mean-ablated: by its mean output; "
            "zero-ablated: by zero). Shaded: the baseline's previous-token places. A freed head that matters "
            "less in the smear arm has handed its job to the smear."),
        show("ablation_by_head"),
        new_markdown_cell(
            "## Statistics\n\n"
            "Per seed, the claims are averaged over the places that are previous-token heads in the baseline "
            "run of the same seed."),
        new_code_cell('report.notebook_statistics(tables, threshold, claims=["ablation_mean_at_prev", '
                      '"ablation_zero_at_prev", "induction_at_prev", "n_prev_heads"]);'),
    ],
    "05_mechanism": [
        new_markdown_cell(
            "# Where the previous token travels\n\n"
            "If the smear gate frees the heads that attend to the previous token, the previous token's identity "
            "should reach the prediction through the smear term instead of through those heads. At each run's "
            "final checkpoint this notebook traces it: token i−1 is resampled and the change of the prediction at "
            "i is split into the smear path, the rest of the model and their interaction (and, per head, the key "
            "and value read at i−1); it shows where each head's query at i looks, where a linear probe can read "
            "token i−1, and what knocking the smear term and the previous-token heads out does to the loss. Every "
            "number here is exploratory.\n\n"
            "Parameters (papermill `-p`): `tables_dir`, `figures_dir`, `runs_dir`, `preset`, `threshold`."),
        params(TABLE_PARAMS),
        new_code_cell(LOAD),
        new_markdown_cell(
            "## Path shares: smear, rest, leftover\n\n"
            "The Fisher-linear share of token i−1's effect on the prediction at i that goes through the smear "
            "term alone, through everything else, and their interaction; the three add up to 1. The middle and "
            "right panels split the positions by the smear gate at i (open: coefficient above λ/2). A gate that "
            "routes the previous token where it matters puts the smear share high where it is open and near 0 "
            "where it is closed; a fixed dose has no gate, so all its positions count as open."),
        show("path_shares"),
        new_markdown_cell(
            "## Which heads carry token i−1 (and i−2)\n\n"
            "The share through each head at query i reading the earlier position (its key and value there "
            "patched, nothing else). A freed head would carry less of token i−1 in the smear arm than the "
            "baseline's previous-token heads do."),
        show("edge_shares"),
        new_markdown_cell(
            "## What the query at i reads\n\n"
            "Attention of query i on itself, i−1, i−2 and the BOS per head (top), and the same weighted by the "
            "head's output gate and how much it writes from there (bottom). With the smear, position i already "
            "holds part of token i−1, so attending to i can stand in for attending to i−1."),
        show("offset_attention"),
        new_markdown_cell(
            "## Where token i−1 becomes readable\n\n"
            "Held-out accuracy of a linear probe for token i−1 at each layer's residual input, above what "
            "token i alone predicts (backward bigram). The controls — token i itself and token i−2 — show what "
            "a probe reads without any mixing."),
        show("readout_by_layer"),
        new_markdown_cell(
            "## Knock-outs\n\n"
            "Loss increase at inference when the smear term is knocked out (zero: λ = 0; mean: the previous "
            "token's embedding replaced by the mean embedding), when the top-k previous-token heads are "
            "mean-ablated, and the interaction of the two (both − heads − smear + neither): above 0 the two "
            "routes stand in for each other, so knocking out both costs more than the sum."),
        show("knockout_effects"),
        new_markdown_cell(
            "## Numbers with paired tests\n\n"
            "Per arm, each quantity measured within a run (a share, a loss increase) is tested against 0 across "
            "seeds; arms are compared paired by seed (t CI, paired t, exact sign-flip, TOST at the measure's "
            "smallest effect of interest). None of this is corrected for multiple comparisons."),
        new_code_cell("report.notebook_mechanism(tables);"),
    ],
    "06_induction": [
        new_markdown_cell(
            "# Induction: does it still need previous-token heads?\n\n"
            "An induction head copies: at the second occurrence of a token it attends to the token that followed "
            "the first, which needs a key that says \"my previous token was this one\". In the baseline a "
            "previous-token head writes that into the key; the smear, a fixed dose of it, the key shift and the "
            "smeared key each mix token j−1 in directly. The study (`figures/induction/PLAN.md`) trains every arm "
            "at preset `cpu-induction`, where **half of the training tokens are synthetic**: spans R R of random "
            "tokens written twice (`trainer/repeats.py`). Its three primary claims, each arm against the baseline "
            "paired by seed: (a) what ablating the previous-token heads costs the copy, (b) when the induction "
            "head forms, (c) how much of the key's token j−1 comes through the arm's own mixing.\n\n"
            "Parameters (papermill `-p`): `tables_dir`, `figures_dir`, `runs_dir`, `preset`, `threshold` (for the "
            "baseline's previous-token heads). Tables without the induction study's give one line and nothing else."),
        params(TABLE_PARAMS),
        new_code_cell('from analysis.writeup import report_induction as induction\n\n'
                      'tables = induction.notebook_tables(tables_dir, preset=preset, runs_dir=runs_dir)  '
                      '# None without induction tables'),
        new_markdown_cell(
            "## The answer per arm, and the primary claims\n\n"
            "One sentence per arm from claim (a)'s verdict, with (c) and (b) beside it; then the twelve claims (3 "
            "measures × 4 arms, Holm over all twelve, TOST at each SESOI, power), and the runs that never formed an "
            "induction head (censored in (b) one record past their last step)."),
        new_code_cell("induction.notebook_claims(tables);"),
        new_markdown_cell(
            "## When the induction head forms\n\n"
            "The highest held-out induction score of any head at every record of the training: in the pilot a "
            "phase change, from below 0.1 to above 0.7 within a few hundred steps. Circles mark each run's "
            "formation step, crosses the runs that never formed a head."),
        new_code_cell('induction.show("induction_formation", tables, figures_dir, threshold);'),
        new_markdown_cell(
            "## Where the induction head's key gets token j−1\n\n"
            "Token j−1 is resampled in one route at a time and the drop in the induction head's attention logit "
            "split between the previous-token heads, the arm's own mixing and the rest (they add up to 1)."),
        new_code_cell('induction.show("induction_key_shares", tables, figures_dir, threshold);'),
        new_markdown_cell(
            "## Knock-outs\n\n"
            "The loss on the second copy with the previous-token heads ablated, the arm's mixing removed, or both. "
            "Where the mixing stands in for the heads, ablating the heads alone costs little and both together "
            "cost the whole copy."),
        new_code_cell('induction.show("induction_knockouts", tables, figures_dir, threshold);'),
        new_markdown_cell(
            "## Exploratory measures\n\n"
            "The best head's score, the copy loss, the share through the previous-token heads, the number of "
            "induction heads, the step from which one stays formed and the text validation loss; each arm − "
            "baseline paired by seed, uncorrected."),
        new_code_cell("induction.notebook_exploratory(tables)"),
        new_markdown_cell(
            "## What the baseline's previous-token heads became\n\n"
            "The places (layer, head) of the baseline's previous-token heads of each seed, followed into every arm "
            "of that seed: where a query on text looks, its induction and duplicate-token scores, and what "
            "ablating it costs."),
        new_code_cell("induction.notebook_freed(tables, threshold)"),
        new_code_cell('induction.show("induction_freed_heads", tables, figures_dir, threshold);'),
    ],
    "04_inspect": [
        new_markdown_cell(
            "# Inspect a text\n\n"
            "Type any text into `text` below (or pass it with papermill `-p text \"…\"`). For one seed's final "
            "checkpoints of every arm, this notebook draws one head's attention pattern side by side, every "
            "head's pattern, each token's smear coefficient over the text itself, and an interactive view of "
            "all of it.\n\n"
            "Parameters: `checkpoints` (the folder of run folders), `figures_dir`, `text`, `preset`, `seed` "
            "(None: the lowest seed with every arm), `layer` and `head` (None: the baseline's strongest "
            "previous-token head on this text)."),
        params('''checkpoints = "../checkpoints"  # folder of run folders (each with run.json and step_* checkpoints)
figures_dir = "../figures"
text = "It was the best of times, it was the worst of times. Mr. Holmes said that the best of it was over."
preset = None
seed = None
layer = None
head = None'''),
        new_code_cell('''from analysis.writeup import plots

try:
    from analysis.measures.inspect import inspect_text
except ImportError as e:  # inspect needs the model code; say so instead of failing
    inspect_text = None
    plots.display_markdown(f"**Inspect is unavailable here:** `analysis.measures.inspect` could not be imported ({e}).")'''),
        new_code_cell("results = plots.notebook_inspect(checkpoints, text, inspect_text, preset=preset, seed=seed)"),
        new_markdown_cell(
            "## One head, every arm\n\n"
            "Rows are query tokens, columns the tokens they attend to; a previous-token head draws a bright "
            "line just below the diagonal."),
        new_code_cell('plots.show_inspect(results, figures_dir, "head", layer=layer, head=head);'),
        new_markdown_cell("## Every head\n\nOne small pattern per head; hatched layers have no attention."),
        new_code_cell('plots.show_inspect(results, figures_dir, "grid");'),
        new_markdown_cell(
            "## The smear coefficient over the text\n\n"
            "Each token is shaded by the share of the previous token's embedding it receives."),
        new_code_cell('plots.show_inspect(results, figures_dir, "coefficients");'),
        new_markdown_cell(
            "## Interactive: every head of every arm, and the coefficients\n\n"
            "The page `smearlens inspect --html` writes, drawn by CircuitsVis with its script inlined (it "
            "works offline). Hover a head's thumbnail to enlarge it (click to keep it); hover a cell or a "
            "token to see where it attends, or a coloured token for its smear coefficient."),
        new_code_cell("from analysis.writeup.views import notebook_view\n\nnotebook_view(results, text)"),
    ],
}


def build(folder: Path = HERE) -> list[Path]:
    """Write every notebook into `folder`; return their paths."""
    out = []
    for name, cells in NOTEBOOKS.items():
        for i, cell in enumerate(cells):
            cell.id = f"cell-{i:02d}"  # fixed ids: rebuilding an unchanged notebook changes nothing
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        })
        path = Path(folder) / f"{name}.ipynb"
        nbformat.validate(nb)
        nbformat.write(nb, path)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
