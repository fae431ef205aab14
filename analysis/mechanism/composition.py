"""Do previous-token heads (or the smear) feed induction heads? K-composition by resampling, and when
each kind of head forms.

On BOS + R + R (|R| = period, random tokens), an induction head at query i = 1 + period + m (token
R[m], second copy) attends to key j = m + 2 (R[m+1], first copy): the key must carry "my previous
token is R[m]". That can come from the smear term at j (c_j · e[j−1], in x0), from previous-token
heads writing at j, or, in the key arms, from key j−1 mixed into key j. We resample token j−1 (first
copy) in a corrupted copy of the sequence, then recompute only the induction head's *key at j* from a
run in which one route alone sees the corrupted token, and read the head's attention from i to j with
that key:

- `attn_key_smear`: the smear term at j (`hook_smear_out`) is the corrupted run's (arms with a term
  before the first layer);
- `attn_key_prev_heads`: the previous-token heads' outputs (`hook_z`) at j come from the corrupted run;
- `attn_key_key_shift` (`keyshift`): what `attn.hook_key_shift` moves into key j (key j−1's zero-frequency
  dims) is the corrupted run's, at the induction head's layer;
- `attn_key_key_smear` (`smeared-key`): the term s·(k[j−1] − k[j]) at j (`attn.hook_key_smear`) takes
  k[j−1] from the corrupted run (k[j] stays clean), at the induction head's layer;
- `attn_key_all`: the whole key at j comes from the corrupted run (every route).

Everything else (the query, the other keys) stays clean, so the drop from `attn_clean` is what
flows through that route into the key: K-composition. Previous-token heads are those scoring
≥ PREV_THRESHOLD on the data; induction heads ≥ INDUCTION_THRESHOLD on repeated random tokens.
"""

from __future__ import annotations

import math
from functools import partial

import pandas as pd
import torch
from torch import Tensor

from analysis.measures.probes import _as_batch, evaluating, induction_period, repeat_metrics, repeated_tokens
from trainer.errors import AnalysisError
from trainer.model import GPT

PREV_THRESHOLD = 0.4
INDUCTION_THRESHOLD = 0.2
BATCH = 16
COLUMNS = ["layer", "head", "metric", "value"]
ROUTES = ("smear", "prev_heads", "key_shift", "key_smear", "all")  # all routes; `routes_of`: one model's


