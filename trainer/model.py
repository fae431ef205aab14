"""The speedrun GPT (modded-nanogpt record of 2025-09-18), with the smear gate or another arm.

`ModelConfig.arm` picks the variant (registry and table: trainer/arms.py): the baseline, the record's
smear, a fixed dose, the smear variants its author tried, Smear-MTP or a canon layer. Each arm's
mixing term passes through `hook_smear_out` (the term added) and, where it is c_i·h[i−1],
`hook_smear_gate` (c_i = λ · gate_i). The key arms (`keyshift`, `smeared-key`) mix the previous
position's key into the key instead, through `attn.hook_key_shift` / `attn.hook_key_smear`.

One definition serves training, hooks and analysis. It is a TransformerLens `HookedRootModule`:
every `HookPoint` is an identity until a hook is attached, and the T×T attention pattern is only
built (explicit path) when a hook on `attn.hook_attn_scores` or `attn.hook_pattern` asks for it;
otherwise attention runs fused (SDPA on CPU, flex_attention on CUDA) with the same masks, or in
query chunks (`attn_impl="chunked"`, memory linear in T, for long probe sequences on a CPU); those
kernels and the masks live in trainer/attention.py.

TransformerLens's own tools (`run_with_cache`, `run_with_hooks`, `head_detector.detect_head`,
`patching`) run on it unchanged: it carries `cfg` (a `TransformerLensConfig`), `tokenizer`,
`to_tokens` and `to_str_tokens`, and `run_with_cache` returns an `ActivationCache`. A layer the config
gives no attention or no MLP holds a parameter-free stand-in (`NoAttention`, `NoMLP`) with the same
hooks, so tools that walk every layer find them; it attends nowhere and adds nothing, and the forward
pass skips it unless one of its hooks is in use.

Parameter names and shapes follow the record (`embed.weight`, `blocks.{l}.attn.qkvo_w`, `scalars`,
...); see tests/test_model.py for the full table of `speedrun-124m`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint

from trainer.attention import AttnContext, chunked, dense_mask, flex, sdpa
from trainer.config import GATE_DIM, ModelConfig
from trainer.errors import AnalysisError

ATTN_IMPLS = ("auto", "explicit", "sdpa", "flex", "chunked")
# n_ctx: the longest sequence whose T×T attention patterns may be materialised (explicit path, and so
# every TransformerLens tool, which caches them for all layers). One (T, T) float32 pattern is 1 GiB
# at 16,384 tokens. The fused and chunked paths take any length: rotary positions have no table to
# run out of and the sliding windows bound what a token sees; the streaming probes use them.
N_CTX = 16_384


def norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., j], x[..., j + D/2]); x is (B, T, H, D), cos/sin are (T, D/2)."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


RECORD_BLOCK_SIZE = 128  # tokens per window block in the record


class Yarn(nn.Module):
    """Half-truncated rotary frequencies and the attention scale, both stretched (YaRN) as windows grow.

    Both are persistent buffers, so a checkpoint carries the state it was trained (or validated) in.
    """

    def __init__(self, d_head: int, attn_scale: float):
        super().__init__()
        self.base_attn_scale = attn_scale
        self.register_buffer("angular_freq", torch.zeros(d_head // 2))
        self.register_buffer("attn_scale", torch.zeros(()))
        self.reset()

    def reset(self) -> None:
        quarter = self.angular_freq.numel() // 2
        freq = (1 / 1024) ** torch.linspace(0, 1, steps=quarter, dtype=torch.float32)
        with torch.no_grad():
            self.angular_freq.copy_(torch.cat([freq, freq.new_zeros(quarter)]))
            self.attn_scale.fill_(self.base_attn_scale)

    @torch.no_grad()
    def extend(self, old_window: int, new_window: int, alpha: float = 1.0, beta: float = 32.0) -> None:
        """Stretch low frequencies from `old_window` to `new_window` blocks; sharpen the scale to match.

        A frequency making ≥ beta turns over the old window is kept, < alpha fully stretched. The
        thresholds count turns over a window of the record's 128-token blocks: with smaller blocks,
        counting over our shorter windows would stretch even the fastest frequency (the previous-token
        signal), which the record never touches; this way the same frequencies are kept at any size.
        """
        rotations = RECORD_BLOCK_SIZE * old_window * self.angular_freq / (2 * math.pi)
        ratio = old_window / new_window
        keep = ((rotations - alpha) / (beta - alpha)).clamp(0, 1)  # fast frequencies are kept as they are
        self.angular_freq.mul_(ratio + keep * (1 - ratio))
        self.attn_scale.mul_(0.2 * math.log(new_window / old_window) + 1)

    def cos_sin(self, T: int, device: torch.device) -> tuple[Tensor, Tensor]:
        theta = torch.outer(torch.arange(T, dtype=torch.float32, device=device), self.angular_freq)
        return theta.cos(), theta.sin()


def shift_key(k: Tensor, hook: HookPoint) -> Tensor:
    """`keyshift` (record #169): the zero-frequency dims of each key (D/4…D/2 and 3D/4…D of k (B, T, H, D),
    the ones rotary never turns) replaced by those of the key before it; position 0 keeps its own. `hook`
    sees the moved values, (B, T−1, H, D/2), and what it returns is written. A copy, no arithmetic: the
    shifted dims are the earlier key's exactly."""
    B, T, H, D = k.shape
    parts = k.view(B, T, H, 2, 2, D // 4)  # (half, [turning, still], D/4): rotary pairs dim j with j + D/2
    moved = hook(parts[:, :-1, :, :, 1].reshape(B, T - 1, H, D // 2))
    still = torch.cat([parts[:, :1, :, :, 1], moved.view(B, T - 1, H, 2, D // 4)], dim=1)
    return torch.stack([parts[:, :, :, :, 0], still], dim=-2).view(B, T, H, D)


class CausalSelfAttention(nn.Module):
    present = True

    def __init__(self, cfg: ModelConfig, key_mix: str | None = None):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkvo_w = nn.Parameter(torch.empty(4, cfg.d_model, cfg.d_model))  # q, k, v, o as in the record
        self.attn_gate = nn.Linear(GATE_DIM, cfg.n_heads, bias=False)  # sparse per-head output gate
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # q, k after QK-norm
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()  # rot_k: the key the scores use (after a key arm)
        # key arms (trainer/arms.py), only on the layers they change: what is mixed into the rotated key
        self.key_mix = key_mix
        if key_mix == "shift":
            self.hook_key_shift = HookPoint()  # (B, T−1, H, D/2) zero-frequency dims moved one position on
        elif key_mix == "smear":
            self.key_smear = nn.Parameter(torch.empty(cfg.n_heads))  # s per head; 0 at init (smeared-key-init-<s0>: s0)
            self.hook_key_smear = HookPoint()  # (B, T, H, D) s_h · (k[j−1] − k[j]), 0 at j = 0
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_gate = HookPoint()  # (B, T, H) sigmoid gate on each head's output
        self.hook_z = HookPoint()  # (B, T, H, D) gated head outputs, the input of W_O

    def wants_pattern(self) -> bool:
        return hooked(self.hook_attn_scores, self.hook_pattern)

    def mix_key(self, k: Tensor) -> Tensor:
        """The key arm's change to the rotated key k (B, T, H, D), through its hook (trainer/arms.py)."""
        if self.key_mix == "shift":
            return shift_key(k, self.hook_key_shift)
        term = self.key_smear.to(k.dtype)[:, None] * (k[:, :-1] - k[:, 1:])  # s_h · (k[j−1] − k[j]), j ≥ 1
        return k + self.hook_key_smear(torch.cat([torch.zeros_like(k[:, :1]), term], dim=1))

    def forward(self, x: Tensor, ve: Tensor | None, sa_lambdas: Tensor, window: int, ctx: AttnContext) -> Tensor:
        B, T, _ = x.shape
        H, D = self.n_heads, self.d_head
        q, k, v = F.linear(x, self.qkvo_w[:3].flatten(0, 1)).view(B, T, 3 * H, D).chunk(3, dim=-2)
        q, k = self.hook_q(norm(q)), self.hook_k(norm(k))
        q, k = rotary(q, ctx.cos, ctx.sin), rotary(k, ctx.cos, ctx.sin)
        if self.key_mix is not None and T > 1:
            k = self.mix_key(k)
        q, k = self.hook_rot_q(q), self.hook_rot_k(k)
        v = sa_lambdas[0] * v + (sa_lambdas[1] * ve.view_as(v) if ve is not None else 0)
        v = self.hook_v(v)

        impl = "explicit" if (ctx.impl == "explicit" or self.wants_pattern()) else ctx.impl
        if impl == "explicit":
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * ctx.scale
            scores = scores.masked_fill(~dense_mask(ctx.docs, window), float("-inf"))
            pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        elif impl == "chunked":
            z = chunked(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ctx.docs, window, ctx.scale)
            z = z.transpose(1, 2)
        else:
            attend = flex if impl == "flex" else sdpa
            z = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ctx.mask(window), ctx.scale)
            z = z.transpose(1, 2)
        gate = self.hook_gate(torch.sigmoid(self.attn_gate(x[..., :GATE_DIM])))
        z = self.hook_z(z * gate[..., None])
        return F.linear(z.reshape(B, T, H * D), self.qkvo_w[3])


def hooked(*points: HookPoint) -> bool:
    return any(h._forward_hooks or h._backward_hooks for h in points)


class NoAttention(nn.Module):
    """The attention of a layer that has none (`no_attn_layers`, and layer 0 in a -noattn0 arm): no
    parameters, every hook of a real one.

    It answers as a layer that attends nowhere, every key masked: scores −inf, pattern all zeros (rows
    sum to 0, not 1), q, k, v, gate and z zeros, output zeros. So TransformerLens's tools that walk
    every layer (`detect_head`, the `patching` sweeps, `cache["pattern", l]`) run unchanged. Nothing is
    built unless a hook on the layer asks, and edits made by hooks here go nowhere (there is no W_O for
    a patched z to pass through); only `hook_attn_out` reaches the residual stream.
    """

    present = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_gate, self.hook_z = HookPoint(), HookPoint()

    def wants_pattern(self) -> bool:
        return hooked(self.hook_attn_scores, self.hook_pattern)

    def forward(self, x: Tensor) -> Tensor:
        (B, T, _), H, D = x.shape, self.n_heads, self.d_head
        if hooked(*self.children()):  # fresh tensors each: a hook may edit its input in place
            for point in (self.hook_q, self.hook_k, self.hook_rot_q, self.hook_rot_k, self.hook_v):
                point(x.new_zeros(B, T, H, D))
            if self.wants_pattern():
                self.hook_attn_scores(x.new_full((B, H, T, T), float("-inf")))
                self.hook_pattern(x.new_zeros(B, H, T, T))
            self.hook_gate(x.new_zeros(B, T, H))
            self.hook_z(x.new_zeros(B, T, H, D))
        return x.new_zeros(x.shape)


class MLP(nn.Module):
    present = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_ratio * cfg.d_model
        # both (d_model, hidden), as in the record, so Muon sees one shape for the whole MLP
        self.c_fc = nn.Parameter(torch.empty(cfg.d_model, hidden))
        self.c_proj = nn.Parameter(torch.empty(cfg.d_model, hidden))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        h = self.hook_post(F.relu(self.hook_pre(x @ self.c_fc)).square())
        return F.linear(h, self.c_proj)


class NoMLP(nn.Module):
    """The MLP of a layer that has none (`no_mlp_layers`): no parameters, zeros through the hooks of a
    real one when a hook asks (relu² of nothing is nothing); only `hook_mlp_out` reaches the residual."""

    present = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_mlp = cfg.mlp_ratio * cfg.d_model
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if hooked(self.hook_pre, self.hook_post):
            self.hook_pre(x.new_zeros(*x.shape[:-1], self.d_mlp))
            self.hook_post(x.new_zeros(*x.shape[:-1], self.d_mlp))
        return x.new_zeros(x.shape)


class Block(nn.Module):
    """One layer. A sublayer the config skips is a parameter-free stand-in (`NoAttention`, `NoMLP`) with
    the same hooks: the forward pass skips it outright unless one of its hooks is in use."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        key_mix = cfg.arm_spec.key_mix if layer in cfg.key_mix_layers() else None
        self.attn = CausalSelfAttention(cfg, key_mix) if layer not in cfg.attn_free_layers() else NoAttention(cfg)
        self.mlp = MLP(cfg) if layer not in cfg.no_mlp_layers else NoMLP(cfg)
        self.hook_resid_pre = HookPoint()  # after the x0 mix: attention reads norm(resid_pre)
        self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.has_attn, self.has_mlp = self.attn.present, self.mlp.present

    def forward(self, x, x0, lambdas, ve, sa_lambdas, window: int, ctx: AttnContext) -> Tensor:
        x = self.hook_resid_pre(lambdas[0] * x + lambdas[1] * x0)
        if self.has_attn:
            x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(norm(x), ve, sa_lambdas, window, ctx)))
        elif hooked(self.hook_attn_out, self.hook_resid_mid, *self.attn.children()):
            x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x)))
        if self.has_mlp:
            x = x + self.hook_mlp_out(self.mlp(norm(x)))
        elif hooked(self.hook_mlp_out, *self.mlp.children()):
            x = x + self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(x)


@dataclass
class LensConfig(TransformerLensConfig):
    """What TransformerLens's tools read as `model.cfg` (our own settings stay in `model.config`)."""

    tokenizer_prepends_bos: bool = False  # our tokenizers never add BOS: to_tokens does
    d_vocab_out: int = -1
    original_architecture: str = "smearlens-gpt"

    @classmethod
    def from_model_config(cls, c: ModelConfig, n_ctx: int = N_CTX) -> "LensConfig":
        return cls(d_model=c.d_model, d_head=c.d_head, n_layers=c.n_layers, n_ctx=n_ctx, n_heads=c.n_heads,
                   d_mlp=c.mlp_ratio * c.d_model, d_vocab=c.padded_vocab, d_vocab_out=c.padded_vocab, device="cpu",
                   default_prepend_bos=True, positional_embedding_type="rotary", uses_rms_norm=True,
                   normalization_type="RMSPre", final_rms=True, act_fn="relu_squared",
                   eps=torch.finfo(torch.float32).eps)


class GPT(HookedRootModule):
    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config = config.validate()
        self._cfg = LensConfig.from_model_config(config)
        self.tokenizer = None  # a trainer.tokenizer.Tokenizer, attached by whoever loads the model
        V, d = config.padded_vocab, config.d_model
        self.embed = nn.Embedding(V, d)
        self.value_embeds = nn.ModuleList(nn.Embedding(V, d) for _ in range(config.n_value_embeds))
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.yarn = Yarn(config.d_head, config.attn_scale)
        self.lm_head = nn.Linear(d, V, bias=False)
        self.scalars = nn.Parameter(torch.empty(config.n_scalars))
        self.arm_spec = spec = config.arm_spec
        self.smear_gate = nn.Linear(GATE_DIM * spec.gate_reads, 1, bias=False) if spec.gate_reads else None
        if spec.mix == "canon":  # row k weighs the token k positions back (k = 0: the token itself)
            self.canon_w = nn.Parameter(torch.empty(spec.canon_kernel, d))
        # long window and last-layer window, in blocks; grown by `set_windows` (YaRN)
        self.register_buffer("window_blocks", torch.tensor([0, 0]))
        if spec.scheduled:  # optimiser steps taken: schedule arms (trainer/arms.py) read it; checkpoints carry it
            self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        self.hook_embed = HookPoint()  # raw token embedding e
        self.hook_smear_gate = HookPoint()  # (B, T-1, 1) gate at positions 1…T−1, e.g. σ(w · e[1:, :12]); c = λ · gate
        self.hook_smear_out = HookPoint()  # (B, T, d) the arm's term added at its site (trainer/arms.py); 0 at position 0
        self.init_weights(seed)
        self.setup()

    # ---- parameters -------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """The record's initialisation, each parameter drawn from its own generator seeded by
        (seed, name): the arms with and without the smear start with identical shared weights."""
        cfg = self.config
        bound = 3**0.5 * 0.5 * cfg.d_model**-0.5
        for name, p in self.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            if name.startswith(("embed.", "value_embeds.")):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("qkvo_w"):
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
                p[3].zero_()  # output projection starts at zero
            elif name.endswith("c_fc"):
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
            elif name == "scalars":
                p.copy_(self.initial_scalars())
            elif name.endswith(".key_smear"):
                p.fill_(self.arm_spec.key_smear_init)  # 0 but in smeared-key-init-<s0>
            else:  # c_proj, lm_head, attention gates, smear gate: zero, as in the record; canon_w: zero
                p.zero_()
        self.yarn.reset()
        self.window_blocks.fill_(cfg.initial_window)

    def initial_scalars(self) -> Tensor:
        n = self.config.n_layers
        parts = [
            torch.full((n,), -1.5),  # U-net skip weights (first n/2 used): sigmoid(-1.5) ≈ 0.18
            torch.tensor([1.0, 0.0]).repeat(n),  # block lambdas: x, x0
            torch.tensor([0.5, 0.5]).repeat(n),  # SA lambdas: v, value embedding
            torch.zeros(n),  # λ of every learned-λ arm (first; the smear's in the record), the rest unused
        ]
        parts[-1][0] = self.arm_spec.lambda_init  # 0 but in smear-init-<λ0>, smear-hold-<c>-<k>
        pad = self.config.n_scalars - 6 * n
        return torch.cat(parts + [torch.ones(pad)])

    @property
    def smear_lambda(self) -> Tensor:
        """λ of the mixing term c_i = λ · gate_i: learned (scalars entry), or a dose's fixed c."""
        spec = self.arm_spec
        if spec.mix == "dose":
            if spec.anneal_steps:  # c · max(0, 1 − step/k), in float64 then rounded once, on the device
                left = (1 - self.train_step.double() / spec.anneal_steps).clamp(min=0)
                return (spec.dose * left).to(self.scalars.dtype)
            return self.scalars.new_tensor(spec.dose)
        lam = self.scalars[5 * self.config.n_layers]
        if spec.hold_steps:  # held: λ gets no gradient (and so does not move) until step k
            lam = torch.where(self.train_step < spec.hold_steps, lam.detach(), lam)
        return lam

    def set_step(self, step: int) -> None:
        """Optimiser steps taken (the training loop sets it after each); only schedule arms read it."""
        if self.arm_spec.scheduled:
            self.train_step.fill_(step)

    # ---- sliding windows ----------------------------------------------------------------------

    def set_windows(self, long_blocks: int, final_blocks: int | None = None) -> None:
        """Set the long window (blocks); YaRN-stretch rotary and scale when it grows."""
        final_blocks = long_blocks if final_blocks is None else final_blocks
        old = int(self.window_blocks[0])
        if long_blocks < old:
            raise ValueError(f"windows only grow (YaRN): {old} -> {long_blocks} blocks")
        if long_blocks > old:
            self.yarn.extend(old, long_blocks)
        self.window_blocks.copy_(torch.tensor([long_blocks, final_blocks]))

    def layer_windows(self) -> list[int]:
        """Window of each layer in tokens at the current window sizes (ModelConfig.layer_windows)."""
        return self.config.layer_windows(*(int(w) for w in self.window_blocks))

    # ---- TransformerLens protocol ---------------------------------------------------------------

    @property
    def cfg(self) -> LensConfig:
        """TransformerLens's view of the model; device and dtype follow the weights."""
        self._cfg.device, self._cfg.dtype = self.embed.weight.device, self.embed.weight.dtype
        return self._cfg

    def _tokenizer(self, what: str):
        tok = self.tokenizer
        if tok is None:
            raise AnalysisError(f"{what}: no tokenizer attached (set model.tokenizer, or load the model with "
                                f"analysis.loading.load_checkpoint_model)")
        if (tok.vocab_size, tok.bos_id) != (self.config.vocab_size, self.config.bos_id):
            raise AnalysisError(f"{what}: tokenizer (vocab {tok.vocab_size}, BOS {tok.bos_id}) does not match the model "
                                f"(vocab {self.config.vocab_size}, BOS {self.config.bos_id})")
        return tok

    def to_tokens(self, input: str | list[str], prepend_bos: bool | None = None, move_to_device: bool = True) -> Tensor:
        """Text → (B, T) token ids, each row starting with BOS (a new document) unless prepend_bos=False.

        Rows of a list are right-padded with BOS: each pad is a one-token document of its own, which
        the document mask hides from every real token."""
        tok = self._tokenizer("to_tokens")
        bos = self._cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        rows = [([self.config.bos_id] if bos else []) + tok.encode(text)
                for text in ([input] if isinstance(input, str) else input)]
        T = max((len(r) for r in rows), default=0)
        if T == 0:
            raise AnalysisError("to_tokens: no tokens (empty input and prepend_bos=False)")
        tokens = torch.full((len(rows), T), self.config.bos_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def to_str_tokens(self, input: str | list[str] | Tensor | list[int], prepend_bos: bool | None = None) -> list:
        """The text of each token: a list for one sequence, a list of lists for a batch (as TransformerLens)."""
        tok = self._tokenizer("to_str_tokens")
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(text, prepend_bos) for text in input]
        ids = self.to_tokens(input, prepend_bos)[0] if isinstance(input, str) else torch.as_tensor(input)
        if ids.ndim == 2:
            rows = [[tok.decode_token(i) for i in row] for row in ids.tolist()]
            return rows[0] if len(rows) == 1 else rows
        return [tok.decode_token(i) for i in ids.tolist()]

    def to_string(self, tokens: Tensor | list[int]) -> str:
        return self._tokenizer("to_string").decode(torch.as_tensor(tokens).flatten().tolist())

    def run_with_cache(self, *model_args, remove_batch_dim: bool = False, **kwargs) -> tuple[Tensor, ActivationCache]:
        """TransformerLens's run_with_cache, returning an `ActivationCache` (the 4.3 base returns a plain
        dict, which `detect_head` cannot index with its (name, layer, type) keys)."""
        out, cache = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def _check_context(self, T: int, attn_impl: str) -> None:
        """Only materialised patterns are limited to n_ctx; other paths take any length."""
        if T > self._cfg.n_ctx and (attn_impl == "explicit" or any(
                b.attn.wants_pattern() for b in self.blocks)):
            raise AnalysisError(f"sequence of {T} tokens is longer than the model's context n_ctx = {self._cfg.n_ctx} "
                                f"for attention patterns; raise model.cfg.n_ctx or use the streaming probes")

    # ---- forward ------------------------------------------------------------------------------

    def mix_term(self, h: Tensor, tokens: Tensor) -> Tensor:
        """The arm's term added to h (B, T, d) at its site, through the hooks; 0 at position 0."""
        spec = self.arm_spec
        if spec.mix == "canon":
            docs = (tokens == self.config.bos_id).cumsum(dim=1)
            term = self.canon_w[0] * h
            for k in range(1, min(spec.canon_kernel, h.size(1))):
                same_doc = (docs[:, k:] == docs[:, :-k])[..., None]
                term = term + F.pad(self.canon_w[k] * h[:, :-k] * same_doc, (0, 0, k, 0))
            return self.hook_smear_out(term)
        cur, prev = h[:, 1:], h[:, :-1]
        if spec.mix == "gate":
            src = norm(h) if spec.gate_norm else h  # smear-normgate: the gate reads the normed embedding
            src_cur, src_prev = src[:, 1:, :GATE_DIM], src[:, :-1, :GATE_DIM]
            reads = {"current": src_cur, "prev": src_prev,
                     "both": torch.cat([src_cur, src_prev], dim=-1)}[spec.gate_from]
            gate = torch.sigmoid(self.smear_gate(reads))
            if spec.hold_steps:  # held at the zero-init gate's 0.5, w receiving no gradient, until step k
                gate = torch.where(self.train_step < spec.hold_steps, 0.5, gate)
        elif spec.bos_mask:  # no mixing into a BOS: a new document starts clean
            gate = (tokens[:, 1:, None] != self.config.bos_id).to(h.dtype)
        else:  # "lambda": no gate
            gate = torch.ones_like(cur[..., :1])
        gate = self.hook_smear_gate(gate)
        # λ · gate first, then times h: the record's order, so the smear arm is bit-for-bit the record
        return self.hook_smear_out(torch.cat([torch.zeros_like(h[:, :1]), self.smear_lambda * gate * prev], dim=1))

    def embed_streams(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(x, x0): the residual stream's start and the embedding every block mixes back in. They are
        one tensor, norm(e + term), except in `smear-postnorm` (norm(e) + term) and `smear-xonly` (x0 = norm(e))."""
        spec = self.arm_spec
        e = self.hook_embed(self.embed(tokens))
        if spec.mix is None or spec.site == "final":
            x = norm(e)
            return x, x
        if spec.site == "postnorm":
            x = norm(e)
            x = x + self.mix_term(x, tokens)
            return x, x
        x = norm(e + self.mix_term(e, tokens))
        return x, (x if spec.into_x0 else norm(e))

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """x: the start of the residual stream, the normed token embedding with the arm's term (x0 too,
        but in `smear-xonly`, see `embed_streams`)."""
        return self.embed_streams(tokens)[0]

    def forward(
        self,
        tokens: Tensor,
        targets: Tensor | None = None,
        return_type: str = "logits",
        attn_impl: str = "auto",
    ) -> Tensor | tuple[Tensor, Tensor]:
        """tokens (B, T) or (T,) (or text, via to_tokens) → logits (B, T, padded vocab), the mean loss, or both."""
        if isinstance(tokens, str) or (isinstance(tokens, list) and tokens and isinstance(tokens[0], str)):
            tokens = self.to_tokens(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl {attn_impl!r}: choose one of {ATTN_IMPLS}")
        if tokens.size(1) > self._cfg.n_ctx:
            self._check_context(tokens.size(1), attn_impl)
        if attn_impl == "auto":
            attn_impl = "flex" if tokens.is_cuda else "sdpa"
        cfg, n = self.config, self.config.n_layers
        cos, sin = self.yarn.cos_sin(tokens.size(1), tokens.device)
        docs = (tokens == cfg.bos_id).cumsum(dim=1)
        ctx = AttnContext(docs, cos, sin, float(self.yarn.attn_scale), attn_impl, {})
        windows = self.layer_windows()

        x, x0 = self.embed_streams(tokens)
        ve = [embed(tokens) for embed in self.value_embeds]
        skip_weights = self.scalars[: n // 2]
        lambdas = self.scalars[n : 3 * n].view(-1, 2)
        sa_lambdas = self.scalars[3 * n : 5 * n].view(-1, 2)
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= n // 2:  # U-net: decoder layers take the matching encoder output back
                x = x + torch.sigmoid(skip_weights[i - n // 2]) * skips.pop()
            j = cfg.value_embed_index(i)
            x = block(x, x0, lambdas[i], ve[j] if j is not None else None, sa_lambdas[i], windows[i], ctx)
            if i < n // 2:
                skips.append(x)
        x = norm(x)
        if self.arm_spec.site == "final" and self.arm_spec.mix is not None:  # Smear-MTP: after the final norm
            x = x + self.mix_term(x, tokens)
        logits = self.lm_head(x).float()
        logits = cfg.softcap * torch.sigmoid(logits / cfg.softcap_div)
        if return_type == "logits":
            return logits
        if targets is None:
            raise ValueError(f"return_type={return_type!r} needs targets")
        if targets.ndim == 1:
            targets = targets[None]
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return loss if return_type == "loss" else (logits, loss)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def min_parameters(config: ModelConfig) -> int:
    """A lower bound on the parameters of `GPT(config)` (its embeddings, head, attention and MLP matrices and
    scalars), computed without building it: a loader compares it with a weights file's size, so metadata
    that asks for an absurd model is refused before the model's memory is allocated."""
    V, d, n = config.padded_vocab, config.d_model, config.n_layers
    attn = n - len(config.attn_free_layers())  # validate() keeps the listed layers in 0..n-1
    mlp = n - len(set(config.no_mlp_layers))
    return V * d * (2 + config.n_value_embeds) + attn * 4 * d * d + mlp * 2 * config.mlp_ratio * d * d + config.n_scalars
