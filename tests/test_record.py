"""Importing the speedrun record's checkpoints, evaluating like the record, and the GPU benchmark's CPU path.

The record-layout side is written here from the record's published code (2025-09-18 with the
smear, 2025-09-15 without), not from trainer/record.py: names under `_orig_mod.`, every
nn.Embedding and nn.Linear in bf16, and the scalars vector of 6n (smear) or 5n entries padded with
ones to a multiple of the world size.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import pickle
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import load_model, read_meta
from trainer.config import get_preset, replace
from trainer.errors import CheckpointError, ConfigError, DataError
from trainer.model import GPT
from commands.cli import build_parser
from trainer.record import (export_record_state_dict, import_record, import_state_dict,
                            receptive_field, record_parameter_table, record_state_dict, record_val_loss,
                            segment_spans)
from trainer.shards import write_shard

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = get_preset("tiny").train
# 6 layers: 5n = 30 and 6n = 36 both need padding for 8 ranks (to 32 and 40), none for 1
SIX = replace(get_preset("tiny").model, n_layers=6, no_attn_layers=(4,), long_window_layers=(0, 3), n_value_embeds=3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared, loaded machine OpenMP's
    threads wait on each other: measured here, a tiny forward took 15 ms on one thread, 630 ms on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def record_layout(n_layers: int, smear: bool, world_size: int, V: int, d: int, heads: int,
                  no_attn=(7,), no_mlp=(0,)) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of the record's `model.state_dict()` (prefix stripped)."""
    bf16, fp32 = torch.bfloat16, torch.float32
    used = (6 if smear else 5) * n_layers
    table = {"embed.weight": ((V, d), bf16), "lm_head.weight": ((V, d), bf16),
             "scalars": ((used + (-used) % world_size,), fp32)}
    table.update({f"value_embeds.{i}.weight": ((V, d), bf16) for i in range(3)})
    if smear:
        table["smear_gate.weight"] = ((1, 12), bf16)
    for i in range(n_layers):
        if i not in no_attn:
            table[f"blocks.{i}.attn.qkvo_w"] = ((4, d, d), fp32)
            table[f"blocks.{i}.attn.attn_gate.weight"] = ((heads, 12), bf16)
        if i not in no_mlp:
            table[f"blocks.{i}.mlp.c_fc"] = ((d, 4 * d), fp32)
            table[f"blocks.{i}.mlp.c_proj"] = ((d, 4 * d), fp32)
    return table


