"""Causal path attribution of the previous token: how much of its effect on the next-token prediction
goes through the smear, and through which attention head reading which position.

**Interventions.** `sample_positions` picks query positions i from held-out data and, for each, a few
replacement tokens r, from the data and a fixed seed only (never from a model), so every arm and seed
is measured on the same interventions. Each sample is the document prefix that ends at i (it starts
at the document's BOS, as every training row does, so positions are at most `window` − 1 tokens into
a document) and position i is at least 3 tokens in, so i−1 and i−2 are real tokens. Token i−d is
replaced by r (offset d = 1, and d = 2 for the attention that reaches back two tokens), and the
change of the prediction at i (the logits for token i+1) is measured

- `total`: through every path (the corrupted run);
- `smear`: only through the smear term of position i: the clean run with `hook_smear_out` at i taken
  from the corrupted run (the gate reads the current token, which is clean, so this is x0[i]
  recomputed from the replaced token);
- `rest`: through every path but that term (the corrupted run with `hook_smear_out` at i clean);
- `leftover`: total − smear − rest (the interaction; no run of its own);
- `head` (an *edge*): head h of layer l at query i alone recomputed with its key and value at the
  source position i−s taken from the corrupted run; nothing else changes, so the head's own changed
  output at earlier positions cannot leak into i through later layers. The query and the head's
  output gate (`attn.hook_gate`, which reads the query's residual) stay clean. Parts: `kv` (key and
  value), `key`, `value`, and the value split into `value_resid` (what the head computes from the
  residual at i−s) and `value_ve` (the value-embedding lookup of the token there, added into v at
  layers with value embeddings); the two value parts add up exactly at the head's output. Sources:
  offset 1 reads s = 1 (all parts) and s = 0 (`kv`: attending to i, whose x0 carries the smear of
  i−1); offset 2 reads s = 2 and s = 1 (`kv`: attending to i−1, whose x0 carries the smear of i−2).

**Metrics** (per path, over the samples): `kl` = mean KL(clean ‖ patched) of the next-token
distribution, `dlogp` = mean change of log p(target), `share` = Σ⟨δ_path, δ_total⟩_F / Σ⟨δ_total,
δ_total⟩_F, the projection of the path's logit change δ onto the total's under the clean prediction's
Fisher metric F = diag(p) − ppᵀ (linear: the shares of smear, rest and leftover add up to 1; a KL
ratio understates a path roughly quadratically), `fisher` = mean ⟨δ_path, δ_path⟩_F, and `n`. Each is
reported for every sample (`gate` = "all") and, for models with a smear gate, split by the gate at i:
"open" where the coefficient c_i = λ·σ(w·e[i][:12]) is above half of λ (σ > 0.5), else "closed"
(the gate is a function of the token at i).

**How it is computed.** One batch of samples takes five forwards of the model, each run through its
hooks: the clean prefixes; the prefixes with i−1 replaced; with i−2 replaced; with i−1 replaced but
the residual at i−1 clean at every layer (its values then differ only by the value embedding); and
the clean prefixes followed by one extra *slot* position per patched path. A slot holds the token at
i; its smear output is set to i's (clean, or the corrupted run's for the smear path), and at every
attention layer its head outputs are recomputed in a hook on `attn.hook_z` as the attention of query
i (rotary at i, keys of the prefix within i's window and document, its own key in place of i's), with
the patched key or value of its edge. Slots never see each other, and nothing before them sees them
(causal), so each slot is exactly position i of its own patched run, at the cost of one token instead
of a forward per path. Cross-position mixing anywhere else would break this: every batch checks that
an unpatched slot reproduces the model's own prediction at i.

**Offsets** (`offset_metrics`): per head, the attention of query i on i, i−1, i−2 and the BOS on the
clean prefixes (`mass`), and the same weighted by the head's output gate and the norm of what that
key's value writes, g·a·‖W_O v‖ (`written`), with the same gate split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.measures.probes import evaluating
from trainer.errors import AnalysisError
from trainer.model import GPT, dense_mask, rotary

PATH_WINDOW = 64  # tokens of a sample: the document prefix ending at i, from its BOS
DEFAULT_POSITIONS, DEFAULT_DRAWS = 256, 4
SAMPLE_SEED = 0
MIN_LOCAL = 3  # i is at least this many tokens after its BOS: i−1 and i−2 are real tokens
BATCH_ROWS = 64  # rows (samples × draws) per batch of forwards
SLOT_TOLERANCE = 1e-3  # largest |logit| difference allowed between an unpatched slot and position i
PARTS1 = ("kv", "key", "value", "value_resid", "value_ve")
METRIC_NAMES = ("kl", "dlogp", "share", "fisher", "n")
KEYS = ("i", "i-1", "i-2", "bos")  # the keys of the offsets table


@dataclass
class PathSamples:
    """Query positions and their replacement tokens, from the data and a seed only."""

    context: Tensor  # (P, window) the document prefix ending at i, left-padded with BOS
    length: Tensor  # (P,) its length (BOS included)
    target: Tensor  # (P,) token i+1
    replacement: Tensor  # (P, draws) tokens put at i−1 (offset 1) or i−2 (offset 2)
    position: Tensor  # (P,) index of i in the token stream

    @property
    def draws(self) -> int:
        return self.replacement.size(1)


def sample_positions(tokens: np.ndarray, bos_id: int, positions: int = DEFAULT_POSITIONS, draws: int = DEFAULT_DRAWS,
                     window: int = PATH_WINDOW, seed: int = SAMPLE_SEED) -> PathSamples:
    """`positions` query positions (fewer when the data hold fewer) and `draws` replacements each.

    Positions are drawn uniformly among the tokens that are MIN_LOCAL … window−1 tokens after their
    document's BOS and have a next token; replacements are tokens at uniformly drawn non-BOS positions
    of the same data (their unigram distribution), redrawn where they equal the token at i−1 or i−2."""
    tokens = np.asarray(tokens).astype(np.int64)
    if positions < 1 or draws < 1:
        raise AnalysisError(f"path attribution needs at least one position and one draw (got {positions}, {draws})")
    if window <= MIN_LOCAL:
        raise AnalysisError(f"path window {window} must exceed {MIN_LOCAL} tokens")
    idx = np.arange(tokens.size)
    last_bos = np.maximum.accumulate(np.where(tokens == bos_id, idx, -1))
    local = idx - last_bos
    ok = (last_bos >= 0) & (local >= MIN_LOCAL) & (local < window) & (idx < tokens.size - 1)
    candidates = np.flatnonzero(ok)
    pool = np.flatnonzero(tokens != bos_id)
    if candidates.size == 0:
        raise AnalysisError(f"no position for path attribution: no document of the data has {MIN_LOCAL + 1} tokens "
                            f"and a next token")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(positions, candidates.size), replace=False))
    rep = tokens[rng.choice(pool, size=(chosen.size, draws))]
    for _ in range(100):  # a replacement equal to what it replaces is no intervention
        same = (rep == tokens[chosen - 1, None]) | (rep == tokens[chosen - 2, None])
        if not same.any():
            break
        rep[same] = tokens[rng.choice(pool, size=int(same.sum()))]
    context = np.full((chosen.size, window), bos_id, dtype=np.int64)
    for row, i in enumerate(chosen):
        ctx = tokens[last_bos[i]: i + 1]
        context[row, window - ctx.size:] = ctx
    return PathSamples(torch.from_numpy(context), torch.from_numpy(local[chosen] + 1), torch.from_numpy(tokens[chosen + 1]),
                       torch.from_numpy(rep), torch.from_numpy(chosen))


# ---- paths -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    offset: int  # the replaced token is i − offset
    path: str  # total, smear, rest, leftover, head
    layer: int = -1
    head: int = -1
    source: int = -1  # head edges: the key/value position is i − source
    part: str = ""


def edge_paths(model: GPT) -> list[Path]:
    """Every head edge measured, in slot order."""
    out = []
    for l in model.config.attn_layers():
        for h in range(model.config.n_heads):
            out += [Path(1, "head", l, h, 1, part) for part in PARTS1]
            out += [Path(1, "head", l, h, 0, "kv")]
            out += [Path(2, "head", l, h, s, "kv") for s in (2, 1)]
    return out


def all_paths(model: GPT) -> list[Path]:
    """The measured paths (leftover is derived in the table)."""
    return [Path(d, p) for d in (1, 2) for p in ("total", "smear", "rest")] + edge_paths(model)


@dataclass
class Slots:
    """Extra positions appended after i, each position i of its own patched run."""

    n: int
    smear: list[Tensor | None]  # per slot: the smear output to use (B, d), or None for i's own
    patches: dict[int, list[tuple[int, int, int, Tensor | None, Tensor | None]]] = field(default_factory=dict)
    # layer -> [(slot, head, source, rotated key (B, D) or None, value (B, D) or None)]


@dataclass
class Pass:
    """What one forward leaves: logits at i and the slots, and per-layer activations of the prefix."""

    logits: Tensor  # (B, 1 + slots, V)
    rot_k: dict = field(default_factory=dict)  # layer -> (B, T0, H, D)
    v: dict = field(default_factory=dict)  # layer -> (B, T0, H, D)
    rot_q: dict = field(default_factory=dict)  # layer -> (B, H, D) at i
    gate: dict = field(default_factory=dict)  # layer -> (B, H) at i
    resid_pre: dict = field(default_factory=dict)  # layer -> (B, d) at i−1
    smear_out: Tensor | None = None  # (B, d) at i
    smear_gate: Tensor | None = None  # (B,) σ at i


def _visible(tokens: Tensor, bos_id: int, window: int) -> Tensor:
    """(B, T0) keys that query i = T0−1 sees, by the model's own mask rule."""
    docs = (tokens == bos_id).cumsum(dim=1)
    return dense_mask(docs, window)[:, 0, -1]


