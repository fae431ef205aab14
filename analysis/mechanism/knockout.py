"""Knock-outs at inference: the smear term, the previous-token heads, and their interaction.

The smear adds c_i · e[i−1] to token i's embedding (c_i = λ · σ(w · e[i][:12])). Two knock-outs of
it, by hooks only (the model is not edited):

- "zero": the gate is set to 0, which is exactly λ = 0 (no smear at all);
- "mean": the smear term becomes c_i · ē, where ē is the mean raw embedding over the data's tokens:
  each position keeps its own coefficient but no longer learns which token came before it.

Heads are knocked out by `probes.ablation_hooks` (zero or mean of their gated output). For the top-k
heads by previous-token score (each model's own), `interaction_2x2` measures the loss with neither,
the heads only, the smear only and both knocked out; interaction = both − heads − smear + neither
(0 when the two routes add up independently; positive when they are redundant, each standing in for
the other, so that knocking out both costs more than the sum of knocking out each). Every arm whose
term is λ · gate · h[i−1] (smear, its variants, the fixed doses, whose gate hook holds ones) is
knocked out the same way; on a model without such a term (the baseline) the smear
knock-outs change nothing (their hooks never run).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from torch import Tensor

from analysis.measures import probes
from analysis.measures.probes import _as_batch, _clean_loss_and_head_means, _loss, evaluating
from trainer.errors import AnalysisError
from trainer.model import GPT

SMEAR_KNOCKOUTS = ("zero", "mean")
HEAD_ABLATIONS = ("zero", "mean")
TOP_K = (1, 2)
COLUMNS = ["k", "heads", "head_ablation", "smear_ablation", "metric", "value"]
# loss_* are mean next-token losses; head, smear, both are increases over loss_neither
METRICS = ("loss_neither", "loss_head", "loss_smear", "loss_both", "head", "smear", "both", "interaction")


def mean_embedding(model: GPT, batches: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """(d_model,) mean raw token embedding over every input position of `batches` (frequency-weighted)."""
    total, count = 0, 0
    with torch.no_grad():
        for x, _ in batches:
            total = total + model.embed.weight[_as_batch(model, x)].double().sum(dim=(0, 1))
            count += x.numel()
    return (total / count).to(model.embed.weight.dtype)


def smear_knockout_hooks(model: GPT, kind: str, mean: Tensor | None = None) -> list:
    """Forward hooks that knock out the smear term: "zero" (λ = 0) or "mean" (c_i · `mean`)."""
    if kind == "zero":
        return [("hook_smear_gate", lambda gate, hook: torch.zeros_like(gate))]
    if kind != "mean":
        raise AnalysisError(f"unknown smear knock-out {kind!r}; choose from {', '.join(SMEAR_KNOCKOUTS)}")
    if mean is None:
        raise AnalysisError("the mean smear knock-out needs the mean embedding (mean_embedding)")
    seen: dict[str, Tensor] = {}

    def keep(gate: Tensor, hook) -> None:
        seen["gate"] = gate

    def replace(term: Tensor, hook) -> Tensor:
        # hook_smear_out holds the term added (0 at position 0), not the smeared embedding
        coef = model.smear_lambda * seen.pop("gate")  # (B, T−1, 1)
        return torch.cat([term[:, :1], coef * mean.to(term.dtype)], dim=1)

    return [("hook_smear_gate", keep), ("hook_smear_out", replace)]


def top_heads(scores: Tensor, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) with the highest scores (NaN rows, layers without attention, never chosen);
    ties: the earlier layer and head first."""
    flat = torch.nan_to_num(scores.double().flatten(), nan=-torch.inf)
    if k > int(torch.isfinite(flat).sum()):
        raise AnalysisError(f"top {k} heads asked of a model with {int(torch.isfinite(flat).sum())} attention heads")
    order = torch.sort(-flat, stable=True).indices[:k]
    return [(int(i) // scores.size(1), int(i) % scores.size(1)) for i in order]


def head_label(heads: Sequence[tuple[int, int]]) -> str:
    return "+".join(f"L{l}H{h}" for l, h in heads)


def interaction_2x2(neither: float, head: float, smear: float, both: float) -> dict[str, float]:
    """The four losses and their increases over `neither`, with the interaction both − head − smear + neither."""
    return dict(loss_neither=neither, loss_head=head, loss_smear=smear, loss_both=both, head=head - neither,
                smear=smear - neither, both=both - neither, interaction=both - head - smear + neither)


def knockout_table(model: GPT, batches: Sequence[tuple[Tensor, Tensor]], prev_scores: Tensor,
                   ks: Sequence[int] = TOP_K, head_ablations: Sequence[str] = HEAD_ABLATIONS,
                   smear_knockouts: Sequence[str] = SMEAR_KNOCKOUTS) -> pd.DataFrame:
    """Tidy rows (k, heads, head_ablation, smear_ablation, metric, value): for each k, head ablation
    and smear knock-out, the 2×2 of losses on `batches` (inputs, targets) and the interaction.
    `prev_scores` (n_layers, n_heads) picks the heads (top k)."""
    if not batches:
        raise AnalysisError("knock-outs need at least one batch of data")
    batches = [(_as_batch(model, x), _as_batch(model, y)) for x, y in batches]
    has_smear = model.arm_spec.coefficient  # a dose has no gate weights but its term runs through the hooks
    rows = []
    with evaluating(model):
        neither, means = _clean_loss_and_head_means(model, batches)
        mean_e = mean_embedding(model, batches)
        smear_hooks = {kind: smear_knockout_hooks(model, kind, mean_e) for kind in smear_knockouts}
        # without a smear term its hooks never run: the knocked-out losses are the plain ones
        smear_loss = {kind: _loss(model, batches, hooks) if has_smear else neither for kind, hooks in smear_hooks.items()}
        for k in ks:
            heads = top_heads(prev_scores, k)
            for ablation in head_ablations:
                head_hooks = probes.ablation_hooks(model, heads, ablation, means)
                head_loss = _loss(model, batches, head_hooks)
                for kind, hooks in smear_hooks.items():
                    both = _loss(model, batches, head_hooks + hooks) if has_smear else head_loss
                    cell = interaction_2x2(neither, head_loss, smear_loss[kind], both)
                    rows += [dict(k=k, heads=head_label(heads), head_ablation=ablation, smear_ablation=kind,
                                  metric=m, value=cell[m]) for m in METRICS]
    return pd.DataFrame(rows, columns=COLUMNS)


__all__ = ["SMEAR_KNOCKOUTS", "HEAD_ABLATIONS", "TOP_K", "METRICS", "mean_embedding", "smear_knockout_hooks",
           "top_heads", "head_label", "interaction_2x2", "knockout_table"]
