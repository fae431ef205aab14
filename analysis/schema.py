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
# Mechanism tables (analysis.mechanism.readout, .knockout, .composition, .induction_circuit), final checkpoints only.
# Kept apart from TABLE_COLUMNS, which the statistics read as the core set.
MECHANISM_COLUMNS: dict[str, list[str]] = {
    # layer = n_layers is the final residual; target prev/curr/prev2; metric accuracy/baseline/above_baseline
    "readout": RUN_COLUMNS[:5] + ["layer", "target", "metric", "value"],
    # per (k, head_ablation, smear_ablation) the 2×2 of losses and the interaction (analysis.mechanism.knockout.METRICS)
    "knockouts": RUN_COLUMNS[:5] + ["k", "heads", "head_ablation", "smear_ablation", "metric", "value"],
    # per induction head: induction, n_prev_heads, attn_clean, attn_key_{smear,prev_heads,key_shift,key_smear,all}
    # (the routes the arm has); layer = head = −1: n_induction_heads
    "composition": RUN_COLUMNS[:5] + ["layer", "head", "metric", "value"],
    # canon arms only (analysis.measures.canon): per offset k, weight_rms / weight_mean of canon_w[k] and input_ratio
    "canon": RUN_COLUMNS[:5] + ["offset", "metric", "value"],
    # the induction circuit (analysis.mechanism.induction_circuit), held-out repeat lengths 11/19/27/40: per induction
    # head and route (smear, prev_heads, key_shift, key_smear, other, all) the logit_drop, share (adds up to 1) and
    # attention; route clean: logit, attention, induction, n_prev_heads, n_rows; layer = head = −1: n_induction_heads
    "key_shares": RUN_COLUMNS[:5] + ["layer", "head", "route", "metric", "value"],
    # per condition (clean, prev_heads, smear, both): induction, copy_loss_first/second, text_loss, induction_drop,
    # copy_cost, text_cost; clean also best_layer, best_head, best_is_induction, n_prev_heads, has_mixing.
    # Claim (a): condition prev_heads, metric copy_cost
    "induction_knockouts": RUN_COLUMNS[:5] + ["condition", "metric", "value"],
    # every attention head: attn_self/prev/prev2/bos/further on text, induction, duplicate_token, ablation_text,
    # ablation_copy (mean ablation)
    "head_roles": RUN_COLUMNS[:5] + ["layer", "head", "metric", "value"],
}
# Written per run folder during training (analysis.measures.lambda_grad), read beside the record tables: λ, dL/dλ and
# its parts at every step of an arm with a coefficient (by total/doc/gate/sign; n −1 where not decomposed).
RECORD_COLUMNS: dict[str, list[str]] = {
    "lambda": RUN_COLUMNS + ["lambda", "grad", "pressure", "coef_mean", "by", "part", "n", "value"],
    # the recorder's per-run induction measures (analysis.measures.recorder): icl_score, loss_early, loss_late,
    # copy_loss_first, copy_loss_second
    "context": RUN_COLUMNS + ["metric", "value"],
}
