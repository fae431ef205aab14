"""What a canon layer (`canon4`, trainer/arms.py) learned to mix in, offset by offset.

The arm adds Σ_k w_k ⊙ e[i−k] (k = 0..3, same document only) to the raw embedding e[i] before the
norm, with w = `canon_w` zero-initialised. Per offset k this measures the weights themselves (their
RMS and mean over the d_model channels) and what they add on data: the mean over positions of
‖w_k ⊙ e[i−k]‖ / ‖e[i]‖, the size of offset k's part against the token's own embedding (positions
whose token i−k lies in another document, or before the row, count as 0: the arm adds nothing there).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from trainer.errors import AnalysisError
from trainer.model import GPT

METRICS = ("weight_rms", "weight_mean", "input_ratio")


def offset_parts(weights: Tensor, e: Tensor, tokens: Tensor, bos_id: int) -> Tensor:
    """(K, B, T) ‖w_k ⊙ e[i−k]‖ / ‖e[i]‖ at every position: 0 where i−k is before the row or in
    another document. weights (K, d), e (B, T, d) the raw embeddings of tokens (B, T)."""
    docs = (tokens == bos_id).cumsum(dim=1)
    own = e.norm(dim=-1).clamp_min(torch.finfo(e.dtype).tiny)
    out = torch.zeros(weights.size(0), *tokens.shape, dtype=e.dtype)
    for k in range(weights.size(0)):
        if k >= tokens.size(1):
            break
        part = (weights[k] * e[:, : e.size(1) - k]).norm(dim=-1)
        same = docs[:, k:] == docs[:, : docs.size(1) - k]
        out[k, :, k:] = torch.where(same, part, 0) / own[:, k:]
    return out


@torch.no_grad()
def canon_table(model: GPT, tokens: Tensor) -> pd.DataFrame:
    """Rows (offset, metric, value) of a canon model: each offset's weight RMS and mean, and its
    input ratio over the positions of `tokens` (B, T)."""
    if model.arm_spec.mix != "canon":
        raise AnalysisError(f"arm {model.arm_spec.name!r} has no canon layer")
    w = model.canon_w.detach().float().cpu()
    tokens = tokens.cpu()
    e = model.embed.weight.detach().float().cpu()[tokens]
    ratio = offset_parts(w, e, tokens, model.config.bos_id).mean(dim=(1, 2))
    rows = []
    for k in range(w.size(0)):
        values = {"weight_rms": w[k].square().mean().sqrt(), "weight_mean": w[k].mean(), "input_ratio": ratio[k]}
        rows += [dict(offset=k, metric=m, value=float(values[m])) for m in METRICS]
    return pd.DataFrame(rows)


__all__ = ["canon_table", "offset_parts", "METRICS"]
