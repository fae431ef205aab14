"""Model and training configs, and the named presets.

`speedrun-124m` is the 2025-09-18 record's shapes and hyperparameters. The small presets keep
every component (value embeddings, U-net skips, skipped attention and MLP blocks, both gates,
sliding windows, YaRN) and scale what must scale: the attention scale with the head size (so the
QK-norm logit bound stays at the record's 12.8, see SPEC) and the window block with the sequence.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

from trainer.arms import ArmSpec, arm_spec
from trainer.errors import ConfigError
from trainer.repeats import HELD_OUT_LENGTHS, check_copy_data

GATE_DIM = 12  # both sparse gates read the first 12 channels of their input (record)
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch here


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 50257  # the tokenizer's; embeddings are padded to a multiple of 128
    n_layers: int = 12
    n_heads: int = 6
    d_head: int = 128
    d_model: int = 768
    mlp_ratio: int = 4
    arm: str = "smear"  # a registered arm (trainer/arms.py); old configs' `smear: bool` maps to smear/baseline
    attn_scale: float = 0.1  # softmax scale before YaRN; QK-norm bounds each logit by scale * d_head
    block_size: int = 128  # window sizes are counted in blocks of this many tokens
    initial_window: int = 3  # long window (blocks) before training grows it
    long_window_layers: tuple[int, ...] = (0, 4, 7)  # these use the long window, others half; the last layer its own
    no_attn_layers: tuple[int, ...] = (7,)
    no_mlp_layers: tuple[int, ...] = (0,)
    n_value_embeds: int = 3  # used by the first and the last n_value_embeds layers (012...012)
    softcap: float = 30.0  # logits = softcap * sigmoid(z / softcap_div)
    softcap_div: float = 7.5
    scalar_pad_to: int = 8  # the record pads the scalars vector for 8 ranks
    bos_id: int = 50256

    @property
    def arm_spec(self) -> ArmSpec:
        return arm_spec(self.arm)

    @property
    def smear(self) -> bool:
        """The record's smear (arm `smear`, or `smear-noattn0`: record #131 kept it); the pre-arm configs' boolean."""
        return self.arm_spec.base == "smear"

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // 128) * 128

    @property
    def n_scalars(self) -> int:
        n = 6 * self.n_layers  # skip weights, block lambdas (2), SA lambdas (2), smear lambda + zeros
        return n + (-n) % self.scalar_pad_to

    def attn_free_layers(self) -> tuple[int, ...]:
        """The layers without attention: `no_attn_layers`, and layer 0 in a -noattn0 arm (trainer/arms.py)."""
        return tuple(sorted(set(self.no_attn_layers) | ({0} if self.arm_spec.no_attn0 else set())))

    def attn_layers(self) -> list[int]:
        free = self.attn_free_layers()
        return [i for i in range(self.n_layers) if i not in free]

    def layer_windows(self, long_blocks: int, final_blocks: int) -> list[int]:
        """Each layer's window in tokens: the long window, half of it, or (the last layer) its own."""
        sizes = [(long_blocks if i in self.long_window_layers else long_blocks // 2) * self.block_size
                 for i in range(self.n_layers)]
        sizes[-1] = final_blocks * self.block_size
        return sizes

    def key_mix_layers(self) -> tuple[int, ...]:
        """The attention layers whose keys the arm mixes (trainer/arms.py): `keyshift` the long-window ones
        (the long window and the last layer, which trains with it), `smeared-key` every one."""
        kind = self.arm_spec.key_mix
        if kind is None:
            return ()
        long = set(self.long_window_layers) | {self.n_layers - 1}
        return tuple(l for l in self.attn_layers() if kind == "smear" or l in long)

    def value_embed_index(self, layer: int) -> int | None:
        """Which value embedding layer `layer` uses: 0,1,2 at the start, 0,1,2 at the end, none between."""
        k = self.n_value_embeds
        if layer < k:
            return layer
        if layer >= self.n_layers - k:
            return layer - (self.n_layers - k)
        return None

    def validate(self) -> "ModelConfig":
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"inconsistent model config: {msg}")

        if self.n_heads < 1 or self.d_head < 4:
            raise bad(f"n_heads = {self.n_heads} and d_head = {self.d_head} must be at least 1 and 4")
        if self.n_heads * self.d_head != self.d_model:
            raise bad(f"n_heads × d_head = {self.n_heads} × {self.d_head} ≠ d_model = {self.d_model}")
        if self.n_layers < 2 or self.n_layers % 2:
            raise bad(f"n_layers = {self.n_layers}: the U-net needs an even number of layers ≥ 2")
        if self.d_head % 4:
            raise bad(f"d_head = {self.d_head} must be a multiple of 4 (half-truncated rotary)")
        if self.d_model < GATE_DIM:
            raise bad(f"d_model = {self.d_model} is smaller than the gates' {GATE_DIM} input channels")
        if not 0 <= self.n_value_embeds <= self.n_layers // 2:
            raise bad(f"n_value_embeds = {self.n_value_embeds} must be in [0, n_layers/2]")
        for name in ("long_window_layers", "no_attn_layers", "no_mlp_layers"):
            for i in getattr(self, name):
                if not 0 <= i < self.n_layers:
                    raise bad(f"{name} has layer {i}, outside 0..{self.n_layers - 1}")
        if not 0 < self.vocab_size <= 65536:
            raise bad(f"vocab_size = {self.vocab_size} must be in 1..65536 (uint16 shards)")
        if not 0 <= self.bos_id < self.vocab_size:
            raise bad(f"bos_id = {self.bos_id} is outside the vocabulary of {self.vocab_size}")
        if self.block_size < 1 or self.attn_scale <= 0 or self.initial_window < 1:
            raise bad("block_size, initial_window and attn_scale must be positive")
        if self.mlp_ratio < 1 or self.scalar_pad_to < 1 or self.softcap <= 0 or self.softcap_div <= 0:
            raise bad("mlp_ratio, scalar_pad_to, softcap and softcap_div must be positive")
        for name in ("attn_scale", "softcap", "softcap_div"):  # they become float32 buffers and constants
            if not getattr(self, name) <= FLOAT32_MAX:
                raise bad(f"{name} = {getattr(self, name)!r} is beyond float32 ({FLOAT32_MAX:.4g})")
        spec = self.arm_spec  # an unknown arm is a ConfigError naming the choices
        if spec.no_attn0 and 0 in self.no_attn_layers:
            raise bad(f"arm {self.arm!r} removes layer 0's attention, but layer 0 has none already "
                      f"(no_attn_layers = {list(self.no_attn_layers)}): use arm {spec.base!r}")
        return self


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1645
    batch_size: int = 8  # rows per step, over all ranks
    seq_len: int = 48 * 1024  # tokens per row; documents inside a row are masked from each other
    max_doc_len: int | None = 2048  # documents are cut to this many tokens (record); None: to the row
    adam_lr: float = 0.008
    adam_betas: tuple[float, float] = (0.8, 0.95)
    adam_eps: float = 1e-8
    embed_lr_mul: float = 75.0
    scalar_lr_mul: float = 5.0
    head_lr_mul: float = 1.0
    muon_lr: float = 0.05
    muon_momentum: tuple[float, float] = (0.85, 0.95)  # warmed up from the first to the second
    momentum_warmup_steps: int = 300
    cooldown_frac: float = 0.5  # lr decays linearly to final_lr_frac over this last fraction
    final_lr_frac: float = 0.1
    ws_schedule: tuple[int, ...] = (3, 7, 11)  # long window in blocks, one value per third of training
    ws_validate: int = 13
    ws_validate_final: int = 20
    val_every: int = 125
    val_tokens: int = 10_485_760
    val_batch_size: int = 8
    val_seq_len: int = 64 * 1024
    seed: int = 0
    n_checkpoints: int = 8  # log-spaced checkpoint steps, plus the last
    checkpoint_every: int = 0  # also every this many steps (0: only the log-spaced ones)
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: "stop" the run, or "skip" the step
    autocast: str = "auto"  # "bf16", "fp32" or "auto" (bf16 on CUDA, fp32 on CPU)
    smear_lr_mult: float = 1.0  # multiplies the learning rate of λ alone (arms with a learned λ)
    compile: bool = False
    # Repeated random spans in the training rows (trainer/repeats.py): about this share of each row's
    # tokens are spans R R, |R| drawn per span from copy_lengths (inclusive) but copy_holdout. 0: text only.
    copy_share: float = 0.0
    copy_lengths: tuple[int, int] = (5, 30)
    copy_holdout: tuple[int, ...] = ()

    def validate(self) -> "TrainConfig":
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2 or (self.max_doc_len or 2) < 2:
            raise ConfigError("steps, batch_size, seq_len and max_doc_len must be positive")
        if not 0 <= self.cooldown_frac <= 1:
            raise ConfigError(f"cooldown_frac = {self.cooldown_frac} must be in [0, 1]")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError(f"on_nonfinite = {self.on_nonfinite!r}: choose stop or skip")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every = {self.checkpoint_every} must be ≥ 0")
        if self.autocast not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"autocast = {self.autocast!r}: choose auto, bf16 or fp32")
        if not self.ws_schedule:
            raise ConfigError("ws_schedule is empty")
        # torch's optimisers refuse these deep inside training (a negative seed is checked by make_run:
        # imported record runs, never trained, hold seed -1)
        if min(self.adam_lr, self.muon_lr, self.embed_lr_mul, self.scalar_lr_mul, self.head_lr_mul,
               self.final_lr_frac) < 0:
            raise ConfigError("learning rates, their multipliers and final_lr_frac must be ≥ 0")
        if self.adam_eps <= 0 or not all(0 <= b < 1 for b in (*self.adam_betas, *self.muon_momentum)):
            raise ConfigError(f"adam_eps = {self.adam_eps} must be > 0, adam_betas {self.adam_betas} and "
                              f"muon_momentum {self.muon_momentum} in [0, 1)")
        if self.momentum_warmup_steps < 0 or self.val_every < 0:
            raise ConfigError("momentum_warmup_steps and val_every must be ≥ 0")
        if min(*self.ws_schedule, self.ws_validate, self.ws_validate_final) < 1:
            raise ConfigError("ws_schedule, ws_validate and ws_validate_final must be windows of ≥ 1 block")
        if list(self.ws_schedule) != sorted(self.ws_schedule) or self.ws_validate < self.ws_schedule[-1]:
            raise ConfigError(f"ws_schedule {list(self.ws_schedule)} then ws_validate {self.ws_validate}: "
                              f"windows only grow (YaRN stretches as they do)")
        if self.val_tokens < 1 or self.val_batch_size < 1 or self.val_seq_len < 2:
            raise ConfigError("val_tokens, val_batch_size and val_seq_len must be positive (val_seq_len ≥ 2)")
        if not (isinstance(self.smear_lr_mult, (int, float)) and 0 < self.smear_lr_mult < math.inf):
            raise ConfigError(f"smear_lr_mult = {self.smear_lr_mult!r} must be a positive number")
        check_copy_data(self.copy_share, self.copy_lengths, self.copy_holdout, self.seq_len)
        return self


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainConfig
    description: str = ""
    tokenizer: str = "bpe"  # "gpt2" or "bpe" (a BPE trained on the corpus)
    bpe_vocab: int = 4096