def slot_attention(q: Tensor, k_self: Tensor, v_self: Tensor, keys: Tensor, values: Tensor, visible: Tensor,
                   scale: float, patches: list | None = None) -> Tensor:
    """Attention output of query i for each slot, before the output gate: (B, S, H, D).

    q, k_self, v_self are the slots' (B, S, H, D), rotated at i; keys and values the prefix's
    (B, T0, H, D) (the last, i's own, is replaced by each slot's); visible (B, T0). A patch
    (slot, head, source, key, value) puts that key and/or value at position i − source for one head."""
    T0 = keys.size(1)
    scores = torch.einsum("bshd,bjhd->bshj", q, keys) * scale
    scores[..., T0 - 1] = (q * k_self).sum(-1) * scale
    for s, h, src, key, _ in patches or ():
        if key is not None:
            scores[:, s, h, T0 - 1 - src] = (q[:, s, h] * key).sum(-1) * scale
    a = scores.masked_fill(~visible[:, None, None, :], float("-inf")).softmax(dim=-1)
    z = torch.einsum("bshj,bjhd->bshd", a[..., :-1], values[:, :-1]) + a[..., -1:] * v_self
    for s, h, src, _, value in patches or ():
        if value is not None:
            j = T0 - 1 - src
            old = v_self[:, s, h] if src == 0 else values[:, j, h]
            z[:, s, h] = z[:, s, h] + a[:, s, h, j, None] * (value - old)
    return z