def randomized(config, seed: int = 0) -> GPT:
    """A model with every weight (zero-initialised ones too) random, so each mapping matters."""
    model = GPT(config, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def as_record_state(model: GPT) -> None:
    """What the record's training leaves: bf16 copies of its embeddings and linears, and the windows
    and YaRN of its final validation (schedule 3 → 7 → 11, then 13 with 20 in the last layer)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("embed.", "value_embeds.", "lm_head.", "smear_gate.")) or name.endswith("attn_gate.weight"):
                p.copy_(p.bfloat16().float())
    for long_blocks in (7, 11):
        model.set_windows(long_blocks)
    model.set_windows(13, 20)


def save_record_file(path: Path, sd: dict, step: int = 40, **extra) -> Path:
    torch.save(dict(step=step, code="print('train_gpt.py')", model=sd, optimizers=[{"state": {}, "param_groups": []}],
                    **extra), path)
    return path


def tokens_with_documents(n: int, vocab: int = 512, bos: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(1, vocab, n).astype(np.uint16)
    t[rng.choice(n, n // 40, replace=False)] = bos
    t[0] = bos
    return t


# ---- import ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("smear", [True, False])
@pytest.mark.parametrize("world_size", [1, 8])
def test_record_layout_imports_to_the_same_logits(tmp_path, smear, world_size):
    source = randomized(replace(SIX, smear=smear))
    sd = export_record_state_dict(source, world_size)
    layout = record_layout(6, smear, world_size, 512, 64, 2, no_attn=(4,))
    assert {k: (tuple(v.shape), v.dtype) for k, v in sd.items()} == {"_orig_mod." + k: v for k, v in layout.items()}
    scalars = sd["_orig_mod.scalars"]
    used = (6 if smear else 5) * 6
    assert torch.equal(scalars[used:], torch.ones(scalars.numel() - used))  # the record pads with ones

    file = save_record_file(tmp_path / "state_step000040.pt", sd)
    out = import_record(file, tmp_path / "run", world_size=world_size, config=replace(SIX, smear=not smear),
                        train=TINY_TRAIN, tokenizer=None)  # the config's smear is overridden by detection
    imported, meta = load_model(out)
    assert imported.config.smear == smear and meta["arm"] == ("smear" if smear else "baseline")
    assert meta["step"] == 40 and meta["windows"] == [13, 20] and meta["seed"] == -1

    as_record_state(source)
    tokens = torch.as_tensor(tokens_with_documents(2 * 96).astype(np.int64)).view(2, 96)
    with torch.no_grad():
        torch.testing.assert_close(imported(tokens), source(tokens), atol=1e-5, rtol=0)
    torch.testing.assert_close(imported.scalars[:used], source.scalars[:used], atol=0, rtol=0)
    if not smear:
        assert torch.equal(imported.scalars[5 * 6:6 * 6], torch.zeros(6))  # no smear λ in a baseline


def test_yarn_is_the_records_end_of_training_state():
    model = import_state_dict(record_state_dict(dict(model=export_record_state_dict(randomized(SIX))), "x"),
                              SIX, TINY_TRAIN, steps=40)
    # the record's Yarn.apply on 3→7, 7→11, 11→13: the scale grows by 0.2·ln(new/old) + 1 each time
    growth = math.prod(0.2 * math.log(b / a) + 1 for a, b in ((3, 7), (7, 11), (11, 13)))
    assert float(model.yarn.attn_scale) == pytest.approx(SIX.attn_scale * growth, rel=1e-6)
    assert model.window_blocks.tolist() == [13, 20]


@pytest.mark.parametrize("smear", [True, False])
@pytest.mark.parametrize("world_size", [1, 8])
def test_parameter_table_for_speedrun_matches_the_record(smear, world_size):
    cfg = replace(get_preset("speedrun-124m").model, smear=smear)
    assert record_parameter_table(cfg, world_size) == record_layout(12, smear, world_size, 50304, 768, 6)
    # 72 scalars with the smear on any world size; 60 without, padded to 64 on 8 GPUs
    assert record_parameter_table(cfg, world_size)["scalars"][0] == ((72,) if smear else ((60,), (64,))[world_size == 8])


class Payload:
    """Unpickling this opens (so creates) `marker`: code that a weights-only load must never run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe))).close()  # an ordinary unpickle does run it
    assert probe.exists()

    marker = tmp_path / "marker"
    sd = export_record_state_dict(randomized(SIX))
    file = save_record_file(tmp_path / "evil.pt", sd, extra=Payload(marker))
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: loading it would run code \(it needs io\.open\)") as e:
        import_record(file, tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, message", [
    (dict(weights=torch.zeros(3)), "not a record checkpoint: expected the dict of step, code, model"),
    (torch.zeros(3), "not a record checkpoint: .*found a tensor of shape"),
    (dict(step=40, model=[1, 2]), "its 'model' is a list, not a state dict"),
])
def test_a_pt_that_is_not_a_record_checkpoint(tmp_path, content, message):
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=message) as e:
        import_record(tmp_path / "other.pt", tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)
    assert "\n" not in str(e.value) and "other.pt" in str(e.value)


def test_missing_step_is_not_a_record_checkpoint(tmp_path):
    torch.save(dict(model=export_record_state_dict(randomized(SIX))), tmp_path / "nostep.pt")
    with pytest.raises(CheckpointError, match="no positive integer 'step'"):
        import_record(tmp_path / "nostep.pt", tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)