def _small(n_layers: int, d_model: int, n_heads: int, seq_len: int, **model_kw) -> ModelConfig:
    d_head = d_model // n_heads
    return ModelConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=d_head,
        d_model=d_model,
        attn_scale=0.1 * 128 / d_head,  # keep the record's logit bound of 12.8
        block_size=max(1, seq_len // 16),  # the record's 2048-token documents are 16 blocks
        **model_kw,
    )



def _cpu_small_model(d_model: int, seq_len: int = 128, n_heads: int = 2) -> ModelConfig:
    """cpu-small's model at width `d_model` (6 layers, 2 heads unless asked: the head size grows with the width)."""
    return _small(6, d_model, n_heads, seq_len, long_window_layers=(0, 3), no_attn_layers=(4,), no_mlp_layers=(0,),
                  n_value_embeds=3, vocab_size=4096, bos_id=0)


_CPU_SMALL_TRAIN = TrainConfig(steps=1600, batch_size=8, seq_len=128, max_doc_len=None, momentum_warmup_steps=150,
                               val_every=400, val_tokens=65_536, val_batch_size=64, val_seq_len=128)
# cpu-induction's data and schedule: rows of 256 tokens, half of them repeated random spans (trainer/repeats.py).
_CPU_INDUCTION_TRAIN = dataclasses.replace(
    _CPU_SMALL_TRAIN, steps=3000, batch_size=4, seq_len=256, val_every=500, val_seq_len=256, val_batch_size=32,
    copy_share=0.5, copy_lengths=(5, 30), copy_holdout=HELD_OUT_LENGTHS)

