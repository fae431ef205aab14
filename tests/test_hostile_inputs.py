"""Every loader meets random and mutated files with our own error type, never a deep traceback.

A case passes when the loader either accepts the input or raises a SmearlensError subclass on one line;
a checkpoint that records hashes must refuse every change to any of its files. The number of cases and
their randomness come from the hypothesis profile (tests/conftest.py): "ci", the default, draws the same
1,000 cases a property on every run; `make fuzz` ("deep") draws 20,000 fresh ones. A case a deep run
finds is pinned here with @example, so every run tests it.
"""

import atexit
import contextlib
import copy
import dataclasses
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from commands.cli import NOT_SET, main as cli_main, parse_overrides
from commands.study import MANIFEST as PLAN_FILE, StudyPlan, load_plan
from trainer import checkpoint as ckpt
from trainer.config import ModelConfig, TrainConfig, field_type, get_preset
from trainer.errors import CheckpointError, SmearlensError
from trainer.model import GPT
from trainer.shards import read_shard, write_shard
from trainer.tokenizer import Tokenizer, train_bpe
from trainer.train import Run, load_run, make_run

CASES = settings(deadline=None, suppress_health_check=list(HealthCheck))  # max_examples: the profile's
WORK = Path(tempfile.mkdtemp(prefix="smearlens-hostile-"))
atexit.register(shutil.rmtree, WORK, True)


def mutations(valid: bytes):
    """Random bytes, or the valid file truncated, extended, or with bytes overwritten: as a small description
    (`damaged` applies it), since hypothesis keeps thousands of drawn values and whole files of a megabyte
    each filled the memory of a 20,000-case run."""
    n = len(valid)
    flips = st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)), min_size=1, max_size=8)
    return st.one_of(
        st.tuples(st.just("replace"), st.binary(max_size=2048)),
        st.tuples(st.just("truncate"), st.integers(0, n)),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("flip"), flips),
    )


def damaged(valid: bytes, how: tuple) -> bytes:
    kind, arg = how
    if kind == "replace":
        return arg
    return valid[:arg] if kind == "truncate" else valid + arg if kind == "extend" else _flip(valid, arg)


def _flip(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for i, b in flips:
        if i < len(out):
            out[i] = b
    return bytes(out)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _paths(obj, path=()):
    yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from _paths(value, path + (key,))


@st.composite
def json_mutations(draw, valid: dict) -> tuple:
    """The valid JSON with one to three values anywhere in it replaced by any JSON value, or removed:
    well-formed files holding the wrong types, which byte damage rarely makes."""
    obj = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(obj))))
        if not path:
            obj = draw(JSON_VALUES)
            continue
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return "replace", json.dumps(obj).encode()


def file_mutations(valid: bytes):
    """Byte damage, and for a JSON file also well-formed JSON with the wrong content."""
    try:
        return mutations(valid) | json_mutations(json.loads(valid))
    except ValueError:
        return mutations(valid)


def test_ci_profile_draws_the_same_cases_every_run():
    """What makes a red CI mean a broken change: the "ci" profile (the default) draws the same cases on
    every run of the same code (the seed comes from the property's own source, not the clock)."""
    if not settings().derandomize:
        pytest.skip("a fresh-randomness profile (make fuzz) draws new cases by design")

    def draws() -> list[bytes]:
        seen: list[bytes] = []

        @settings(CASES, max_examples=50)
        @given(data=mutations(b"0123456789"))
        def prop(data):
            seen.append(data)
        prop()
        return seen
    assert draws() == draws()


def accepts_or_refuses(load, path: Path, valid: bytes, how: tuple) -> None:
    path.write_bytes(damaged(valid, how))
    try:
        load(path)
    except SmearlensError as e:
        assert str(e) and "\n" not in str(e)


def _valid_shard() -> bytes:
    write_shard(WORK / "valid.bin", np.arange(300) % 512)
    return (WORK / "valid.bin").read_bytes()


VALID_SHARD = _valid_shard()