def test_another_architecture(tmp_path):
    # a deeper model of the same family: names the 6-layer record lacks
    deeper = export_record_state_dict(randomized(replace(SIX, n_layers=8, no_attn_layers=(4,))))
    save_record_file(tmp_path / "deeper.pt", deeper)
    with pytest.raises(CheckpointError, match=r"not the record's architecture \(6 layers.*unexpected blocks\.6") as e:
        import_record(tmp_path / "deeper.pt", tmp_path / "a", config=SIX, train=TINY_TRAIN, tokenizer=None)
    assert "\n" not in str(e.value)
    # a wider one: same names, other shapes
    save_record_file(tmp_path / "wider.pt", export_record_state_dict(randomized(replace(SIX, d_model=128, d_head=64))))
    with pytest.raises(CheckpointError, match=r"tensor .* has shape \(.*128.*\), the record's is"):
        import_record(tmp_path / "wider.pt", tmp_path / "b", config=SIX, train=TINY_TRAIN, tokenizer=None)
    # another model altogether (nanoGPT's GPT-2)
    save_record_file(tmp_path / "gpt2.pt", {"_orig_mod.transformer.wte.weight": torch.zeros(4, 4)})
    with pytest.raises(CheckpointError, match=r"missing blocks\.0\.attn\.attn_gate\.weight, .* and \d+ more; unexpected transformer\.wte\.weight"):
        import_record(tmp_path / "gpt2.pt", tmp_path / "c", config=SIX, train=TINY_TRAIN, tokenizer=None)


def test_scalars_padded_for_another_world_size(tmp_path):
    save_record_file(tmp_path / "ws8.pt", export_record_state_dict(randomized(replace(SIX, smear=False)), 8))
    with pytest.raises(CheckpointError, match=r"scalars has shape \(32,\); the record's baseline model on 1 ranks has \(30,\)"):
        import_record(tmp_path / "ws8.pt", tmp_path / "run", world_size=1, config=SIX, train=TINY_TRAIN, tokenizer=None)


