"""The tidy tables' columns: one definition for the analysis that writes them and the statistics,
plots and notebooks that read them (torch-free, so notebooks import it cheaply)."""

HEAD_METRICS = ("prev_token", "entropy", "distance", "bos", "induction", "duplicate_token",
                "ablation_zero", "ablation_mean")
RUN_COLUMNS = ["run", "preset", "arm", "seed", "step", "tokens"]
TABLE_COLUMNS: dict[str, list[str]] = {
    "heads": RUN_COLUMNS + ["layer", "head", "metric", "value"],
    "smear": RUN_COLUMNS + ["lambda", "gate_mean", "coef_mean", "coef_std", "coef_p05", "coef_p50", "coef_p95"],
    # the per-token tables carry no `tokens` column (last checkpoint of each smear run only)
    "smear_vocab": RUN_COLUMNS[:5] + ["token_id", "text", "gate", "coefficient"],
    "smear_tokens": RUN_COLUMNS[:5] + ["sample", "position", "token_id", "text", "prev_token_id", "prev_text",
                                       "gate", "coefficient"],
    # path attribution of the previous token (analysis/mechanism/paths.py), last checkpoint of each run only
    "paths": RUN_COLUMNS[:5] + ["offset", "path", "layer", "head", "source", "part", "gate", "metric", "value"],
    "offsets": RUN_COLUMNS[:5] + ["layer", "head", "key", "gate", "metric", "value"],
}
# Mechanism tables (analysis.mechanism.readout, analysis.mechanism.knockout, analysis.mechanism.composition), final checkpoints only.
# Kept apart from TABLE_COLUMNS, which the statistics read as the core set.
MECHANISM_COLUMNS: dict[str, list[str]] = {
    # layer = n_layers is the final residual; target prev/curr/prev2; metric accuracy/baseline/above_baseline
    "readout": RUN_COLUMNS[:5] + ["layer", "target", "metric", "value"],
    # per (k, head_ablation, smear_ablation) the 2×2 of losses and the interaction (analysis.mechanism.knockout.METRICS)
    "knockouts": RUN_COLUMNS[:5] + ["k", "heads", "head_ablation", "smear_ablation", "metric", "value"],
    # per induction head: induction, n_prev_heads, attn_clean, attn_key_{smear,prev_heads,all}; layer = head = −1:
    # n_induction_heads
    "composition": RUN_COLUMNS[:5] + ["layer", "head", "metric", "value"],
    # canon arms only (analysis.measures.canon): per offset k, weight_rms / weight_mean of canon_w[k] and input_ratio
    "canon": RUN_COLUMNS[:5] + ["offset", "metric", "value"],
}
# Written per run folder during training (analysis.measures.lambda_grad), read beside the record tables: λ, dL/dλ and
# its parts at every step of an arm with a coefficient (by total/doc/gate/sign; n −1 where not decomposed).
RECORD_COLUMNS: dict[str, list[str]] = {
    "lambda": RUN_COLUMNS + ["lambda", "grad", "pressure", "coef_mean", "by", "part", "n", "value"],
    # the recorder's per-run induction measures (analysis.measures.recorder): icl_score, loss_early, loss_late,
    # copy_loss_first, copy_loss_second
    "context": RUN_COLUMNS + ["metric", "value"],
}