@CASES
@given(how=mutations(VALID_SHARD))
def test_shard_loader(how):
    accepts_or_refuses(lambda p: np.asarray(read_shard(p, vocab_size=512)).sum(), WORK / "shard.bin", VALID_SHARD, how)


def _valid_tokenizer() -> bytes:
    train_bpe(["the cat sat on the mat " * 20, "a dog ran far away " * 20], 300).save(WORK / "tok")
    return (WORK / "tok" / "tokenizer.json").read_bytes()


def _load_tokenizer(path: Path) -> None:
    tok = Tokenizer.load(path.parent)
    tok.decode(tok.encode("the cat"))


VALID_TOKENIZER = _valid_tokenizer()


def _newline_merge_tokenizer() -> tuple[str, bytes]:
    """Found by the deep run (2026-12-07): a merge of a token outside the vocabulary, a newline, made the parser's
    message quote it across two lines; the error now escapes it."""
    doc = json.loads(VALID_TOKENIZER)
    doc["tokenizer"]["model"]["merges"][0] = ["\n", "t"]
    return "replace", json.dumps(doc).encode()


@CASES
@given(how=file_mutations(VALID_TOKENIZER))
@example(how=_newline_merge_tokenizer())
def test_tokenizer_loader(how):
    (WORK / "tokdir").mkdir(exist_ok=True)
    accepts_or_refuses(_load_tokenizer, WORK / "tokdir" / "tokenizer.json", VALID_TOKENIZER, how)


# ---- checkpoints ------------------------------------------------------------------------------------------

def _saved_checkpoint(hashed: bool) -> Path:
    """A tiny checkpoint, the same bytes on every run (the draws of a derandomized run mean the same
    files); `hashed=False`: as written before checkpoints recorded hashes."""
    model = GPT(get_preset("tiny").model)
    meta = dict(model_config=json.loads(json.dumps(dataclasses.asdict(model.config))), arm="smear", seed=0, run="r")
    rng = torch.Generator().manual_seed(0).get_state()
    state = dict(step=1, adam={}, muon={}, loader=dict(epoch=0, cursor=3, batches=1), rng={"torch": rng})
    out = ckpt.save_checkpoint(WORK / ("hashed" if hashed else "unhashed"), 1, model, meta, state)
    if not hashed:
        old = json.loads((out / ckpt.META_FILE).read_text())
        old = {k: v for k, v in old.items() if k not in (ckpt.HASHES, ckpt.META_HASH)}
        (out / ckpt.META_FILE).write_text(json.dumps(old, indent=1))
    return out


HASHED, UNHASHED = _saved_checkpoint(True), _saved_checkpoint(False)
# The issue's falsifying case: byte 147 (right after the pickled step) set to "." (STOP) makes the
# resume state unpickle to the int 1; it used to fail with a TypeError instead of the one-line error.
INT_STATE = ("flip", [(147, 46)])


def _absurd_model_meta() -> bytes:
    """Found by the deep run: metadata asking for a model of a billion layers (of the right types) made the
    loader build it, and the run swapped at 13 GB; now refused against the weights file's size."""
    meta = json.loads((UNHASHED / ckpt.META_FILE).read_text())
    meta["model_config"]["n_layers"] = 10**9
    return "replace", json.dumps(meta).encode()


def _overflowing_scale_meta() -> bytes:
    """Found by the deep run (2026-12-07): an attn_scale just beyond float32's largest number failed inside torch
    as the model filled its buffer; now refused by the config."""
    meta = json.loads((UNHASHED / ckpt.META_FILE).read_text())
    meta["model_config"]["attn_scale"] = 3.402823466385289e38
    return "replace", json.dumps(meta).encode()


def _ckpt_copy(src: Path, name: str) -> Path:
    dst = WORK / f"mut_{name}" / "step_000001"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not (dst / f.name).exists():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _load_model(path: Path) -> None:
    ckpt.load_model(path.parent)


def _load_state(path: Path) -> None:
    ckpt.load_train_state(path.parent)


LOADERS = {ckpt.META_FILE: _load_model, ckpt.MODEL_FILE: _load_model, ckpt.STATE_FILE: _load_state}


