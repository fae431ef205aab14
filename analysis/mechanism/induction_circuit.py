"""The induction circuit of one model: where the induction head's key gets its previous token, what
knocking out the previous-token heads or the arm's mixing does to induction, and what every head does.

On BOS + R + R rows (|R| = L at each of `probes.INDUCTION_LENGTHS`), an induction head at query
i = 1 + L + m (token R[m], second copy) attends to key j = m + 2 (R[m+1]), whose key must say "my previous
token is R[m]". Three tables, each a pure function of the model (and text batches):

- `key_shares` (per induction head and route): the drop in the head's attention *logit* from i to j when
  only that route sees a resampled token j−1 (`composition.key_routes`: smear, prev_heads, key_shift,
  key_smear, all), and each route's share of the drop with every route at once; `other` = all − the named
  routes (direct paths of other heads, interactions), so the shares add up to 1 exactly.
- `induction_knockouts` (per condition): the best induction head's score and the copy losses after mean-
  ablating every previous-token head before it, knocking out the arm's previous-token mixing (the smear
  term, the key shift or the key smear), or both. Claim (a) of the study is the row
  `PRIMARY` = (prev_heads, copy_cost): the second-copy loss with the previous-token heads ablated, minus clean.
- `head_roles` (per head): attention by offset on text (i, i−1, i−2, BOS, further), induction and
  duplicate-token scores, and what mean-ablating the head costs on text and on the second copy. Written
  for every head, so that the baseline's previous-token heads can be followed into each arm of the same
  seed afterwards (`analysis.stats.mechanism_stats.freed_head_roles`).

`circuit_tables` computes the three with the clean repeat probe shared; analyze writes them at each run's
final checkpoint.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.measures import metrics as M
from analysis.measures import probes
from analysis.measures.probes import _as_batch, _clean_loss_and_head_means, _loss, evaluating
from analysis.mechanism import knockout
from analysis.mechanism.composition import (INDUCTION_THRESHOLD, PREV_THRESHOLD, _run, key_mix, key_routes,
                                            resampled_pairs, routes_of)
from trainer.errors import AnalysisError
from trainer.model import GPT

LENGTHS = probes.INDUCTION_LENGTHS
BATCH = 16  # rows per repeat length (the pilot's table used 16)
# |drop with every route| below this (relative to the clean logit's size, at least 1) is no effect: shares NaN
NO_EFFECT = 1e-4
SHARE_COLUMNS = ["layer", "head", "route", "metric", "value"]
KNOCKOUT_COLUMNS = ["condition", "metric", "value"]
ROLE_COLUMNS = ["layer", "head", "metric", "value"]
CONDITIONS = ("clean", "prev_heads", "smear", "both")  # "smear": the arm's previous-token mixing, whichever it is
PRIMARY = ("prev_heads", "copy_cost")  # claim (a): (condition, metric) of `induction_knockouts`
OFFSET_KEYS = ("self", "prev", "prev2", "bos", "further")
TABLES = ("key_shares", "induction_knockouts", "head_roles")


# ---- key routes as shares ---------------------------------------------------------------------------------


def _check_scores(model: GPT, scores: Tensor, what: str) -> Tensor:
    shape = (model.config.n_layers, model.config.n_heads)
    scores = torch.as_tensor(scores)
    if tuple(scores.shape) != shape:
        raise AnalysisError(f"{what} scores of shape {tuple(scores.shape)}: expected (n_layers, n_heads) = {shape}")
    return scores


def _heads_at_least(scores: Tensor, threshold: float) -> list[tuple[int, int]]:
    return [(l, h) for l in range(scores.size(0)) for h in range(scores.size(1))
            if not math.isnan(scores[l, h]) and scores[l, h] >= threshold]


def key_shares(model: GPT, prev_scores: Tensor, induction: Tensor, lengths: Sequence[int] = LENGTHS,
               batch: int = BATCH, seed: int = 0) -> pd.DataFrame:
    """Where each induction head's key gets token j−1: tidy rows (layer, head, route, metric, value).

    The effect of a route is the mean drop, over the rows of every length, of the head's attention logit
    (score · scale, before the softmax) from i to j when only that route sees the resampled token j−1.
    The logit, not the attention: it is linear in the key, so the routes' effects on it are comparable
    and where the key is a sum of parts (the key shift's zero-frequency dims beside the rest) they add;
    the attention saturates (a head at 0.99 loses almost all of it to any large drop, so two routes that
    each remove it would each claim all of it) and depends on every other key. For the same reason the
    query and every other key stay clean.

    Per induction head (`induction` ≥ INDUCTION_THRESHOLD; `induction` and `prev_scores` are
    (n_layers, n_heads), NaN where no attention; previous-token heads are those ≥ PREV_THRESHOLD in
    earlier layers): for each route of `composition.routes_of(model)` but `all`, then `other`
    (= all − those) and `all`, the metrics `logit_drop` and `share` (= logit_drop / all's; NaN when all's is
    ~0, i.e. corrupting token j−1 does not move the key: no effect, not an error) and, except for `other`,
    `attention` (from i to j with that route's key). Route `clean`: `logit`, `attention`, `induction` (the
    score given), `n_prev_heads`, `n_rows` (rows whose key j lies in the head's window). One row with
    layer = head = −1, route `clean`, metric `n_induction_heads` is always written."""
    prev_scores, induction = _check_scores(model, prev_scores, "previous-token"), _check_scores(model, induction, "induction")
    if any(L < 2 for L in lengths) or not lengths:
        raise AnalysisError(f"key shares: repeat lengths {tuple(lengths)} must be at least 2 (a query needs a next token)")
    found = _heads_at_least(induction, INDUCTION_THRESHOLD)
    rows = [dict(layer=-1, head=-1, route="clean", metric="n_induction_heads", value=float(len(found)))]
    if not found:
        return pd.DataFrame(rows, columns=SHARE_COLUMNS)
    layers = sorted({l for l, _ in found})
    prev = [(l, h) for l, h in _heads_at_least(prev_scores, PREV_THRESHOLD) if l < max(layers)]
    parts: dict[str, list[Tensor]] = {}  # name → per-length (B, layers, H)
    with evaluating(model):
        for L in lengths:
            for name, value in _route_logits(model, L, batch, seed, layers, prev).items():
                parts.setdefault(name, []).append(value)
    got = {name: torch.cat(v).double() for name, v in parts.items()}
    routes = [r for r in routes_of(model) if r != "all"]
    for l, h in found:
        a = layers.index(l)
        seen = got["visible"][:, a, h].bool()
        n_prev = sum(1 for pl, _ in prev if pl < l)

        def mean(name: str) -> float:
            return float(got[name][seen, a, h].mean()) if seen.any() else math.nan

        clean = mean("logit_clean")
        drop = {r: clean - mean(f"logit_{r}") for r in (*routes, "all")}
        drop["other"] = drop["all"] - sum(drop[r] for r in routes)
        tol = NO_EFFECT * max(1.0, abs(clean)) if seen.any() else math.inf
        total = drop["all"]
        rows += [dict(layer=l, head=h, route="clean", metric=m, value=v) for m, v in (
            ("logit", clean), ("attention", mean("attn_clean")), ("induction", float(induction[l, h])),
            ("n_prev_heads", float(n_prev)), ("n_rows", float(seen.sum())))]
        for r in (*routes, "other", "all"):
            share = drop[r] / total if abs(total) > tol else math.nan
            rows += [dict(layer=l, head=h, route=r, metric="logit_drop", value=drop[r]),
                     dict(layer=l, head=h, route=r, metric="share", value=share)]
            if r != "other":
                rows.append(dict(layer=l, head=h, route=r, metric="attention", value=mean(f"attn_{r}")))
    return pd.DataFrame(rows, columns=SHARE_COLUMNS)


def _route_logits(model: GPT, L: int, batch: int, seed: int, layers: list[int],
                  prev: list[tuple[int, int]]) -> dict[str, Tensor]:
    """On `batch` resampled pairs of length L: name → (B, len(layers), H) clean logit and attention from i
    to j (`logit_clean`, `attn_clean`), the same with each route's key (`logit_<route>`, `attn_<route>`), and
    `visible` (1 where key j is in the layer's window)."""
    cfg = model.config
    clean, corrupt, m = resampled_pairs(cfg.vocab_size, cfg.bos_id, L, batch, seed)
    clean, corrupt = _as_batch(model, clean), _as_batch(model, corrupt)
    rows, i, j = torch.arange(batch), 1 + L + m, m + 2
    keys = key_routes(model, clean, corrupt, j, layers, prev)
    q_of, scores_of = {}, {}

    def keep(x: Tensor, hook, layer: int, into: dict, query: bool) -> None:
        into[layer] = x[rows, i] if query else x[rows, :, i]  # rot_q (B, T, H, D); scores (B, H, T, T)

    hooks = [(f"blocks.{l}.attn.{point}", partial(keep, layer=l, into=into, query=point == "hook_rot_q"))
             for l in layers for point, into in (("hook_rot_q", q_of), ("hook_attn_scores", scores_of))]
    _run(model, clean, hooks, stop_after=f"blocks.{max(layers)}.attn.hook_pattern")
    scale = float(model.yarn.attn_scale)  # the explicit path's scores are q · k · scale
    out: dict[str, list[Tensor]] = {}
    for l in layers:
        row = scores_of[l].float()  # (B, H, T): the clean scores of query i, −inf where masked
        logit = row[rows, :, j]
        found = {"logit_clean": logit, "attn_clean": row.softmax(-1)[rows, :, j], "visible": torch.isfinite(logit).float()}
        for route, by_layer in keys.items():
            patched = (q_of[l].float() * by_layer[l].float()).sum(-1) * scale  # (B, H)
            row_r = row.clone()
            row_r[rows, :, j] = torch.where(torch.isfinite(logit), patched, logit)  # a masked key stays masked
            found[f"logit_{route}"], found[f"attn_{route}"] = patched, row_r.softmax(-1)[rows, :, j]
        for name, value in found.items():
            out.setdefault(name, []).append(value.cpu())
    return {name: torch.stack(v, dim=1) for name, v in out.items()}


# ---- knock-outs on the repeated-sequence task -------------------------------------------------------------


def _own_still_dims(moved: Tensor, hook, seen: dict, layer: int) -> Tensor:
    """For `keyshift` knocked out: each key keeps its own zero-frequency dims (rotary never turns them, so
    they are `hook_k`'s exactly) instead of the previous key's."""
    k = seen.pop(layer)
    B, T, H, D = k.shape
    return k.view(B, T, H, 2, 2, D // 4)[:, 1:, :, :, 1].reshape(B, T - 1, H, D // 2).to(moved.dtype)


def term_knockout_hooks(model: GPT) -> list:
    """Forward hooks that remove the arm's previous-token mixing: the smear term (λ = 0, every arm whose term
    is λ · gate · h[i−1]; canon's whole term), the key shift (each key keeps its own dims: the baseline's
    key) or the key smear (its term zeroed, s = 0). [] for an arm without any (the baseline)."""
    spec = model.arm_spec
    if spec.coefficient:
        return knockout.smear_knockout_hooks(model, "zero")
    if spec.mix is not None:
        return [("hook_smear_out", lambda term, hook: torch.zeros_like(term))]
    hooks: list = []
    seen: dict[int, Tensor] = {}
    for layer in model.config.key_mix_layers():
        if key_mix(model, layer) == "shift":
            hooks += [(f"blocks.{layer}.attn.hook_k", lambda k, hook, layer=layer: seen.__setitem__(layer, k)),
                      (f"blocks.{layer}.attn.hook_key_shift", partial(_own_still_dims, seen=seen, layer=layer))]
        else:
            hooks.append((f"blocks.{layer}.attn.hook_key_smear", lambda term, hook: torch.zeros_like(term)))
    return hooks


def has_mixing(model: GPT) -> bool:
    """Whether the arm mixes the previous token in anywhere (a smear-like term or a key arm)."""
    return model.arm_spec.mix is not None or model.arm_spec.key_mix is not None


def _text_batches(model: GPT, batches: Sequence[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    if not batches:
        raise AnalysisError("the induction circuit needs at least one batch of text (inputs, targets)")
    return [(_as_batch(model, x), _as_batch(model, y)) for x, y in batches]


def best_induction_head(repeat: probes.RepeatResult) -> tuple[int, int]:
    """The (layer, head) with the highest induction score, averaged over the repeat lengths."""
    mean = repeat.induction.double().mean(0)
    if torch.isnan(mean).all():
        raise AnalysisError("no attention head to score for induction")
    flat = int(torch.nan_to_num(mean, nan=-math.inf).flatten().argmax())
    return flat // mean.size(1), flat % mean.size(1)


def induction_knockouts(model: GPT, text_batches: Sequence[tuple[Tensor, Tensor]], prev_scores: Tensor,
                        lengths: Sequence[int] = LENGTHS, batch: int = BATCH, seed: int = 0,
                        repeat: probes.RepeatResult | None = None) -> pd.DataFrame:
    """Tidy rows (condition, metric, value): the induction task under knock-outs.

    Conditions (CONDITIONS): `clean`; `prev_heads`: every previous-token head (`prev_scores` ≥ PREV_THRESHOLD,
    on text) in a layer before the best induction head's, mean-ablated (`probes.ablation_hooks`, the heads'
    means over `text_batches`); `smear`: the arm's previous-token mixing removed (`term_knockout_hooks`: the
    smear term, the key shift or the key smear; nothing to remove in the baseline, whose row then equals
    clean); `both`. The best induction head is the clean model's, by its score averaged over `lengths`.

    Metrics per condition: `induction` (the best head's score, mean over lengths, `probes.repeat_probe` on
    `batch` rows a length), `copy_loss_first` / `copy_loss_second` (`metrics.repeat_losses`, mean over
    lengths), `text_loss` (mean next-token loss on `text_batches`), and against clean `induction_drop`
    (clean − this), `copy_cost` (this − clean, second copy) and `text_cost`. Claim (a) is `PRIMARY`.
    Clean also has `best_layer`, `best_head`, `best_is_induction` (1 when its score reaches
    INDUCTION_THRESHOLD), `n_prev_heads` and `has_mixing` (1 when the arm has a term to knock out)."""
    prev_scores = _check_scores(model, prev_scores, "previous-token")
    batches = _text_batches(model, text_batches)
    with evaluating(model):
        clean_text, means = _clean_loss_and_head_means(model, batches)  # the loss and the heads' means, one pass
        repeat = probes.repeat_probe(model, lengths, batch, seed) if repeat is None else repeat
        best = best_induction_head(repeat)
        prev = [(l, h) for l, h in _heads_at_least(prev_scores, PREV_THRESHOLD) if l < best[0]]
        head_hooks = probes.ablation_hooks(model, prev, "mean", means)
        term_hooks = term_knockout_hooks(model)
        hooks = {"clean": [], "prev_heads": head_hooks, "smear": term_hooks, "both": head_hooks + term_hooks}
        measured = {}
        for condition, fwd in hooks.items():
            rep = repeat if not fwd else probes.repeat_probe(model, lengths, batch, seed, fwd)
            measured[condition] = dict(
                induction=float(rep.induction[:, best[0], best[1]].double().mean()),
                copy_loss_first=float(rep.loss_first.double().mean()),
                copy_loss_second=float(rep.loss_second.double().mean()),
                text_loss=clean_text if not fwd else _loss(model, batches, fwd))
    base = measured["clean"]
    score = float(repeat.induction[:, best[0], best[1]].double().mean())
    rows = [dict(condition="clean", metric=m, value=float(v)) for m, v in (
        ("best_layer", best[0]), ("best_head", best[1]), ("best_is_induction", score >= INDUCTION_THRESHOLD),
        ("n_prev_heads", len(prev)), ("has_mixing", has_mixing(model)))]
    for condition, got in measured.items():
        got = dict(got, induction_drop=base["induction"] - got["induction"],
                   copy_cost=got["copy_loss_second"] - base["copy_loss_second"],
                   text_cost=got["text_loss"] - base["text_loss"])
        rows += [dict(condition=condition, metric=m, value=v) for m, v in got.items()]
    return pd.DataFrame(rows, columns=KNOCKOUT_COLUMNS)


# ---- what each head does ----------------------------------------------------------------------------------


def _check_heads(model: GPT, heads: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    cfg = model.config
    if heads is None:
        return [(l, h) for l in cfg.attn_layers() for h in range(cfg.n_heads)]
    out = []
    for pair in heads:
        try:
            l, h = (int(x) for x in pair)
        except (TypeError, ValueError):
            raise AnalysisError(f"head {pair!r}: expected a (layer, head) pair of integers") from None
        if l not in cfg.attn_layers() or not 0 <= h < cfg.n_heads:
            raise AnalysisError(f"head ({l}, {h}) is not an attention head of this model (attention layers "
                                f"{list(cfg.attn_layers())}, {cfg.n_heads} heads each)")
        out.append((l, h))
    return list(dict.fromkeys(out))


def offset_attention(model: GPT, batches: Sequence[Tensor]) -> dict[str, Tensor]:
    """key → (n_layers, n_heads) mean attention of a query i on itself (`self`), i−1 (`prev`), i−2 (`prev2`),
    its document's BOS (`bos`) and every other key (`further`), over the queries at document position ≥ 3
    (so the four named keys are distinct) of the token batches; the five add up to 1. NaN rows for layers
    without attention."""
    cfg = model.config
    sums = {k: torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64) for k in OFFSET_KEYS}
    n = 0
    for tokens in batches:
        tokens = _as_batch(model, tokens)
        docs = M.document_ids(tokens, model.config.bos_id)
        starts, counted = M.document_starts(docs), (M.document_positions(docs) >= 3)

        def reduce(pattern: Tensor, hook, layer: int) -> None:
            p = pattern.double()  # (B, H, T, T)
            diag = [F.pad(p.diagonal(offset=-d, dim1=-2, dim2=-1), (d, 0)) for d in range(3)]  # (B, H, T): key i − d
            bos = p.gather(-1, starts[:, None, :, None].expand(-1, p.size(1), -1, 1))[..., 0]
            mass = dict(zip(("self", "prev", "prev2", "bos"), (*diag, bos)))
            mass["further"] = p.sum(-1) - sum(mass.values())  # a row sums to 1 where it has a key
            for key, v in mass.items():
                sums[key][layer] += (v * counted[:, None]).sum(dim=(0, 2)).cpu()

        with evaluating(model):
            probes.run_attention(model, tokens, [(f"blocks.{l}.attn.hook_pattern", partial(reduce, layer=l))
                                                 for l in cfg.attn_layers()])
        n += int(counted.sum())
    if n == 0:
        raise AnalysisError("attention by offset: no query at document position 3 or later in the text")
    out = {k: (v / n).float() for k, v in sums.items()}
    for v in out.values():
        v[[l for l in range(cfg.n_layers) if l not in cfg.attn_layers()]] = math.nan
    return out


def _copy_loss(model: GPT, tokens: list[Tensor], fwd_hooks: list) -> float:
    """Second-copy loss (`metrics.repeat_losses`), averaged over the BOS + R + R batches `tokens`."""
    total = 0.0
    for x in tokens:
        logits = model.run_with_hooks(x, fwd_hooks=fwd_hooks).float()
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        total += float(M.repeat_losses(losses.view(x.size(0), -1).cpu(), (x.size(1) - 1) // 2)[1])
    return total / len(tokens)


def head_roles(model: GPT, text_batches: Sequence[tuple[Tensor, Tensor]],
               heads: Sequence[tuple[int, int]] | None = None, lengths: Sequence[int] = LENGTHS,
               batch: int = BATCH, seed: int = 0, repeat: probes.RepeatResult | None = None) -> pd.DataFrame:
    """What each head of `heads` ((layer, head) pairs; None: every attention head) does: tidy rows (layer,
    head, metric, value) with `attn_<key>` for the keys of `offset_attention` on the inputs of `text_batches`,
    `induction` and `duplicate_token` (TransformerLens's definitions, `metrics.induction_score` /
    `duplicate_token_score`, mean over `lengths`), and what mean-ablating the head alone costs:
    `ablation_text` (loss on `text_batches`) and `ablation_copy` (second-copy loss, mean over lengths).

    For "what the freed heads do", pass the baseline's previous-token heads of the same seed, or write every
    head and join afterwards (`analysis.stats.mechanism_stats.freed_head_roles`)."""
    heads = _check_heads(model, heads)
    batches = _text_batches(model, text_batches)
    cfg = model.config
    with evaluating(model):
        clean_text, means = _clean_loss_and_head_means(model, batches)
        repeat = probes.repeat_probe(model, lengths, batch, seed) if repeat is None else repeat
        offsets = offset_attention(model, [x for x, _ in batches])
        rep_tokens = [_as_batch(model, probes.repeated_tokens(cfg.vocab_size, cfg.bos_id, L, batch, seed))
                      for L in repeat.lengths]
        clean_copy = _copy_loss(model, rep_tokens, [])
        rows = []
        for l, h in heads:
            ablate = probes.ablation_hooks(model, [(l, h)], "mean", means)
            values = {f"attn_{k}": float(offsets[k][l, h]) for k in OFFSET_KEYS}
            values |= dict(induction=float(repeat.induction[:, l, h].double().mean()),
                           duplicate_token=float(repeat.duplicate_token[:, l, h].double().mean()),
                           ablation_text=_loss(model, batches, ablate) - clean_text,
                           ablation_copy=_copy_loss(model, rep_tokens, ablate) - clean_copy)
            rows += [dict(layer=l, head=h, metric=m, value=v) for m, v in values.items()]
    return pd.DataFrame(rows, columns=ROLE_COLUMNS)


# ---- all three, sharing their pieces ------------------------------------------------------------------------


def circuit_tables(model: GPT, text_batches: Sequence[tuple[Tensor, Tensor]], prev_scores: Tensor,
                   names: Sequence[str] = TABLES, lengths: Sequence[int] = LENGTHS, batch: int = BATCH,
                   seed: int = 0) -> dict[str, pd.DataFrame]:
    """The tables of `names` (TABLES) for one model, the clean repeat probe computed once.
    Induction heads (for `key_shares`) are those whose induction score averaged over `lengths` is ≥
    INDUCTION_THRESHOLD, as the recorder's `induction_heldout`."""
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise AnalysisError(f"unknown induction-circuit table {unknown[0]!r}; choose from {', '.join(TABLES)}")
    batches = _text_batches(model, text_batches)
    repeat = probes.repeat_probe(model, lengths, batch, seed)
    out = {}
    if "key_shares" in names:
        out["key_shares"] = key_shares(model, prev_scores, repeat.induction.double().mean(0), lengths, batch, seed)
    if "induction_knockouts" in names:
        out["induction_knockouts"] = induction_knockouts(model, batches, prev_scores, lengths, batch, seed, repeat)
    if "head_roles" in names:
        out["head_roles"] = head_roles(model, batches, None, lengths, batch, seed, repeat)
    return out


__all__ = ["LENGTHS", "CONDITIONS", "PRIMARY", "OFFSET_KEYS", "TABLES", "SHARE_COLUMNS", "KNOCKOUT_COLUMNS",
           "ROLE_COLUMNS", "key_shares", "term_knockout_hooks", "has_mixing", "best_induction_head",
           "induction_knockouts", "offset_attention", "head_roles", "circuit_tables"]