def run_pass(model: GPT, tokens: Tensor, slots: Slots | None = None, resid_patch: dict | None = None,
             keep: bool = True) -> Pass:
    """One forward of left-padded prefixes (B, T0) (query i = T0−1) plus `slots`, through hooks only.

    resid_patch: layer -> (B, d) residual put at i−1 at that block's input (after the x0 mix)."""
    B, T0 = tokens.shape
    S = slots.n if slots else 0
    cfg = model.config
    out = Pass(logits=torch.empty(0))
    store: dict = {}
    if S:
        tokens = torch.cat([tokens, tokens[:, -1:].expand(B, S)], dim=1)
        cos, sin = model.yarn.cos_sin(T0, tokens.device)
        cos_i, sin_i = cos[-1:].expand(S, -1), sin[-1:].expand(S, -1)
        scale = float(model.yarn.attn_scale)
        windows = model.layer_windows()
        visible = {}

    def smear_out(x: Tensor, hook) -> Tensor:
        out.smear_out = x[:, T0 - 1].clone()
        if not S:
            return x
        x = x.clone()
        for s, value in enumerate(slots.smear):
            x[:, T0 + s] = x[:, T0 - 1] if value is None else value
        return x

    def smear_gate(g: Tensor, hook) -> None:
        out.smear_gate = g[:, T0 - 2, 0].clone()  # the hook holds positions 1 … T−1

    def keeper(name: str, layer: int):
        def fn(x: Tensor, hook) -> None:
            store[name, layer] = x
        return fn

    def resid_pre(x: Tensor, hook, layer: int) -> Tensor:
        if keep:
            out.resid_pre[layer] = x[:, T0 - 2].clone()
        if resid_patch is None:
            return x
        x = x.clone()
        x[:, T0 - 2] = resid_patch[layer]
        return x

    def head_out(z: Tensor, hook, layer: int) -> Tensor:
        v, gate = store["v", layer], store["gate", layer]
        out.rot_k[layer], out.v[layer] = store["rot_k", layer][:, :T0], v[:, :T0]
        out.rot_q[layer], out.gate[layer] = store["rot_q", layer][:, T0 - 1], gate[:, T0 - 1]
        if not S:
            return z
        if layer not in visible:
            visible[layer] = _visible(tokens[:, :T0], cfg.bos_id, windows[layer])
        q = rotary(store["q", layer][:, T0:], cos_i, sin_i)
        k = rotary(store["k", layer][:, T0:], cos_i, sin_i)
        att = slot_attention(q, k, v[:, T0:], store["rot_k", layer][:, :T0], v[:, :T0], visible[layer], scale,
                             slots.patches.get(layer))
        z = z.clone()
        z[:, T0:] = att * gate[:, T0:, :, None]
        return z

    def last(x: Tensor, hook) -> Tensor:
        return x[:, T0 - 1:]  # only i and the slots reach the unembedding

    # Smear-MTP mixes the final latent at i−1 into i after the last block: every position goes on to it,
    # and the logits are cut to i and the slots afterwards
    mixes_after_blocks = model.arm_spec.mix is not None and model.arm_spec.site == "final"
    hooks = [("hook_smear_out", smear_out), ("hook_smear_gate", smear_gate)]
    if not mixes_after_blocks:
        hooks.append((f"blocks.{cfg.n_layers - 1}.hook_resid_post", last))
    for l in range(cfg.n_layers):
        hooks.append((f"blocks.{l}.hook_resid_pre", lambda x, hook, l=l: resid_pre(x, hook, l)))
    for l in cfg.attn_layers():
        hooks += [(f"blocks.{l}.attn.{name}", keeper(short, l)) for name, short in
                  (("hook_q", "q"), ("hook_k", "k"), ("hook_rot_q", "rot_q"), ("hook_rot_k", "rot_k"),
                   ("hook_v", "v"), ("hook_gate", "gate"))]
        hooks.append((f"blocks.{l}.attn.hook_z", lambda z, hook, l=l: head_out(z, hook, l)))
    # the last block's hook is registered before resid_pre's of the same block: order does not matter
    out.logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    if mixes_after_blocks:
        out.logits = out.logits[:, T0 - 1:]
    return out