def damage_property(part: str):
    """Any change to one file of a checkpoint with hashes is refused in one line naming that file."""
    valid = (HASHED / part).read_bytes()

    # the refusal is one hash comparison wherever the damage lies: a fifth of the cases (200 in CI) covers it,
    # and test_every_byte_of_the_metadata_is_covered tries every byte of the file that hashes itself
    @settings(CASES, max_examples=max(20, settings().max_examples // 5))
    @given(how=mutations(valid))
    @example(how=INT_STATE if part == ckpt.STATE_FILE else ("flip", [(len(valid) // 2, 46)]))
    def test(how):
        path = _ckpt_copy(HASHED, f"hashed_{part}") / part
        data = damaged(valid, how)
        path.write_bytes(data)
        if data == valid:
            LOADERS[part](path)
            return
        with pytest.raises(CheckpointError) as refused:
            LOADERS[part](path)
        assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    return test


test_damaged_metadata_is_refused = damage_property(ckpt.META_FILE)
test_damaged_weights_are_refused = damage_property(ckpt.MODEL_FILE)
test_damaged_resume_state_is_refused = damage_property(ckpt.STATE_FILE)


def unhashed_property(part: str):
    """A checkpoint from before hashes loads unchecked: its parsers accept or refuse in one line."""
    valid = (UNHASHED / part).read_bytes()

    @CASES
    @given(how=file_mutations(valid))
    @example(how={ckpt.STATE_FILE: INT_STATE, ckpt.META_FILE: _absurd_model_meta()}.get(part, ("truncate", 9)))
    @example(how=_overflowing_scale_meta() if part == ckpt.META_FILE else ("truncate", 5))
    def test(how):
        accepts_or_refuses(LOADERS[part], _ckpt_copy(UNHASHED, f"unhashed_{part}") / part, valid, how)
    return test


test_unhashed_metadata_loader = unhashed_property(ckpt.META_FILE)
test_unhashed_weights_loader = unhashed_property(ckpt.MODEL_FILE)
test_unhashed_resume_state_loader = unhashed_property(ckpt.STATE_FILE)


def test_pinned_example_is_the_issues_case():
    """The @example above still means what it says: the damaged state unpickles to a plain int."""
    state = damaged((UNHASHED / ckpt.STATE_FILE).read_bytes(), INT_STATE)
    assert torch.load(io.BytesIO(state), weights_only=True) == 1
    dst = _ckpt_copy(UNHASHED, "int_state")
    (dst / ckpt.STATE_FILE).write_bytes(state)
    with pytest.raises(CheckpointError, match=r"train_state\.pt: not a resume state: it holds a int"):
        ckpt.load_train_state(dst)


def test_every_byte_of_the_metadata_is_covered():
    """A changed byte anywhere in meta.json (its own digest, a key name, the whitespace) is refused."""
    valid = (HASHED / ckpt.META_FILE).read_bytes()
    dst = _ckpt_copy(HASHED, "every_byte")
    for i, byte in enumerate(valid):
        # one bit changed; whitespace swapped for other whitespace (the same JSON, other bytes)
        (dst / ckpt.META_FILE).write_bytes(_flip(valid, [(i, {0x20: 0x09, 0x0A: 0x20}.get(byte, byte ^ 1))]))
        with pytest.raises(CheckpointError, match="meta.json"):
            ckpt.read_meta(dst)


def test_unhashed_checkpoint_loads_with_one_warning(capsys, monkeypatch):
    monkeypatch.setattr(ckpt, "_warned_unhashed", False)  # as in a fresh process
    for copy_name in ("warned", "warned_again"):
        dst = _ckpt_copy(UNHASHED, copy_name)
        ckpt.load_model(dst)
        ckpt.load_train_state(dst)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smearlens: warning:" in err and "before smearlens recorded hashes" in err


def test_wrong_tensor_shape_is_named():
    dst = _ckpt_copy(UNHASHED, "shape")
    weights = {k: v for k, v in GPT(get_preset("tiny").model).state_dict().items()}
    weights["scalars"] = torch.zeros(3)
    save_file(weights, str(dst / ckpt.MODEL_FILE))
    with pytest.raises(SmearlensError, match="scalars has shape"):
        ckpt.load_model(dst)


# ---- the other files smearlens reads back ------------------------------------------------------------------

def _valid_record_file() -> bytes:
    from trainer.record import export_record_state_dict

    sd = export_record_state_dict(GPT(get_preset("tiny").model), world_size=1)
    torch.save(dict(step=3, code="", model=sd, optimizers=[]), WORK / "record.pt")
    return (WORK / "record.pt").read_bytes()


def _import_record(path: Path) -> None:
    from trainer.record import import_state_dict, read_record_file, record_state_dict

    sd = record_state_dict(read_record_file(path), str(path))
    import_state_dict(sd, get_preset("tiny").model)


VALID_RECORD = _valid_record_file()


@CASES
@given(how=mutations(VALID_RECORD))
def test_record_checkpoint_loader(how):
    accepts_or_refuses(_import_record, WORK / "mutated_record.pt", VALID_RECORD, how)


def _valid_table() -> bytes:
    import pandas as pd

    rows = [dict(run="r", preset="tiny", arm=arm, seed=0, step=1, tokens=512, layer=0, head=h, metric="prev_token",
                 value=0.1 * h) for arm in ("smear", "baseline") for h in range(2)]
    pd.DataFrame(rows).to_parquet(WORK / "heads_valid.parquet", index=False)
    return (WORK / "heads_valid.parquet").read_bytes()


def _load_tables(path: Path) -> None:
    from analysis.stats import load_tables

    load_tables(path.parent, runs_dir=path.parent)


VALID_TABLE = _valid_table()


@CASES
@given(how=mutations(VALID_TABLE))
def test_table_loader(how):
    (WORK / "tables").mkdir(exist_ok=True)
    accepts_or_refuses(_load_tables, WORK / "tables" / "heads.parquet", VALID_TABLE, how)


def _valid_manifest() -> bytes:
    preset = get_preset("tiny")
    run = Run(name="r", preset="tiny", arm="smear", seed=0, data="data", model=preset.model, train=preset.train,
              tokenizer=dict(kind="bpe", vocab_size=512, bos_id=0))
    return json.dumps(run.manifest(), indent=1).encode()


VALID_MANIFEST = _valid_manifest()


@CASES
@given(how=file_mutations(VALID_MANIFEST))
def test_run_manifest_loader(how):
    (WORK / "manifest").mkdir(exist_ok=True)
    accepts_or_refuses(lambda p: load_run(p.parent), WORK / "manifest" / ckpt.RUN_FILE, VALID_MANIFEST, how)


def _valid_plan() -> bytes:
    return json.dumps(StudyPlan("tiny", ("smear", "baseline"), (0, 1), 40, ("val_every=10",)).to_json()).encode()


VALID_PLAN = _valid_plan()


@CASES
@given(how=file_mutations(VALID_PLAN))
def test_study_plan_loader(how):
    (WORK / "plan").mkdir(exist_ok=True)
    accepts_or_refuses(lambda p: load_plan(p.parent), WORK / "plan" / PLAN_FILE, VALID_PLAN, how)


def test_every_torch_load_is_weights_only():
    """No code path unpickles arbitrary objects: each torch.load call names weights_only=True."""
    import re

    repo = Path(__file__).resolve().parent.parent
    for path in [*repo.glob("trainer/*.py"), *repo.glob("analysis/**/*.py"), *repo.glob("benchmarks/*.py")]:
        for call in re.findall(r"torch\.load\(([^)]*)\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: torch.load({call})"


# ---- --set NAME=VALUE ------------------------------------------------------------------------------------

FIELDS = sorted({f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(ModelConfig)})
# compile=true would spend minutes in torch.compile on a CPU; the first property still checks its type
TRAINABLE = sorted(set(FIELDS) - set(NOT_SET) - {"compile"})


def _as_json(value) -> str:
    return json.dumps(value)


RAW_VALUES = st.one_of(
    st.text(max_size=12),
    JSON_VALUES.map(_as_json),
    st.lists(st.integers(-3, 9), max_size=4).map(lambda xs: ",".join(map(str, xs))),  # 0,1 (no brackets)
    st.lists(st.integers(-3, 9), max_size=4).map(_as_json),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["true", "false", "null", "NaN", "-Infinity", "1e999", "fp32", "skip", "[0, 1]"]),
)


@CASES
@given(name=st.sampled_from(FIELDS), raw=RAW_VALUES)
@example(name="copy_lengths", raw="[130, 227920381696499648]")  # deep run 2026-12-07: listed every length (MemoryError)
def test_set_option_gives_a_run_or_one_line(tiny_data, name, raw):
    """Any --set value of any setting: a run that make_run accepts, or a one-line error."""
    try:
        train_over, model_over = parse_overrides([f"{name}={raw}"])
        make_run("tiny", get_preset("tiny"), "smear", 0, tiny_data, train_overrides=train_over,
                 model_overrides=model_over)
    except SmearlensError as e:
        assert str(e) and "\n" not in str(e)


def _typed_value(name: str):
    """Values of the field's own type, small enough that a run of one step stays quick."""
    kind = field_type(TrainConfig if name in {f.name for f in dataclasses.fields(TrainConfig)} else ModelConfig, name)
    small = st.integers(-2, 70)
    by_kind = {int: small, float: st.floats(-10, 10) | st.sampled_from([0.0, 1e-30, 1e30]), bool: st.booleans(),
               str: st.sampled_from(["stop", "skip", "auto", "bf16", "fp32", "x"])}
    if kind in by_kind:
        value = by_kind[kind]
    elif kind == (int | None):
        value = st.none() | small
    else:  # tuples: of layer indices or window sizes, or Adam's and Muon's pairs
        value = st.lists(st.floats(-2, 2) if "float" in str(kind) else small, max_size=4)
    return value.map(lambda v: v if isinstance(v, str) else _as_json(v))


@settings(CASES, max_examples=max(10, settings().max_examples // 20))  # each case trains: 50 in CI
@given(setting=st.sampled_from(TRAINABLE).flatmap(lambda name: st.tuples(st.just(name), _typed_value(name))))
@example(setting=("initial_window", "4"))  # deep run: a first window above ws_schedule's 3 (windows only grow)
@example(setting=("ws_schedule", "[7, 3]"))
@example(setting=("embed_lr_mul", "0.0"))  # deep run: the loss log divided by the embeddings' learning rate
def test_set_option_trains_or_refuses(tiny_data, one_thread, setting):
    """The CLI trains one step with any well-typed value of any setting, or ends in a one-line error."""
    name, raw = setting
    out = WORK / "set_runs"
    shutil.rmtree(out, ignore_errors=True)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli_main(["train", "--preset", "tiny", "--arm", "smear", "--data", str(tiny_data), "--out", str(out),
                       "--stop-at", "1", "--record-every", "0", "--set", f"{name}={raw}"])
    errors = [line for line in err.getvalue().splitlines() if line.startswith("smearlens: error:")]
    assert (rc, len(errors)) in ((0, 0), (2, 1)), err.getvalue()[-500:]


@pytest.mark.parametrize("raw, example", [("long_window_layers=0,1", "--set long_window_layers=[0,1]"),
                                          ("no_attn_layers=", "--set no_attn_layers=[]"),
                                          ("adam_betas=0.9,0.95", "--set adam_betas=[0.9,0.95]"),
                                          ("val_every=12.5", "--set val_every=125"),
                                          ("compile=yes", "--set compile=false")])
def test_set_of_the_wrong_type_names_setting_value_and_example(raw, example, capsys):
    assert cli_main(["train", "--preset", "cpu-small", "--arm", "baseline", "--set", raw]) == 2
    err = capsys.readouterr().err
    name = raw.partition("=")[0]
    assert err.count("\n") == 1 and err.startswith(f"smearlens: error: --set {name}: takes ") and example in err


def test_set_help_says_lists_are_json(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    assert "lists as --set long_window_layers=[0,3]" in " ".join(capsys.readouterr().out.split())