PRESETS: dict[str, Preset] = {
    "speedrun-124m": Preset(
        ModelConfig(),
        TrainConfig(),
        "the 2025-09-18 record: 12 layers, d=768, 6 heads of 128, GPT-2 vocabulary",
        tokenizer="gpt2",
    ),
    "cpu-small": Preset(
        _cpu_small_model(128),
        # One epoch of the embedded corpus (1.6M tokens; a second overfits: val loss 4.08 → 4.24 by
        # step 600 of 32 rows). More, smaller steps form clearer previous-token heads in the same time
        # (5–6 min a run): best baseline head at the final checkpoint, seed 0, 32 rows × 400 steps 0.35,
        # 8 × 1,600 0.45 (before YaRN kept the fast frequencies); reference demo, seeds 0–2: 0.50, 0.50, 0.44.
        _CPU_SMALL_TRAIN,
        "CPU demo: 6 layers, d=128, 2 heads of 64, BPE-4096, 1k tokens a step, 1,600 steps",
    ),
    # The size sweep: the smear's gain at three widths, cpu-small's everything else (data, steps,
    # tokens a step, depth, 2 heads: the head size grows with the width, the attention scale with it as
    # in every preset, `_small`). Parameters (all / without the embeddings, value embeddings and head) and
    # tokens per parameter for the 1,600 × 1,024 = 1.64M tokens (one epoch of the corpus; a second
    # overfits, see cpu-small): d=96 2.52M / 0.55M, 0.65 / 2.96; d=128 3.60M / 0.98M, 0.45 / 1.67;
    # d=192 6.14M / 2.21M, 0.27 / 0.74. Every size is far below Chinchilla's ~20 tokens a parameter:
    # the sweep asks how the gain moves with width at a fixed data budget, not at compute-optimal sizes.
    "cpu-small-d96": Preset(
        _cpu_small_model(96),
        _CPU_SMALL_TRAIN,
        "size sweep: cpu-small at d=96, 2 heads of 48 (2.5M parameters, 0.65 tokens each)",
    ),
    "cpu-small-d192": Preset(
        _cpu_small_model(192),
        _CPU_SMALL_TRAIN,
        "size sweep: cpu-small at d=192, 2 heads of 96 (6.1M parameters, 0.27 tokens each)",
    ),
    # Induction heads on a CPU (the pilot: docs/induction.md): cpu-small's model with rows of 256
    # tokens (window blocks of 16: long windows 48/112/176 tokens over training, short 16/48/80), half of
    # every row's tokens in repeated random spans R R, |R| 5–30 but the induction test's 11, 19, 27
    # (trainer/repeats.py). The text is the embedded corpus, as in cpu-small.
    "cpu-induction": Preset(
        _cpu_small_model(128, seq_len=256),
        _CPU_INDUCTION_TRAIN,
        "induction heads on a CPU: cpu-small's model, rows of 256 tokens, half of them repeated random spans",
    ),
    # cpu-induction with 4 heads of 32 a layer instead of 2 of 64 (the attention scale keeps the logit bound of
    # 12.8; as many parameters). On cpu-induction 2 of 12 study seeds formed no induction head, and more steps,
    # more repeats or higher learning rates each freed one stuck seed only to stick another; with twice the
    # heads every seed tried formed one, the stuck ones included (docs/induction.md; figures/induction/PLAN.md,
    # Amendment 3).
    "cpu-induction-h4": Preset(
        _cpu_small_model(128, seq_len=256, n_heads=4),
        _CPU_INDUCTION_TRAIN,
        "cpu-induction with 4 heads of 32 a layer: more candidate circuits, an induction head in every seed tried",
    ),
    # The one-layer test (Olsson et al. 2022's smeared keys): one attention layer cannot build an induction
    # head alone (no earlier layer writes token j−1 into the key position) unless a smear or key mix does.
    # The U-net needs an even number of layers, so: two layers, layer 0 with an MLP but no attention, layer 1
    # the one attention layer (long window), one value embedding; cpu-induction's data and schedule.
    "cpu-induction-1layer": Preset(
        _small(2, 128, 2, 256, long_window_layers=(1,), no_attn_layers=(0,), no_mlp_layers=(),
               n_value_embeds=1, vocab_size=4096, bos_id=0),
        _CPU_INDUCTION_TRAIN,
        "the one-layer test: cpu-induction's data and schedule, one attention layer (two layers, layer 0 only an MLP)",
    ),
    "tiny": Preset(
        _small(4, 64, 2, 64, long_window_layers=(0,), no_attn_layers=(2,), no_mlp_layers=(0,),
               n_value_embeds=2, vocab_size=512, bos_id=0),
        TrainConfig(steps=40, batch_size=8, seq_len=64, max_doc_len=None, momentum_warmup_steps=8,
                    val_every=20, val_tokens=4096, val_batch_size=8, val_seq_len=64, n_checkpoints=3),
        "tests: 4 layers, d=64, 2 heads of 32, BPE-512",
        bpe_vocab=512,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def legacy_smear(cls, d: dict) -> dict:
    """Configs written before arms had `smear: bool`: True is arm `smear`, False `baseline`."""
    if cls is not ModelConfig or "smear" not in d:
        return d
    d = dict(d)
    arm = "smear" if d.pop("smear") else "baseline"
    if d.setdefault("arm", arm) != arm:
        raise ConfigError(f"model config has smear={arm == 'smear'} and arm={d['arm']!r}, which disagree")
    return d


def field_type(cls, name: str) -> Any:
    """The annotated type of a config field (`int`, `tuple[int, ...]`, `int | None`, …)."""
    return typing.get_type_hints(cls)[name]


def expects(hint: Any, value: Any) -> str | None:
    """None when `value` fits the type `hint`, else what the field takes, in words ("a JSON list of integers")."""
    if _fits(hint, value):
        return None
    return _words(hint)


def _fits(hint: Any, value: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # bool is an int to Python, never to a config
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) < 2**63
    if hint is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        try:
            return math.isfinite(float(value))
        except OverflowError:  # an integer too large for a float
            return False
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_fits(a, value) for a in args)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return len(value) == len(args) and all(_fits(a, v) for a, v in zip(args, value))
    raise TypeError(f"config field type {hint} has no check")  # a new kind of field needs one here


def _words(hint: Any) -> str:
    simple = {bool: "true or false", int: "an integer", float: "a finite number", str: "text", type(None): "null"}
    if hint in simple:
        return simple[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_words(a) for a in args)
    if len(args) == 2 and args[1] is Ellipsis:
        return f"a JSON list of {_words(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return f"a JSON list of {len(args)} {'numbers' if set(args) == {float} else 'values'}"


def _normalise(hint: Any, value: Any) -> Any:
    """A value that fits `hint` in the config's own form: lists as tuples, floats as float, ints as int."""
    if hint is float:
        return float(value)
    if hint is int or (typing.get_origin(hint) in (types.UnionType, typing.Union) and value is not None):
        return int(value) if not isinstance(value, bool) and isinstance(value, numbers.Integral) else value
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_normalise(a, v) for a, v in zip(items, value))
    return value


