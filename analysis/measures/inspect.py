"""What one model does on one text: every head's attention pattern and each token's smear coefficient."""

from __future__ import annotations

import numpy as np
import torch

from trainer.errors import AnalysisError
from trainer.model import GPT


@torch.no_grad()
def inspect_text(model: GPT, text: str) -> dict:
    """patterns: per layer (heads, T, T) arrays, None where the layer has no attention; tokens: the
    T decoded tokens (BOS first); coefficients: the T effective smear coefficients λ·σ(w·e[:12])
    (0 at the first position, which has no previous token), or None for a model without the smear."""
    if not text:
        raise AnalysisError("inspect_text: the text is empty")
    tokens = model.to_tokens(text)
    # attention layers only: a layer without attention would hand over a pattern of zeros built for nothing
    wanted = {f"blocks.{l}.attn.hook_pattern" for l in model.config.attn_layers()} | {"hook_smear_gate"}
    was_training = model.training
    model.eval()
    try:
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    finally:
        model.train(was_training)
    patterns = [cache[f"blocks.{i}.attn.hook_pattern"][0].float().numpy() if block.has_attn else None
                for i, block in enumerate(model.blocks)]
    coefficients = None
    if model.arm_spec.coefficient and model.arm_spec.site != "final":
        gate = cache["hook_smear_gate"][0, :, 0].float()
        coefficients = np.concatenate([[0.0], (float(model.smear_lambda) * gate).numpy()])
    return dict(patterns=patterns, tokens=model.to_str_tokens(tokens[0]), coefficients=coefficients)
