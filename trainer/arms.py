"""The registry of arms: named variants of the one model (trainer/model.py), chosen by `ModelConfig.arm`.

Every arm is the baseline plus at most one *mixing term* that carries the previous position into the
current one; the suffix `-noattn0` on any arm's name also removes layer 0's attention (see the end).
The term is exposed through hooks so analysis can read and patch it: `hook_smear_out` holds exactly
the term ADDED at its site (a previous-token term is zero at position 0; canon's has the k = 0 part
there too), and, for arms whose term is c_i · h[i−1], `hook_smear_gate` holds the (B, T−1, 1) gate
g_i with c_i = λ · g_i (`GPT.smear_lambda` is λ). e is the raw token embedding, x0 = norm(·) the first
residual stream.

| arm              | site (what hook_smear_out is added to) | term at position i ≥ 1                         | new parameters        |
|------------------|-----------------------------------------|------------------------------------------------|-----------------------|
| `baseline`       | —                                       | none                                           | —                     |
| `smear`          | e, before the norm (the record)         | λ · σ(w · e[i, :12]) · e[i−1]                  | smear_gate (1, 12), λ |
| `dose-<c>`       | e, before the norm                      | c · e[i−1], and 0 where token i is BOS         | none (c is fixed)     |
| `smear-postnorm` | norm(e): x = x0 = norm(e) + term        | λ · σ(w · norm(e)[i, :12]) · norm(e)[i−1]      | smear_gate (1, 12), λ |
| `smear-gateprev` | e, before the norm                      | λ · σ(w · e[i−1, :12]) · e[i−1]                | smear_gate (1, 12), λ |
| `smear-gateboth` | e, before the norm                      | λ · σ(w · [e[i, :12], e[i−1, :12]]) · e[i−1]   | smear_gate (1, 24), λ |
| `smear-xonly`    | e, for x only (x0 = norm(e), unsmeared) | as `smear`                                     | smear_gate (1, 12), λ |
| `smear-mtp`      | the final norm h, before the head       | λ · h[i−1]  (gate ≡ 1)                         | λ                     |
| `canon4`         | e, before the norm                      | Σ_{k=0..3} w_k ⊙ e[i−k], same document only    | canon_w (4, d_model)  |
| `smear-nogate`   | e, before the norm                      | λ · e[i−1], and 0 where token i is BOS         | λ                     |
| `smear-normgate` | e, before the norm                      | λ · σ(w · norm(e)[i, :12]) · e[i−1]            | smear_gate (1, 12), λ |
| `keyshift`       | the key, long-window layers (record #169) | k[j] on its zero-frequency dims ← k[j−1]'s (a replacement) | none (fixed) |
| `smeared-key`    | the key, every attention layer (Olsson) | k[j] += s_h · (k[j−1] − k[j]), one s per head      | key_smear (n_heads,) per layer |
| `smear-init-<λ0>`| e, before the norm                      | as `smear`, λ initialised at λ0                | smear_gate (1, 12), λ |
| `smear-hold-<c>-<k>` | e, before the norm                  | c · e[i−1] for steps < k, then as `smear`      | smear_gate (1, 12), λ |
| `dose-<c>-anneal-<k>` | e, before the norm                 | c · (1 − step/k) · e[i−1] for step < k, then 0; 0 at a BOS | none      |
| `smeared-key-init-<s0>` | the key, every attention layer    | as `smeared-key`, s initialised at s0 (Olsson's σ(0): 0.5) | key_smear (n_heads,) per layer |
| `<arm>-noattn0`  | as `<arm>`                              | as `<arm>`; layer 0 has no attention (record #131) | `<arm>`'s, less layer 0's qkvo_w, attn_gate |

Notes, and what was decided where the sources leave room:
- `smear` is the 2025-09-18 record, bit for bit; like the record it crosses a BOS (the record trains on
  one flat stream). The author's variants (`smear-*`, seed thread of the record's PR) keep that.
- `dose-<c>`: c any finite float (`dose-0.8`, `dose-1e-1`); not learned, no gate. hook_smear_gate holds
  the BOS mask (1 where token i is not BOS, else 0), so c_i = c · g_i as for the gated arms.
- `smear-postnorm`: the whole smear moved after the norm: the gate reads the normed current token and
  the normed previous token is added; the sum is not normed again (x = x0 = that sum).
- `smear-xonly`: the record sets `x = x0 = norm(smeared e)`; every block then mixes `λ_x·x + λ_x0·x0`.
  "Only to x instead of x0" is taken as: the residual stream starts from norm(smeared e) while x0, the
  embedding every block mixes back in, is norm(e) without the smear.
- `smear-mtp` (modded-nanogpt PR #151, medium track): on the baseline (no embedding smear), after the
  final norm h[1:] += λ·h[:-1] before the head; no gate (hook_smear_gate holds ones), crosses a BOS.
- `canon4` (Allen-Zhu, Physics of LMs 4.1): a causal depthwise convolution of kernel 4 with a residual,
  over the raw embedding; offset k's weights are `canon_w[k]` (k = 0 is the token itself). Unlike the
  smear it does not reach across a BOS: a document sees nothing of the one before (as in attention).
- λ (every learned-λ arm) is the scalars entry the record uses for the smear, `scalars[5 · n_layers]`,
  zero-initialised (but in `smear-init-<λ0>` and `smear-hold-<c>-<k>`); `TrainConfig.smear_lr_mult`
  (× 0.1, × 2 in the author's tries) scales its Adam step.
  Arms have the same scalars vector (but that λ entry), so every parameter two arms have in common is
  bit-for-bit equal at step 0 for one seed. `smear_gate` goes to Muon (the record's choice); `canon_w`, one vector per
  offset, to Adam with the scalars' learning rate. Every arm but `dose-<c>`, `dose-<c>-anneal-<k>`,
  `smear-init-<λ0>`, `smear-hold-<c>-<k>` and `keyshift` starts as the baseline (λ = 0, canon_w = 0,
  key_smear = 0), so its step-0 forward equals the baseline's (`ArmSpec.starts_as_baseline`).

Key arms: the previous position reaches the *key* of an attention layer, not the embedding (no
`hook_smear_*`, no λ: `coefficient` is False). They act on the rotated key k (after QK-norm and rotary,
before `attn.hook_rot_k`, which holds the key the scores use), per head, crossing a BOS as the record's
flat stream does; position 0 keeps its own key. Their hooks exist only on the layers they change.
- `keyshift` (modded-nanogpt record #169, 2025-12-14, "partial key offset ... to enable one-layer
  induction"), as we took it from that record's code: after rotary, on the layers with the long window,
  `k[:, 1:, :, D/4:D/2] = k[:, :-1, :, D/4:D/2]` and the same for `3D/4:D`, D = d_head. Those are the
  head dimensions whose rotary frequency is zero in the record's layout then (and ours): pairs
  (j, j + D/2) rotate for j < D/4, so D/4…D/2 and 3D/4…D never rotate. The long-window layers are, in
  the record, the two with `ws_long` (its layers 3 and 10 of 11, after #131 removed layer 0's attention;
  the last layer is one of them); here `ModelConfig.long_window_layers` and the last layer, among the
  layers with attention: cpu-small/cpu-induction 0, 3, 5; speedrun-124m 0, 4, 11 (our layer 0 still
  attends, so it is shifted too; in `keyshift-noattn0` it does not: 3, 5 and 4, 11, as the record's
  two). A replacement, not a learned mix: the arm does not start as the baseline. `attn.hook_key_shift` (B, T−1, H, D/2) holds the moved values, the zero-frequency dims of
  keys 0…T−2 (first D/4…D/2, then 3D/4…D), which become those dims of keys 1…T−1.
- `smeared-key` (Olsson et al. 2022, the "smeared key" models): Olsson's k_j ← σ(α)·k_j + (1−σ(α))·k_{j−1}
  per head, on every attention layer, with s_h = 1 − σ(α_h) learned directly
  (`blocks.{l}.attn.key_smear`, zero-initialised): k_j ← k_j + s_h·(k_{j−1} − k_j). At s = 0 the arm is
  the baseline bit for bit (σ(α) = 1 needs α = +∞, and a saturated sigmoid has no gradient); s is not
  clipped to [0, 1]. `attn.hook_key_smear` (B, T, H, D) holds the term added (0 at position 0). s goes to
  Adam with the scalars' learning rate, as canon_w does.
- `smeared-key-init-<s0>`: `smeared-key` with every s starting at s0 (any finite float), not 0. Olsson's
  learned σ(α) starting from α = 0 mixes half of k_{j−1} in from the start: `smeared-key-init-0.5`. Added
  after the one-layer test (figures/induction/PLAN.md) found zero-initialised s stay near 0 where no
  earlier layer gives a gradient toward them. Not the baseline at step 0 (its keys are mixed).

Arms for why the learned gate stays low. Step-dependent arms read the model's step
(`GPT.train_step`, a buffer the training loop sets with `GPT.set_step` after each optimiser step, so
a checkpoint holds the schedule it was saved at): `step` is the number of optimiser steps taken before
the forward.
- `smear-nogate`: the gate removed, λ alone on the embedding. Like a dose it skips a BOS, so at λ = c
  it is exactly `dose-<c>`: the learned counterpart of the fixed dose (hook_smear_gate holds the BOS mask).
- `smear-normgate`: the gate reads the first 12 channels of norm(e) (RMS over all d channels) instead
  of the raw e; the smear itself is still added to the raw e before the norm, and crosses a BOS.
- `smear-init-<λ0>`: the record's smear with λ initialised at λ0 (λ0 any finite float; with the
  zero-initialised gate's 0.5 the start coefficient is λ0/2: `smear-init-1.6` starts at 0.8). Every other
  initial weight equals the other arms'; only λ differs, so its step-0 forward is not the baseline's.
- `smear-hold-<c>-<k>`: for steps < k the coefficient is held at c everywhere the smear applies (crossing
  a BOS, as the smear): λ starts at 2c and the gate is replaced by its zero-init value 0.5, neither
  receiving a gradient (so neither moves: Adam and Muon make a zero step on a zero gradient). From step
  k on it is the record's smear, λ and the gate learned from λ = 2c, w = 0: continuous at the release.
  hook_smear_gate holds 0.5 during the hold; `smear_lambda` is λ. k a positive integer.
- `dose-<c>-anneal-<k>`: `dose-<c>` with c scaled by (1 − step/k) for step < k and by 0 after, when
  the forward is the baseline's (the term is exactly 0; e + 0 = e). `smear_lambda` is c · max(0, 1 − step/k).

Layer 0 without attention: `<arm>-noattn0`, any arm above (`baseline-noattn0`, `smear-noattn0`,
`dose-0.8-noattn0`, ...) with layer 0's attention replaced by `NoAttention` (no parameters, its hooks
answer as an attention that attends nowhere), for the 2×2 {smear or not} × {layer-0 attention or not}.
- What record #131 changed (modded-nanogpt commit 2fe38e24, 2025-09-21, records/092125_DropAttn,
  "Drop first attn layer", on top of #130's smear). In train_gpt.py's `Block.__init__` the attention is
  built `if layer_idx not in [0, 7]` (was `!= 7`) and the MLP, unchanged, `if layer_idx != 0`: the
  record's layer 0 had had no MLP since PR #120 (its README: "PR #120 dropped the first MLP"), so layer 0
  became an empty block. Its forward then starts at block 1 (`for i in range(1, len(self.blocks))`), so
  block 0's λ-mix is not run, and the U-net skips stop at layer 10 (`if i >= n and i<11`): the last
  layer loses the skip whose source was layer 0. Value embeddings: `ve = [None, ve[1], ve[2]] + ... +
  [ve[0], ve[1], ve[2]]`, layer 0's use of ve[0] dropped and ve[0] kept for layer 9; nothing moved.
  Windows: `bm_sizes = [None, short, short, short, long, short, short, None, ..., long]`, layer 0's long
  window dropped, given to no other layer. The same commit also changed the schedule (1645 steps →
  1640 + 40 at the final lr and window) and the final validation (every long window 20 blocks): not
  part of the arm.
- What we made of it. Layer 0 loses its attention and keeps what the preset gives it otherwise: every
  preset here, like the record, gives layer 0 no MLP (`no_mlp_layers=(0,)`), so block 0 becomes empty
  exactly as the record's; the record's layer 0 had no MLP to give back. Windows, value embeddings and
  the other blocks are the preset's. Our block 0 still runs its λ-mix, and its output still feeds the
  last layer's U-net skip: an empty block outputs (λ_x + λ_x0)·x0, so both add a learned multiple of x0
  where the next block mixes in x0 anyway: the record's function class, with two redundant scalars.
  Keeping them keeps every other block as in the preset (`<arm>-noattn0` is `<arm>` with layer 0's
  attention output zeroed, exactly) and the scalars' layout; the one difference at step 0 is the
  last layer's skip, σ(−1.5)·x0 ≈ 0.18·x0 here, nothing in the record.
- Parameters: `<arm>`'s less `blocks.0.attn.qkvo_w` and `blocks.0.attn.attn_gate.weight` (cpu-small:
  65,560 fewer). Each parameter is drawn from its own (seed, name) generator, so the others are `<arm>`'s
  bit for bit. `<arm>-noattn0` starts as `baseline-noattn0` where `<arm>` starts as the baseline; and,
  all output projections being zero at init, `baseline-noattn0`'s step-0 forward is the baseline's.
- A preset (or `--set no_attn_layers=...`) whose layer 0 already has no attention refuses the suffix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from trainer.errors import ConfigError

DOSE_PREFIX = "dose-"
NOATTN0_SUFFIX = "-noattn0"  # any arm + this: layer 0 without attention (record #131)


@dataclass(frozen=True)
class ArmSpec:
    name: str
    mix: str | None = None  # None, "gate" (learned λ · sigmoid gate), "dose" (fixed c), "lambda" (learned λ), "canon"
    site: str = "embed"  # "embed" (raw e), "postnorm" (norm(e)), "final" (the final norm, before the head)
    gate_from: str = "current"  # mix == "gate": what the gate reads: "current", "prev" or "both" tokens
    into_x0: bool = True  # the mixed embedding is also x0 (False: only the residual x starts from it)
    dose: float | None = None
    canon_kernel: int = 4
    skip_bos: bool = False  # mix == "lambda": no term where token i is BOS (a dose always skips a BOS)
    gate_norm: bool = False  # mix == "gate": the gate reads norm(h), not h
    lambda_init: float = 0.0  # λ's initial value (learned-λ arms)
    hold_steps: int = 0  # > 0: coefficient held at λ_init · 0.5, nothing learned in it, for this many steps
    anneal_steps: int = 0  # > 0 (dose): c · max(0, 1 − step/anneal_steps)
    key_mix: str | None = None  # None, "shift" (record #169's key offset), "smear" (Olsson's smeared key)
    key_smear_init: float = 0.0  # smeared-key's s at step 0 (every head, every layer)
    no_attn0: bool = False  # suffix -noattn0: layer 0 has no attention (record #131), on top of the preset's

    @property
    def base(self) -> str:
        """The arm's name without the -noattn0 suffix: the arm it is on the preset's layer 0."""
        return self.name.removesuffix(NOATTN0_SUFFIX) if self.no_attn0 else self.name

    @property
    def coefficient(self) -> bool:
        """The term is c_i · h[i−1] with c_i = λ · gate_i, read through hook_smear_gate and smear_lambda."""
        return self.mix in ("gate", "dose", "lambda")

    @property
    def fixed_dose(self) -> float | None:
        """c of a fixed dose `dose-<c>` (constant over training), else None."""
        return self.dose if self.mix == "dose" and not self.anneal_steps else None

    @property
    def learned_lambda(self) -> bool:
        return self.mix in ("gate", "lambda")

    @property
    def gate_reads(self) -> int:
        """Tokens the smear gate reads GATE_DIM channels of: `smear_gate` has GATE_DIM × this inputs (0: none)."""
        return 0 if self.mix != "gate" else (2 if self.gate_from == "both" else 1)

    @property
    def vocab_gate(self) -> bool:
        """The gate is a function of the current token id alone: σ(w · E[id, :12])."""
        return self.mix == "gate" and self.gate_from == "current" and self.site == "embed" and not self.gate_norm

    @property
    def bos_mask(self) -> bool:
        """The term is 0 where token i is BOS (a new document starts clean)."""
        return self.mix == "dose" or self.skip_bos

    @property
    def starts_as_baseline(self) -> bool:
        """At its own parameters' initial values the arm is the baseline's function (`baseline-noattn0`'s for
        a -noattn0 arm), whatever the shared weights: so its step-0 forward is that baseline's for the same
        seed (every learned term starts at 0).
        (`keyshift` changes attention, which at init writes nothing (W_O = 0): its step-0 forward is the
        baseline's too, but not its gradients.)"""
        if self.mix == "dose" or self.key_mix == "shift":
            return False
        return not self.lambda_init and not self.key_smear_init

    @property
    def scheduled(self) -> bool:
        """The forward depends on the training step (`GPT.train_step`)."""
        return bool(self.hold_steps or self.anneal_steps)


ARMS: dict[str, ArmSpec] = {a.name: a for a in (
    ArmSpec("baseline"),
    ArmSpec("smear", mix="gate"),
    ArmSpec("smear-postnorm", mix="gate", site="postnorm"),
    ArmSpec("smear-gateprev", mix="gate", gate_from="prev"),
    ArmSpec("smear-gateboth", mix="gate", gate_from="both"),
    ArmSpec("smear-xonly", mix="gate", into_x0=False),
    ArmSpec("smear-mtp", mix="lambda", site="final"),
    ArmSpec("canon4", mix="canon"),
    ArmSpec("smear-nogate", mix="lambda", skip_bos=True),
    ArmSpec("smear-normgate", mix="gate", gate_norm=True),
    ArmSpec("keyshift", key_mix="shift"),
    ArmSpec("smeared-key", key_mix="smear"),
)}
# parametrised names, parsed by `arm_spec` (rows of the table above, after the registered arms but `dose-<c>`)
INIT_PREFIX, HOLD_PREFIX, ANNEAL_INFIX, KEY_INIT_PREFIX = "smear-init-", "smear-hold-", "-anneal-", "smeared-key-init-"
PATTERNS = ("dose-<c>", "smear-init-<λ0>", "smear-hold-<c>-<k>", "dose-<c>-anneal-<k>", "smeared-key-init-<s0>",
            f"<arm>{NOATTN0_SUFFIX}")


def _number(text: str, name: str, form: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise ConfigError(f"arm {name!r}: expected {form} with finite numbers, e.g. {_EXAMPLES[form]}")
    return x


def _steps(text: str, name: str, form: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"arm {name!r}: expected {form} with k a positive whole number of steps, e.g. {_EXAMPLES[form]}")
    return int(text)


_EXAMPLES = {"dose-<c>": "dose-0.8", "smear-init-<λ0>": "smear-init-1.6", "smear-hold-<c>-<k>": "smear-hold-0.8-200",
             "dose-<c>-anneal-<k>": "dose-0.8-anneal-400", "smeared-key-init-<s0>": "smeared-key-init-0.5"}


def arm_spec(name: str) -> ArmSpec:
    """The registered arm `name`, a parametrised one (PATTERNS), either with the suffix -noattn0; a
    clear one-line ConfigError otherwise."""
    if not isinstance(name, str):
        raise ConfigError(f"arm {name!r}: expected a name")
    if name.endswith(NOATTN0_SUFFIX):
        base = name.removesuffix(NOATTN0_SUFFIX)
        if not base:
            raise ConfigError(f"arm {name!r}: {NOATTN0_SUFFIX} is a suffix to an arm's name, e.g. baseline{NOATTN0_SUFFIX}")
        if base.endswith(NOATTN0_SUFFIX):
            raise ConfigError(f"arm {name!r}: {NOATTN0_SUFFIX} given twice")
        return dataclasses.replace(_parse(base, name), name=name, no_attn0=True)
    return _parse(name, name)


def _parse(base: str, name: str) -> ArmSpec:
    """The arm `base` (the whole name but any -noattn0 suffix); errors name the whole `name`."""
    if base in ARMS:
        return ARMS[base]
    if re.fullmatch(r"noattn\d*", base):  # the suffix alone
        raise ConfigError(f"arm {name!r}: {NOATTN0_SUFFIX} is a suffix to an arm's name, e.g. baseline{NOATTN0_SUFFIX}")
    if re.search(r"-noattn", base):  # baseline-noattn1, smear-noattn
        raise ConfigError(f"arm {name!r}: only layer 0's attention is removed by name, as <arm>{NOATTN0_SUFFIX} "
                          f"(e.g. smear{NOATTN0_SUFFIX}); other layers: --set no_attn_layers=[...]")
    if base.startswith(DOSE_PREFIX) and ANNEAL_INFIX in base:
        c, _, k = base[len(DOSE_PREFIX):].rpartition(ANNEAL_INFIX)
        form = "dose-<c>-anneal-<k>"
        return ArmSpec(base, mix="dose", dose=_number(c, name, form), anneal_steps=_steps(k, name, form))
    if base.startswith(DOSE_PREFIX):
        try:
            c = float(base[len(DOSE_PREFIX):])
        except ValueError:
            c = math.nan
        if not math.isfinite(c):
            raise ConfigError(f"arm {name!r}: a dose is dose-<c> with c a finite number, e.g. dose-0.8")
        return ArmSpec(base, mix="dose", dose=c)
    if base.startswith(INIT_PREFIX):
        return ArmSpec(base, mix="gate", lambda_init=_number(base[len(INIT_PREFIX):], name, "smear-init-<λ0>"))
    if base.startswith(KEY_INIT_PREFIX):
        s0 = _number(base[len(KEY_INIT_PREFIX):], name, "smeared-key-init-<s0>")
        return ArmSpec(base, key_mix="smear", key_smear_init=s0)
    if base.startswith(HOLD_PREFIX):
        form = "smear-hold-<c>-<k>"
        c, _, k = base[len(HOLD_PREFIX):].rpartition("-")
        c, k = _number(c, name, form), _steps(k, name, form)
        return ArmSpec(base, mix="gate", lambda_init=2 * c, hold_steps=k)
    raise ConfigError(f"unknown arm {name!r}; choose one of: {', '.join(ARMS)}, or {', '.join(PATTERNS)} "
                      f"(e.g. dose-0.8, smear{NOATTN0_SUFFIX})")


__all__ = ["ArmSpec", "ARMS", "PATTERNS", "arm_spec", "DOSE_PREFIX", "NOATTN0_SUFFIX"]