def shown(value: Any, limit: int = 60) -> str:
    """A value as a user wrote it, short and on one line (JSON for data, repr for text)."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_fields(cls, changes: dict, where: str) -> dict:
    """`changes` with each value checked against its field's type and normalised; a mismatch is a
    ConfigError naming `where`, the field and what it takes (a bad type would fail deep in validate)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in changes.items():
        problem = expects(hints[name], value) if name in hints else None
        if problem:
            raise ConfigError(f"{where}: {name} = {shown(value)} is not {problem}")
        out[name] = _normalise(hints[name], value) if name in hints else value
    return out


def replace(cfg, **changes):
    """dataclasses.replace with our error type for unknown fields and mistyped values, then validated."""
    changes = legacy_smear(type(cfg), changes)
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"unknown {type(cfg).__name__} field(s): {', '.join(unknown)}")
    changes = check_fields(type(cfg), changes, type(cfg).__name__)
    return dataclasses.replace(cfg, **changes).validate()


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    """Rebuild a config from JSON (tuples come back as lists); unknown keys and mistyped values are an error."""
    if not isinstance(d, dict):
        raise ConfigError(f"bad {cls.__name__} in metadata: {shown(d)} is not a JSON object")
    d = legacy_smear(cls, d)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) in metadata: {', '.join(unknown)}")
    fixed = check_fields(cls, d, f"bad {cls.__name__} in metadata")
    try:
        return cls(**fixed).validate()
    except TypeError as e:
        raise ConfigError(f"bad {cls.__name__} in metadata: {e}") from None


__all__ = ["GATE_DIM", "ModelConfig", "TrainConfig", "Preset", "PRESETS", "get_preset", "replace",
           "to_dict", "from_dict", "check_fields", "expects", "field_type", "shown"]
