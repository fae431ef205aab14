"""Every loader meets random and mutated files with our own error type, never a deep traceback.

Each property runs 1,000 cases (CI runs them all); a case passes when the loader either accepts
the input or raises a SmearlensError subclass.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from trainer import checkpoint as ckpt
from trainer.errors import SmearlensError
from trainer.model import GPT
from trainer.config import get_preset
from trainer.shards import read_shard, write_shard
from trainer.tokenizer import Tokenizer, train_bpe

CASES = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
WORK = Path(tempfile.mkdtemp(prefix="smearlens-hostile-"))


def mutations(valid: bytes):
    """Random bytes, or the valid file truncated, extended, or with bytes overwritten."""
    n = len(valid)
    flips = st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)), min_size=1, max_size=8)
    return st.one_of(
        st.binary(max_size=2048),
        st.integers(0, n).map(lambda k: valid[:k]),
        st.binary(min_size=1, max_size=64).map(lambda extra: valid + extra),
        flips.map(lambda fs: _flip(valid, fs)),
    )


def _flip(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for i, b in flips:
        if i < len(out):
            out[i] = b
    return bytes(out)


def accepts_or_refuses(load, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load(path)
    except SmearlensError as e:
        assert str(e) and "\n" not in str(e)


def _valid_shard() -> bytes:
    write_shard(WORK / "valid.bin", np.arange(300) % 512)
    return (WORK / "valid.bin").read_bytes()


@CASES
@given(data=mutations(_valid_shard()))
def test_shard_loader(data):
    accepts_or_refuses(lambda p: np.asarray(read_shard(p, vocab_size=512)).sum(), WORK / "shard.bin", data)


def _valid_tokenizer() -> bytes:
    train_bpe(["the cat sat on the mat " * 20, "a dog ran far away " * 20], 300).save(WORK / "tok")
    return (WORK / "tok" / "tokenizer.json").read_bytes()


def _load_tokenizer(path: Path) -> None:
    tok = Tokenizer.load(path.parent)
    tok.decode(tok.encode("the cat"))


@CASES
@given(data=mutations(_valid_tokenizer()))
def test_tokenizer_loader(data):
    (WORK / "tokdir").mkdir(exist_ok=True)
    accepts_or_refuses(_load_tokenizer, WORK / "tokdir" / "tokenizer.json", data)


@pytest.fixture(scope="module")
def saved_checkpoint() -> Path:
    model = GPT(get_preset("tiny").model)
    meta = dict(model_config=json.loads(json.dumps(__import__("dataclasses").asdict(model.config))),
                arm="smear", seed=0, run="r")
    state = dict(step=1, adam={}, muon={}, loader=dict(epoch=0, cursor=3, batches=1), rng={"torch": torch.get_rng_state()})
    return ckpt.save_checkpoint(WORK / "run", 1, model, meta, state)


def _ckpt_copy(name: str) -> Path:
    src = WORK / "run" / "step_000001"
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


@pytest.mark.parametrize("part, load", [(ckpt.META_FILE, _load_model), (ckpt.MODEL_FILE, _load_model),
                                        (ckpt.STATE_FILE, _load_state)], ids=["metadata", "weights", "resume_state"])
@CASES
@given(data=st.data())
def test_checkpoint_file_loader(saved_checkpoint, part, load, data):
    """One file of a valid checkpoint mutated, the others intact."""
    dst = _ckpt_copy(part)
    blob = data.draw(mutations((saved_checkpoint / part).read_bytes()))
    accepts_or_refuses(load, dst / part, blob)


def test_wrong_tensor_shape_is_named(saved_checkpoint):
    dst = _ckpt_copy("shape")
    weights = {k: v for k, v in GPT(get_preset("tiny").model).state_dict().items()}
    weights["scalars"] = torch.zeros(3)
    save_file(weights, str(dst / ckpt.MODEL_FILE))
    with pytest.raises(SmearlensError, match="scalars has shape"):
        ckpt.load_model(dst)


def _valid_record_file() -> bytes:
    from trainer.record import export_record_state_dict

    sd = export_record_state_dict(GPT(get_preset("tiny").model), world_size=1)
    torch.save(dict(step=3, code="", model=sd, optimizers=[]), WORK / "record.pt")
    return (WORK / "record.pt").read_bytes()


def _import_record(path: Path) -> None:
    from trainer.record import import_state_dict, read_record_file, record_state_dict

    sd = record_state_dict(read_record_file(path), str(path))
    import_state_dict(sd, get_preset("tiny").model)


@CASES
@given(data=mutations(_valid_record_file()))
def test_record_checkpoint_loader(data):
    accepts_or_refuses(_import_record, WORK / "mutated_record.pt", data)


def _valid_table() -> bytes:
    import pandas as pd

    rows = [dict(run="r", preset="tiny", arm=arm, seed=0, step=1, tokens=512, layer=0, head=h, metric="prev_token",
                 value=0.1 * h) for arm in ("smear", "baseline") for h in range(2)]
    pd.DataFrame(rows).to_parquet(WORK / "heads_valid.parquet", index=False)
    return (WORK / "heads_valid.parquet").read_bytes()


def _load_tables(path: Path) -> None:
    from analysis.stats import load_tables

    load_tables(path.parent, runs_dir=path.parent)


@CASES
@given(data=mutations(_valid_table()))
def test_table_loader(data):
    (WORK / "tables").mkdir(exist_ok=True)
    accepts_or_refuses(_load_tables, WORK / "tables" / "heads.parquet", data)


def test_every_torch_load_is_weights_only():
    """No code path unpickles arbitrary objects: each torch.load call names weights_only=True."""
    import re

    repo = Path(__file__).resolve().parent.parent
    for path in [*repo.glob("trainer/*.py"), *repo.glob("analysis/*.py"), *repo.glob("benchmarks/*.py")]:
        for call in re.findall(r"torch\.load\(([^)]*)\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: torch.load({call})"