def test_truncated_file(tmp_path):
    file = save_record_file(tmp_path / "full.pt", export_record_state_dict(randomized(SIX)))
    data = file.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a complete torch.save archive \(truncated") as e:
        import_record(tmp_path / "cut.pt", tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)
    assert "\n" not in str(e.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        import_record(tmp_path / "empty.pt", tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)


def test_an_import_never_overwrites_another_run(tmp_path):
    sd = export_record_state_dict(randomized(SIX))
    a, b = save_record_file(tmp_path / "a.pt", sd), save_record_file(tmp_path / "b.pt", sd, step=41)
    import_record(a, tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)
    import_record(a, tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)  # the same file again: fine
    with pytest.raises(ConfigError, match="already holds a run from .*a.pt; choose another --out"):
        import_record(b, tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)


# ---- evaluation like the record ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model() -> GPT:
    model = randomized(get_preset("tiny").model)
    model.set_windows(13, 20)
    return model


def direct_val_loss(model: GPT, tokens: np.ndarray, n_tokens: int, row: int) -> float:
    """The record's validation loop, written out: consecutive rows of the stream, mean of row means."""
    t = torch.as_tensor(tokens.astype(np.int64))
    with torch.no_grad():
        losses = [float(model(t[i:i + row], t[i + 1:i + row + 1], return_type="loss")) for i in range(0, n_tokens, row)]
    return sum(losses) / len(losses)


def test_record_val_loss_equals_the_direct_computation(tiny_model):
    tokens = tokens_with_documents(2 * 512 + 7)
    assert tokens[512] != 0  # the second row starts mid-document
    expected = direct_val_loss(tiny_model, tokens, 2 * 512, 512)
    assert record_val_loss(tiny_model, tokens, 2 * 512, 512) == pytest.approx(expected, abs=1e-5)
    # in windows that each reach back the model's whole receptive field: the same losses
    reach = receptive_field(tiny_model)
    assert reach == 52 + 24 + 80 + 1  # layers 0 (long), 1 (short), 3 (last); layer 2 has no attention; smear
    for segment in (2 * reach + 5, 400):
        assert record_val_loss(tiny_model, tokens, 2 * 512, 512, segment_tokens=segment) == pytest.approx(expected, abs=1e-5)


def test_windows_cover_the_row_once_with_full_context():
    for T, length, context in [(1000, 300, 157), (1000, 158, 157), (512, 512, 10), (513, 512, 10), (10_000, 2000, 999)]:
        seen = []
        spans = segment_spans(T, length, context)
        for i, (start, keep) in enumerate(spans):
            assert start + length <= T or len(spans) == 1
            assert keep >= context or i == 0
            seen += range(start + keep, min(start + length, T))
        assert seen == list(range(T))
    with pytest.raises(ConfigError, match="longer than the model's reach"):
        segment_spans(1000, 100, 157)


def test_record_val_loss_bad_input(tiny_model):
    tokens = tokens_with_documents(1000)
    with pytest.raises(ConfigError, match="multiple of the 256-token row"):
        record_val_loss(tiny_model, tokens, 300, 256)
    with pytest.raises(DataError, match="has 1,000 tokens; evaluating 1,024 needs 1,025"):
        record_val_loss(tiny_model, tokens, 1024, 256)


def run_cli(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        args.func(args)
    return json.loads(out.getvalue())


def test_eval_command_on_an_imported_checkpoint(tmp_path):
    source = randomized(get_preset("tiny").model)
    file = save_record_file(tmp_path / "state.pt", export_record_state_dict(source, 8))
    ckpt = import_record(file, tmp_path / "run", config=get_preset("tiny").model, train=TINY_TRAIN, tokenizer=None)
    tokens = tokens_with_documents(4096 + 100)
    (tmp_path / "data").mkdir()
    write_shard(tmp_path / "data" / "fineweb_val_000000.bin", tokens)  # FineWeb's naming inside a folder
    result = run_cli(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--tokens", "2048",
                      "--row-tokens", "1024", "--device", "cpu"])
    model, _ = load_model(ckpt)
    assert result["val_loss"] == pytest.approx(direct_val_loss(model, tokens, 2048, 1024), abs=1e-5)
    assert (result["rows"], result["windows"], result["precision"]) == (2, [13, 20], "fp32")


def test_eval_without_data_says_to_pass_it(tmp_path):
    file = save_record_file(tmp_path / "state.pt", export_record_state_dict(randomized(SIX)))
    import_record(file, tmp_path / "run", config=SIX, train=TINY_TRAIN, tokenizer=None)
    with pytest.raises(ConfigError, match="names no data folder; pass --data"):
        run_cli(["eval", str(tmp_path / "run"), "--device", "cpu"])


def test_import_command_prints_the_checkpoint(tmp_path, monkeypatch):
    import trainer.record as record

    file = save_record_file(tmp_path / "state.pt", export_record_state_dict(randomized(SIX)))
    small = dict(config=SIX, train=TINY_TRAIN, tokenizer=None)  # speedrun-124m is the command's own default
    monkeypatch.setattr(record, "import_record", lambda *a, **k: import_record(*a, **k, **small))
    result = run_cli(["import-record", str(file), "--out", str(tmp_path / "run"), "--seed", "3"])
    assert result["arm"] == "smear" and result["windows"] == [13, 20]
    assert read_meta(Path(result["checkpoint"]))["seed"] == 3


# ---- GPU benchmark: its CPU path --------------------------------------------------------------------

def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "benchmarks" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path, capsys):
    bench = load_benchmark()
    assert bench.RECORD_STEP_MS == pytest.approx(92.9, abs=0.05)
    assert bench.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and "smear/baseline" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["arms"]) == {"smear", "baseline"}
    assert list(result["arms"]["smear"]["per_window"]) == ["3", "7", "11"]  # the record's three training windows


def test_gpu_benchmark_without_cuda_measures_nothing(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert load_benchmark().main([]) == 0
    assert "not measured" in capsys.readouterr().out


def test_benchmark_tokens_are_bos_aligned_documents():
    tokens = load_benchmark().synthetic_tokens(50257, 50256, 200_000)
    starts = np.flatnonzero(tokens == 50256)
    assert tokens[0] == 50256 and tokens.max() < 50257
    lengths = np.diff(starts)
    assert 200 < np.median(lengths) < 800 and (lengths > 2048).any()  # some documents are cut at 2,048