def resampled_pairs(vocab_size: int, bos_id: int, period: int, batch: int = BATCH, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(clean, corrupt, m): BOS + R + R rows, the same rows with token m+1 (R[m], first copy)
    replaced by another random non-BOS token, and each row's m (0 … period−2, spread over the rows)."""
    if period < 2:
        raise AnalysisError(f"composition: period {period} leaves no query with a next token in the first copy")
    clean = repeated_tokens(vocab_size, bos_id, period, batch, seed)
    m = torch.arange(batch) % (period - 1)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = torch.arange(batch)
    old = clean[rows, m + 1]
    new = (old + 1 + torch.randint(0, vocab_size - 2, (batch,), generator=gen)) % vocab_size  # never the old one
    new = torch.where(new == bos_id, (new + 1) % vocab_size, new)
    new = torch.where(new == old, (new + 1) % vocab_size, new)  # (only when bos_id was skipped onto it)
    corrupt = clean.clone()
    corrupt[rows, m + 1] = new
    return clean, corrupt, m


class _Stop(Exception):
    pass


def _run(model: GPT, tokens: Tensor, hooks: list, stop_after: str | None = None) -> None:
    if stop_after is not None:
        def stop(x, hook):
            raise _Stop
        hooks = [*hooks, (stop_after, stop)]
    try:
        model.run_with_hooks(tokens, fwd_hooks=hooks, attn_impl="explicit")
    except _Stop:
        pass


def key_routes(model: GPT, clean: Tensor, corrupt: Tensor, j: Tensor, layers: list[int],
               prev_heads: list[tuple[int, int]]) -> dict[str, dict[int, Tensor]]:
    """route → layer → (B, H, D) rotated key at position j (per row) of each layer in `layers`,
    computed with that route (see the module doc and `routes_of`) seeing the corrupted token j−1."""
    rows = torch.arange(clean.size(0))
    last = f"blocks.{max(layers)}.attn.hook_rot_k"
    routes = routes_of(model)

    def keep_keys(into: dict, only: list[int] = layers) -> list:
        def store(k: Tensor, hook, layer: int) -> None:
            into[layer] = k[rows, j].clone()
        return [(f"blocks.{l}.attn.hook_rot_k", partial(store, layer=l)) for l in only]

    out: dict[str, dict[int, Tensor]] = {r: {} for r in routes}
    seen: dict = {}

    def keep(name, at: Tensor | None = j, layer: int | None = None):
        def hook(x: Tensor, hook) -> None:
            seen[name, layer] = x[rows, at].clone() if at is not None else x
        return hook

    prev_layers = sorted({l for l, _ in prev_heads})
    mixed = [l for l in layers if key_mix(model, l) is not None]
    corrupt_hooks = (keep_keys(out["all"]) + [(f"blocks.{l}.attn.hook_z", keep("z", layer=l)) for l in prev_layers]
                     + ([("hook_smear_out", keep("smear"))] if "smear" in routes else []))
    for l in mixed:  # what the corrupted run's key j−1 carries into key j
        if key_mix(model, l) == "shift":  # hook_key_shift[t] is what key t + 1 receives
            corrupt_hooks.append((f"blocks.{l}.attn.hook_key_shift", keep("shift", j - 1, l)))
        else:  # the unmixed key at j−1 is hook_rot_k − hook_key_smear there
            corrupt_hooks += [(f"blocks.{l}.attn.hook_key_smear", keep("term_prev", j - 1, l)),
                              (f"blocks.{l}.attn.hook_rot_k", keep("rot_prev", j - 1, l))]
    _run(model, corrupt, corrupt_hooks, stop_after=last)
    smeared = [l for l in mixed if key_mix(model, l) == "smear"]
    if smeared:  # the clean unmixed key at j−1, for the key smear's route
        _run(model, clean, [(f"blocks.{l}.attn.{point}", keep(f"clean_{name}", j - 1, l)) for l in smeared
                            for point, name in (("hook_key_smear", "term_prev"), ("hook_rot_k", "rot_prev"))],
             stop_after=f"blocks.{max(smeared)}.attn.hook_rot_k")

    if "smear" in routes:
        def smear_patch(term: Tensor, hook) -> Tensor:
            # hook_smear_out holds the term added at its site: at j, the corrupted run's term (its e[j−1], and a
            # gate that reads token j−1 where the arm's does); every other position keeps its clean term
            term = term.clone()
            term[rows, j] = seen["smear", None]
            return term

        _run(model, clean, keep_keys(out["smear"]) + [("hook_smear_out", smear_patch)], stop_after=last)

    def z_patch(z: Tensor, hook, layer: int) -> Tensor:
        z = z.clone()
        for l, h in prev_heads:
            if l == layer:
                z[rows, j, h] = seen["z", l][:, h]
        return z

    _run(model, clean, keep_keys(out["prev_heads"])
         + [(f"blocks.{l}.attn.hook_z", partial(z_patch, layer=l)) for l in prev_layers],
         stop_after=last)

    keyed = [r for r in routes if r in KEY_MIX_ROUTES.values()]  # a key arm has one
    if keyed:
        _key_mix_route(model, clean, j, layers, seen, keep_keys, out[keyed[0]])
    return out


# the key arm's mixing kind (trainer/arms.py) → the route through it
KEY_MIX_ROUTES = {"shift": "key_shift", "smear": "key_smear"}


def key_mix(model: GPT, layer: int) -> str | None:
    """How the key arm mixes key j−1 into key j at `layer` ("shift", "smear"), None where it does not."""
    return getattr(model.blocks[layer].attn, "key_mix", None)


def routes_of(model: GPT) -> tuple[str, ...]:
    """The routes `key_routes` measures on this model: the smear where the arm adds a term before the first
    layer (not Smear-MTP's, after the last), the previous-token heads, the key arm's mixing, and all."""
    spec = model.arm_spec
    smear = ("smear",) if spec.mix is not None and spec.site != "final" else ()
    keyed = (KEY_MIX_ROUTES[spec.key_mix],) if spec.key_mix is not None else ()
    return (*smear, "prev_heads", *keyed, "all")


def _key_mix_route(model: GPT, clean: Tensor, j: Tensor, layers: list[int], seen: dict, keep_keys,
                   into: dict[int, Tensor]) -> None:
    """The key at j of each layer in `layers` when only that layer's key mixing carries the corrupted key j−1
    (`seen` holds it from the corrupted run): one clean run per layer, stopped at its key, so a mix at an
    earlier induction layer does not reach a later one through that layer's heads. A layer the arm does not
    mix keeps its clean key."""
    rows = torch.arange(clean.size(0))
    for layer in layers:
        kind = key_mix(model, layer)
        hooks = keep_keys(into, [layer])
        if kind == "shift":
            def shift_patch(moved: Tensor, hook) -> Tensor:
                moved = moved.clone()
                moved[rows, j - 1] = seen["shift", layer]
                return moved

            hooks.append((f"blocks.{layer}.attn.hook_key_shift", shift_patch))
        elif kind == "smear":
            s = model.blocks[layer].attn.key_smear

            def smear_patch(term: Tensor, hook) -> Tensor:
                # term_j = s (k[j−1] − k[j]); this route swaps k[j−1] alone for the corrupted run's, k[j] stays clean
                # (the corrupted k[j] is the other routes' doing, scaled by −s)
                clean_prev = seen["clean_rot_prev", layer] - seen["clean_term_prev", layer]
                corrupt_prev = seen["rot_prev", layer] - seen["term_prev", layer]
                term = term.clone()
                term[rows, j] = term[rows, j] + s.to(term.dtype)[:, None] * (corrupt_prev - clean_prev)
                return term

            hooks.append((f"blocks.{layer}.attn.hook_key_smear", smear_patch))
        _run(model, clean, hooks, stop_after=f"blocks.{layer}.attn.hook_rot_k")


def attention_with_key(model: GPT, tokens: Tensor, layer: int, i: Tensor, j: Tensor, key: Tensor | None) -> Tensor:
    """(B, H) attention from query i to key j (per row) at `layer`, with the rotated key at j replaced by
    `key` (B, H, D) when given."""
    rows = torch.arange(tokens.size(0))
    seen = {}

    def patch(k: Tensor, hook) -> Tensor:
        k = k.clone()
        k[rows, j] = key
        return k

    def read(p: Tensor, hook) -> None:
        seen["p"] = p[rows, :, i, j]

    hooks = ([(f"blocks.{layer}.attn.hook_rot_k", patch)] if key is not None else []) + [
        (f"blocks.{layer}.attn.hook_pattern", read)]
    _run(model, tokens, hooks, stop_after=f"blocks.{layer}.hook_attn_out")
    return seen["p"]


def composition_table(model: GPT, prev_scores: Tensor, induction: Tensor | None = None, batch: int = BATCH,
                      seed: int = 0) -> pd.DataFrame:
    """Tidy rows (layer, head, metric, value) for each induction head: its induction score,
    n_prev_heads (the previous-token heads in earlier layers), attn_clean and attn_key_<route> for
    each route; plus one row (layer = head = −1) `n_induction_heads`, so a model without any is recorded."""
    with evaluating(model):
        period = induction_period(model)
        if induction is None:
            induction = repeat_metrics(model, ["induction"], period=period)["induction"]
        found = [(l, h) for l in range(induction.size(0)) for h in range(induction.size(1))
                 if not math.isnan(induction[l, h]) and induction[l, h] >= INDUCTION_THRESHOLD]
        rows = [dict(layer=-1, head=-1, metric="n_induction_heads", value=float(len(found)))]
        if not found or period < 2:
            return pd.DataFrame(rows, columns=COLUMNS)
        layers = sorted({l for l, _ in found})
        prev = [(l, h) for l in range(prev_scores.size(0)) for h in range(prev_scores.size(1))
                if not math.isnan(prev_scores[l, h]) and prev_scores[l, h] >= PREV_THRESHOLD and l < max(layers)]
        clean, corrupt, m = resampled_pairs(model.config.vocab_size, model.config.bos_id, period, batch, seed)
        clean, corrupt = _as_batch(model, clean), _as_batch(model, corrupt)
        i, j = 1 + period + m, m + 2
        keys = key_routes(model, clean, corrupt, j, layers, prev)
        for layer in layers:
            attn = {"clean": attention_with_key(model, clean, layer, i, j, None).mean(0)}
            for route, by_layer in keys.items():
                attn[f"key_{route}"] = attention_with_key(model, clean, layer, i, j, by_layer[layer]).mean(0)
            for l, h in found:
                if l != layer:
                    continue
                n_prev = sum(1 for pl, _ in prev if pl < layer)
                rows += [dict(layer=l, head=h, metric="induction", value=float(induction[l, h])),
                         dict(layer=l, head=h, metric="n_prev_heads", value=float(n_prev))]
                rows += [dict(layer=l, head=h, metric=f"attn_{name}", value=float(a[h])) for name, a in attn.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


# ---- when heads form, from tables over steps -------------------------------------------------------------

# kind → (metric, threshold). `induction_heldout` is the recorder's induction score over training (the mean over
# probes.INDUCTION_LENGTHS); `induction` is analyze's, on saved checkpoints (one length): each is read on its own.
FORMATION_KINDS = {"prev_token": ("prev_token", PREV_THRESHOLD), "induction": ("induction", INDUCTION_THRESHOLD),
                   "induction_heldout": ("induction_heldout", INDUCTION_THRESHOLD)}
RUN_KEYS = ["run", "preset", "arm", "seed"]
HEAD_FORMATION_COLUMNS = [*RUN_KEYS, "layer", "head", "metric", "threshold", "first_step", "stable_step", "n_steps"]


def head_formation_steps(heads: pd.DataFrame, metric: str = "induction_heldout",
                         threshold: float = INDUCTION_THRESHOLD) -> pd.DataFrame:
    """When each head becomes a head of a kind: per run and (layer, head), the first recorded step at which
    its `metric` is ≥ `threshold` (`first_step`), and the first recorded step from which it stays ≥ the
    threshold at every later recorded step (`stable_step`); NaN when it never does (a head that crosses
    and falls back below by the last step has a first_step and no stable_step). A step where the head has
    no value counts as below. `heads` is a tidy heads table over steps (the recorder's `record_heads`,
    analyze's `heads`; duplicates allowed). Columns: HEAD_FORMATION_COLUMNS; n_steps is the run's
    recorded steps of the metric. A pure function of the table."""
    need = set(RUN_KEYS) | {"step", "layer", "head", "metric", "value"}
    missing = need - set(heads.columns)
    if missing:
        raise AnalysisError(f"formation steps: the heads table lacks column(s) {', '.join(sorted(missing))}")
    rows = []
    df = heads[heads["metric"] == metric].drop_duplicates(["run", "step", "layer", "head"])
    for keys, g in df.groupby(RUN_KEYS, sort=True):
        wide = g.pivot_table(index="step", columns=["layer", "head"], values="value").sort_index()
        above = wide >= threshold
        stays = above.iloc[::-1].cummin().iloc[::-1]  # above at this step and every later one
        for (layer, head) in wide.columns:
            first, stable = above[(layer, head)], stays[(layer, head)]
            rows.append(dict(zip(RUN_KEYS, keys), layer=int(layer), head=int(head), metric=metric, threshold=threshold,
                             first_step=float(first.idxmax()) if first.any() else math.nan,
                             stable_step=float(stable.idxmax()) if stable.any() else math.nan, n_steps=len(wide)))
    return pd.DataFrame(rows, columns=HEAD_FORMATION_COLUMNS)


def formation_steps(heads: pd.DataFrame, kinds: dict[str, tuple[str, float]] = FORMATION_KINDS) -> pd.DataFrame:
    """For each run and kind of head: the first recorded step at which any head's metric reaches the
    threshold (`first_step`), and the first step from which some head stays at or above it at every
    later recorded step (`stable_step`); NaN when it never does: the earliest of `head_formation_steps`
    over the run's heads. `heads` is a tidy heads table over steps (analyze's `heads` and/or the
    recorder's `record_heads`, duplicates allowed).
    Columns: run, preset, arm, seed, kind, metric, threshold, first_step, stable_step, layer, head
    (the head that formed first, the lowest (layer, head) on a tie; −1 when none), n_steps (recorded steps
    of that metric)."""
    rows = []
    for kind, (metric, threshold) in kinds.items():
        per_head = head_formation_steps(heads, metric, threshold)
        for keys, g in per_head.groupby(RUN_KEYS, sort=True):
            formed = g.dropna(subset=["first_step"]).sort_values(["first_step", "layer", "head"])
            layer, head = (int(formed["layer"].iloc[0]), int(formed["head"].iloc[0])) if len(formed) else (-1, -1)
            rows.append(dict(zip(RUN_KEYS, keys), kind=kind, metric=metric, threshold=threshold,
                             first_step=float(g["first_step"].min()), stable_step=float(g["stable_step"].min()),
                             layer=layer, head=head, n_steps=int(g["n_steps"].iloc[0])))
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "kind", "metric", "threshold", "first_step",
                                       "stable_step", "layer", "head", "n_steps"])


__all__ = ["PREV_THRESHOLD", "INDUCTION_THRESHOLD", "ROUTES", "KEY_MIX_ROUTES", "resampled_pairs", "key_routes", "routes_of",
           "key_mix", "attention_with_key", "composition_table", "formation_steps", "head_formation_steps", "FORMATION_KINDS"]