# ---- statistics of one batch ---------------------------------------------------------------------------


def fisher_inner(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩_F = aᵀ(diag(p) − ppᵀ)b over the last dimension (p broadcast over a, b's middle dims)."""
    return (p * a * b).sum(-1) - (p * a).sum(-1) * (p * b).sum(-1)


def path_stats(clean: Tensor, deltas: Tensor, totals: Tensor, total_of: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per sample and path: kl, dlogp, ⟨δ, δ_total⟩_F, ⟨δ, δ⟩_F.

    clean (B, V) logits; deltas (B, K, V) logit changes; totals (B, n, V) the total changes, and
    total_of (K,) which of them each path is compared with; target (B,) token ids. With Σp = 1,
    KL(p ‖ softmax(z + δ)) = lse(z + δ) − lse(z) − Σ p δ, so one logsumexp per path does."""
    p0 = clean.softmax(-1)
    pd = p0[:, None] * deltas
    mean = pd.sum(-1)  # E_p[δ]
    shift = torch.logsumexp(clean[:, None] + deltas, -1) - torch.logsumexp(clean, -1)[:, None]
    kl = shift - mean
    dlogp = deltas.gather(-1, target[:, None, None].expand(-1, deltas.size(1), 1))[..., 0] - shift
    cross = torch.einsum("bkv,bnv->bkn", pd, totals)  # E_p[δ δ_total] for every total
    total_mean = torch.einsum("bv,bnv->bn", p0, totals)
    ip = cross.gather(-1, total_of[None, :, None].expand(deltas.size(0), -1, 1))[..., 0] - mean * total_mean[:, total_of]
    ff = torch.einsum("bkv,bkv->bk", pd, deltas) - mean.square()
    return {"kl": kl, "dlogp": dlogp, "ip": ip, "ff": ff}


@dataclass
class Measurements:
    paths: list[Path]
    stats: dict[str, Tensor]  # name -> (N, K) per row and path
    gate: Tensor | None  # (N,) smear gate σ at i per row; None without a smear gate
    offsets: dict[str, Tensor]  # mass, written -> (P, layers, H, len(KEYS)) per position
    offset_gate: Tensor | None  # (P,)
    layers: list[int]


def _expand(x: Tensor, draws: int) -> Tensor:
    return x.repeat_interleave(draws, dim=0)


def measure(model: GPT, samples: PathSamples, batch_rows: int = BATCH_ROWS) -> Measurements:
    """Every path of `all_paths(model)` on every (position, draw) row, and the offsets per position."""
    cfg = model.config
    if not cfg.attn_layers():
        raise AnalysisError("the model has no attention layers to attribute paths to")
    if int(samples.context.max()) >= cfg.vocab_size:
        raise AnalysisError(f"token id {int(samples.context.max())} is outside the model's vocabulary of {cfg.vocab_size}")
    paths = all_paths(model)
    index = {p: k for k, p in enumerate(paths)}
    total_of = torch.tensor([p.offset - 1 for p in paths])
    draws, device = samples.draws, model.cfg.device
    order = torch.argsort(samples.length, stable=True)  # similar lengths share a batch: little padding
    per_batch = max(1, batch_rows // draws)
    stats: dict[str, list] = {k: [] for k in ("kl", "dlogp", "ip", "ff")}
    gates, offsets, offset_gate, rows = [], {"mass": [], "written": []}, [], []
    with evaluating(model):
        for start in range(0, len(order), per_batch):
            sel = order[start:start + per_batch]
            T0 = int(samples.length[sel].max())
            clean = samples.context[sel, -T0:].to(device)
            target = _expand(samples.target[sel], draws).to(device)
            a = run_pass(model, clean)
            off_mass, off_written = _offsets(model, a, clean)
            offsets["mass"].append(off_mass), offsets["written"].append(off_written)
            offset_gate.append(a.smear_gate)
            rows.append(sel)
            z0, deltas = batch_deltas(model, clean, samples.replacement[sel].reshape(-1).to(device), draws, a)
            totals = torch.stack([deltas[Path(d, "total")] for d in (1, 2)], dim=1)
            part = path_stats(z0, torch.stack([deltas[p] for p in paths], dim=1), totals, total_of, target)
            for k, v in part.items():
                stats[k].append(v.double().cpu())
            if a.smear_gate is not None:
                gates.append(_expand(a.smear_gate, draws).cpu())
    done = torch.cat(rows)
    back = torch.argsort(done)  # positions in sample order again
    row_back = torch.argsort((done[:, None] * draws + torch.arange(draws)).reshape(-1))  # and rows
    return Measurements(
        paths=paths,
        stats={k: torch.cat(v)[row_back] for k, v in stats.items()},
        gate=torch.cat(gates)[row_back].float() if gates else None,
        offsets={k: torch.cat(v)[back] for k, v in offsets.items()},
        offset_gate=torch.cat(offset_gate)[back].float().cpu() if offset_gate and offset_gate[0] is not None else None,
        layers=cfg.attn_layers())


def batch_deltas(model: GPT, clean: Tensor, rep: Tensor, draws: int, a: Pass | None = None) -> tuple[Tensor, dict]:
    """Clean logits at i (rows = prefixes × draws) and each path's logit change, for left-padded clean
    prefixes (P, T0) and their replacements rep (P·draws,); `a` is the clean pass when already run."""
    T0 = clean.size(1)
    a = a or run_pass(model, clean)
    base = _expand(clean, draws)
    corrupt = {}
    for d in (1, 2):
        corrupt[d] = base.clone()
        corrupt[d][:, T0 - 1 - d] = rep
    clean_smear = _expand(a.smear_out, draws) if a.smear_out is not None else None
    b = {d: run_pass(model, corrupt[d], Slots(2, [None, clean_smear])) for d in (1, 2)}
    ve_only = run_pass(model, corrupt[1], resid_patch={l: _expand(r, draws) for l, r in a.resid_pre.items()})
    edges = edge_paths(model)
    e = run_pass(model, base, _clean_slots(model, edges, a, b, ve_only, draws))
    z0 = _expand(a.logits[:, 0], draws)
    _check_slot(e.logits, "clean"), _check_slot(b[1].logits, "corrupted")
    deltas = {Path(d, "total"): b[d].logits[:, 0] - z0 for d in (1, 2)}
    for d in (1, 2):  # the rest: the total, less what the smear adds in the corrupted run
        deltas[Path(d, "rest")] = deltas[Path(d, "total")] + b[d].logits[:, 2] - b[d].logits[:, 1]
        deltas[Path(d, "smear")] = e.logits[:, 1 + d] - e.logits[:, 1]
    for s, p in enumerate(edges):  # against the unpatched slot: the same arithmetic, so a null path is 0
        deltas[p] = e.logits[:, 4 + s] - e.logits[:, 1]
    return z0, deltas


def _check_slot(logits: Tensor, what: str) -> None:
    err = float((logits[:, 1] - logits[:, 0]).abs().max())
    if not err <= SLOT_TOLERANCE:
        raise AnalysisError(f"path attribution: an unpatched slot differs from the model's own prediction at i by "
                            f"{err:.2g} in the {what} run; this model mixes positions outside attention and "
                            f"hook_smear_out, which the slot method cannot follow")


def _clean_slots(model: GPT, edges: list[Path], a: Pass, b: dict[int, Pass], ve_only: Pass, draws: int) -> Slots:
    """Slots of the clean run: unpatched, smear at offset 1 and 2, then every head edge."""
    smear = [None, b[1].smear_out, b[2].smear_out] if a.smear_out is not None else [None, None, None]
    slots = Slots(3 + len(edges), smear + [None] * len(edges))
    for s, p in enumerate(edges):
        T0 = a.rot_k[p.layer].size(1)
        j, h, run = T0 - 1 - p.source, p.head, b[p.offset]
        key, value = run.rot_k[p.layer][:, j, h], run.v[p.layer][:, j, h]
        if p.part in ("value_ve", "value_resid"):
            clean_v = _expand(a.v[p.layer][:, j, h], draws)
            ve = ve_only.v[p.layer][:, j, h]  # clean residual, the replaced token's value embedding
            value = ve if p.part == "value_ve" else clean_v + value - ve
        key = key if p.part in ("kv", "key") else None
        value = value if p.part != "key" else None
        slots.patches.setdefault(p.layer, []).append((3 + s, h, p.source, key, value))
    return slots


def _offsets(model: GPT, a: Pass, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(B, layers, H, 4) attention of query i on i, i−1, i−2, BOS, plain and gate·‖W_O v‖ weighted."""
    B, T0 = tokens.shape
    cfg = model.config
    scale, windows = float(model.yarn.attn_scale), model.layer_windows()
    bos = T0 - 1 - (tokens.flip(1) == cfg.bos_id).long().argmax(dim=1)  # the row's own: the last BOS (pads are BOS)
    mass, written = [], []
    H, D = cfg.n_heads, cfg.d_head
    for l in cfg.attn_layers():
        q, k, v = a.rot_q[l], a.rot_k[l], a.v[l]
        scores = torch.einsum("bhd,bjhd->bhj", q, k) * scale
        a_l = scores.masked_fill(~_visible(tokens, cfg.bos_id, windows[l])[:, None], float("-inf")).softmax(-1)
        w_o = model.blocks[l].attn.qkvo_w[3].view(cfg.d_model, H, D)
        norms = torch.einsum("mhd,bjhd->bjhm", w_o, v).norm(dim=-1).transpose(1, 2)  # (B, H, T0)
        cols = torch.stack([torch.full_like(bos, T0 - 1), torch.full_like(bos, T0 - 2), torch.full_like(bos, T0 - 3), bos], 1)
        idx = cols[:, None, :].expand(-1, H, -1)
        m = a_l.gather(-1, idx)
        mass.append(m)
        written.append(m * norms.gather(-1, idx) * a.gate[l][..., None])
    return torch.stack(mass, 1).double().cpu(), torch.stack(written, 1).double().cpu()


# ---- tables -----------------------------------------------------------------------------------------


def _groups(gate: Tensor | None, n: int) -> dict[str, Tensor]:
    groups = {"all": torch.ones(n, dtype=torch.bool)}
    if gate is not None:
        groups |= {"open": gate > 0.5, "closed": gate <= 0.5}
    return groups


def path_frame(m: Measurements, base: dict) -> pd.DataFrame:
    """Tidy `paths` rows: base columns, offset, path, layer, head, source, part, gate, metric, value."""
    st = m.stats
    index = {p: k for k, p in enumerate(m.paths)}
    rows = []
    for gate, sel in _groups(m.gate, st["kl"].size(0)).items():
        n = int(sel.sum())
        if n == 0:
            continue
        s = {k: v[sel] for k, v in st.items()}
        for p, k in index.items():
            norm = s["ff"][:, index[Path(p.offset, "total")]].sum()
            values = {"kl": s["kl"][:, k].mean(), "dlogp": s["dlogp"][:, k].mean(),
                      "share": s["ip"][:, k].sum() / norm, "fisher": s["ff"][:, k].mean(), "n": n}
            rows += [dict(base, offset=p.offset, path=p.path, layer=p.layer, head=p.head, source=p.source,
                          part=p.part, gate=gate, metric=name, value=float(v)) for name, v in values.items()]
        for d in (1, 2):
            t, sm, r = (index[Path(d, x)] for x in ("total", "smear", "rest"))
            norm = s["ff"][:, t].sum()
            left = {"share": (s["ip"][:, t] - s["ip"][:, sm] - s["ip"][:, r]).sum() / norm,
                    "dlogp": (s["dlogp"][:, t] - s["dlogp"][:, sm] - s["dlogp"][:, r]).mean(), "n": n}
            rows += [dict(base, offset=d, path="leftover", layer=-1, head=-1, source=-1, part="", gate=gate,
                          metric=name, value=float(v)) for name, v in left.items()]
    return pd.DataFrame(rows)


def offset_frame(m: Measurements, base: dict) -> pd.DataFrame:
    """Tidy `offsets` rows: base columns, layer, head, key (i, i-1, i-2, bos), gate, metric, value."""
    rows = []
    P = m.offsets["mass"].size(0)
    for gate, sel in _groups(m.offset_gate, P).items():
        if not sel.any():
            continue
        for metric, values in m.offsets.items():
            mean = values[sel].mean(0)  # (layers, H, keys)
            for li, l in enumerate(m.layers):
                for h in range(mean.size(1)):
                    rows += [dict(base, layer=l, head=h, key=key, gate=gate, metric=metric, value=float(mean[li, h, c]))
                             for c, key in enumerate(KEYS)]
        rows += [dict(base, layer=l, head=h, key=key, gate=gate, metric="n", value=float(sel.sum()))
                 for l in m.layers for h in range(m.offsets["mass"].size(2)) for key in KEYS]
    return pd.DataFrame(rows)


__all__ = ["PATH_WINDOW", "DEFAULT_POSITIONS", "DEFAULT_DRAWS", "SAMPLE_SEED", "PathSamples", "sample_positions",
           "Path", "all_paths", "edge_paths", "slot_attention", "run_pass", "fisher_inner", "path_stats",
           "Measurements", "measure", "path_frame", "offset_frame"]
