"""Process-wide CPU settings that the training loop and the benchmarks share."""

from __future__ import annotations

import ctypes
import platform
import sys
from pathlib import Path

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_tuned = False


def keep_freed_memory() -> bool:
    """Stop glibc returning large freed blocks to the kernel after every op.

    By default glibc serves blocks over a few MB with fresh mmaps and trims freed heap at once,
    so every training step faults in and zeroes its activations again: measured here, 45% of a
    cpu-small step was kernel (sys) time. Raising both thresholds keeps the memory in the heap
    (sys time 400 → 3 ms/step, step time −35%). Returns whether the setting took.
    """
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL("libc.so.6")
        big = ctypes.c_int(2**31 - 1)
        _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, big)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, big))
    except (OSError, AttributeError):  # not glibc
        _tuned = False
    return _tuned


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "?")


from trainer.config import GATE_DIM, ModelConfig  # noqa: E402  (config imports nothing from here)


def model_flops_per_token(config: ModelConfig, seq_len: int, window_blocks: tuple[int, int] | None = None) -> float:
    """Training FLOPs (forward + backward) per token of the model, for MFU.

        F = 6 · N_matmul + 6 · n_attn_layers · d_model · C_eff

    N_matmul counts every weight that multiplies activations: per attention layer the q, k, v, o
    matrices (4 · d_model²) and the attention gate (GATE_DIM · n_heads); per MLP layer c_fc and
    c_proj (2 · mlp_ratio · d_model²); the head (padded_vocab · d_model, as computed); and the smear
    gate (GATE_DIM, 2·GATE_DIM in `smear-gateboth`) when the arm has one. Each such weight costs
    2 FLOPs per token forward and 4 backward (input and weight gradients): 6 · N_matmul. Not counted:
    the token and value embeddings (lookups, no FLOPs), the other arms' element-wise terms, norms, rotary, gates' sigmoids, softcap, softmax and other
    element-wise work, and the optimisers (Muon's Newton–Schulz matmuls included).

    Attention: a query that sees k keys costs 2·d_model·k FLOPs for Q·Kᵀ and 2·d_model·k for
    P·V forward, twice that backward: 12 · d_model · k. Layer l's window w_l (tokens, as
    `ModelConfig.layer_windows`) lets query i see min(i, w_l) + 1 keys, so with k̄_l their mean over
    i = 0 … seq_len−1, C_eff = mean over attention layers of 2·k̄_l: the usual 6·L·d·T with the
    causal halving, where T becomes the window-limited context (C_eff = seq_len + 1 when every
    window covers the row). Windows are (long, final) blocks as in `GPT.set_windows`, by default
    the initial window; document masking is ignored (it depends on the data).
    """
    d = config.d_model
    attn_layers = config.attn_layers()
    n_mlp = sum(1 for i in range(config.n_layers) if i not in config.no_mlp_layers)
    n_matmul = (len(attn_layers) * (4 * d * d + GATE_DIM * config.n_heads) + n_mlp * 2 * config.mlp_ratio * d * d
                + config.padded_vocab * d + GATE_DIM * config.arm_spec.gate_reads)

    windows = config.layer_windows(*(window_blocks or (config.initial_window, config.initial_window)))
    context = 0.0
    for i in attn_layers:
        w = windows[i]
        m = min(w, seq_len - 1)  # queries 0..m see q + 1 keys, the rest w + 1
        keys = (m + 1) * (m + 2) // 2 + (seq_len - 1 - m) * (w + 1)  # = Σ_q min(q, w) + 1
        context += 2 * keys / seq_len
    c_eff = context / len(attn_layers) if attn_layers else 0.0
    return float(6 * n_matmul + 6 * len(attn_layers) * d * c_eff)
