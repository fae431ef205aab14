"""A study keeps each seed's pairs on one machine kind (commands/machine_kind.py), read from the kernels."""

import json
from pathlib import Path

import pytest
import torch

from commands.machine_kind import EMULATED_CPU, NATIVE_CPU, held_seeds, kind_of, split_runs, this_kind
from commands.resources import Launch
from trainer import checkpoint as ckpt
from trainer.config import get_preset
from trainer.train import machine_info, make_run, prepare_run

NATIVE = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "bf16_gemm": "native"}
EMULATED = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "bf16_gemm": "fp32, rounded to bf16"}


def begun(run: Path, machine: dict | None) -> Path:
    run.mkdir(parents=True)
    (run / ckpt.RUN_FILE).write_text(json.dumps({"arm": "baseline", **({"machine": machine} if machine else {})}))
    return run


def test_the_kind_is_the_kernels_not_the_cpu_name():
    assert kind_of(NATIVE) == NATIVE_CPU and kind_of(EMULATED) == EMULATED_CPU  # both say "AMD EPYC"
    assert kind_of({"gpu": "NVIDIA H100", "bf16_gemm": "native"}) == "GPU NVIDIA H100"
    assert kind_of({"cpu": "x"}) not in (NATIVE_CPU, EMULATED_CPU)
    assert this_kind(Launch(gpus_per_run=0)) == kind_of(machine_info(torch.device("cpu")))


def test_a_seed_begun_on_another_kind_is_held_back_unless_allowed(tmp_path, capsys):
    runs = {0: [begun(tmp_path / "s0-baseline", NATIVE), tmp_path / "s0-smear"],  # split if s0-smear trains here
            1: [begun(tmp_path / "s1-baseline", EMULATED), tmp_path / "s1-smear"],  # this kind: fine
            2: [begun(tmp_path / "s2-baseline", NATIVE), begun(tmp_path / "s2-smear", NATIVE)],  # nothing to train
            3: [begun(tmp_path / "s3-baseline", None), tmp_path / "s3-smear"]}  # kind not recorded: not judged
    to_train = {tmp_path / f"s{s}-smear" for s in (0, 1, 3)}
    assert split_runs(runs, to_train, EMULATED_CPU) == {NATIVE_CPU: {0: ["s0-baseline"]}}
    assert held_seeds(tmp_path, runs, to_train, EMULATED_CPU, ["autocast=fp32"]) == [0]
    msg = capsys.readouterr().err
    assert f"held back: this machine is a {EMULATED_CPU}" in msg and f"seeds 0 on a {NATIVE_CPU} (s0-baseline)" in msg
    assert "--allow-split-pairs" in msg and "seeds 2" not in msg
    assert held_seeds(tmp_path, runs, to_train, EMULATED_CPU, ["autocast=fp32"], allow_split=True) == []
    assert held_seeds(tmp_path, runs, to_train - {tmp_path / "s0-smear"}, EMULATED_CPU, []) == []
    assert capsys.readouterr().err == ""
    # on the other kind, seed 1 waits instead
    assert split_runs(runs, to_train, NATIVE_CPU) == {EMULATED_CPU: {1: ["s1-baseline"]}}


def test_bf16_autocast_without_native_bf16_gemms_is_warned_about(tmp_path, capsys):
    todo = {tmp_path / "s0-baseline"}
    for here, overrides, warned in ((EMULATED_CPU, ["autocast=bf16"], True), (EMULATED_CPU, ["autocast=fp32"], False),
                                    (NATIVE_CPU, ["autocast=bf16"], False)):
        held_seeds(tmp_path, {0: list(todo)}, todo, here, overrides)
        err = capsys.readouterr().err
        assert ("warning: this is a CPU without native bf16 GEMMs" in err) == warned, (here, overrides, err)
    held_seeds(tmp_path, {0: list(todo)}, set(), EMULATED_CPU, ["autocast=bf16"])  # nothing to train
    assert capsys.readouterr().err == ""


def test_the_study_trains_the_other_seeds_and_holds_back_the_split_one(tiny_data, tmp_path, capsys):
    from commands.cli import main as cli_main

    here = machine_info(torch.device("cpu"))
    other = EMULATED if here["bf16_gemm"] == "native" else NATIVE
    out = tmp_path / "s"
    args = ["study", "--out", str(out), "--preset", "tiny", "--arms", "baseline,smear", "--seeds", "2", "--steps", "2",
            "--data", str(tiny_data), "--metrics", "prev_token", "--gpus-per-run", "0", "--no-progress"]
    begun(out / "tiny-s0-baseline", other)  # seed 0 began on the other kind (a run.json, no checkpoint yet)
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert "held back: this machine is a" in err and "tiny-s0-baseline" in err
    assert "held back, not trained here: tiny-s0-baseline, tiny-s0-smear" in err
    assert not (out / "tiny-s0-smear").exists() and not ckpt.complete_checkpoints(out / "tiny-s0-baseline")
    assert all((out / f"tiny-s1-{arm}" / "analysed.json").exists() for arm in ("baseline", "smear"))


def test_a_run_that_starts_afresh_records_this_machine(tiny_data, tmp_path):
    run, folder = make_run("tiny", get_preset("tiny"), "smear", 0, tiny_data, train_overrides={"steps": 2}), tmp_path / "run"
    prepare_run(folder, run, resume=False, device=torch.device("cpu"))
    manifest = json.loads((folder / ckpt.RUN_FILE).read_text())
    (folder / ckpt.RUN_FILE).write_text(json.dumps(dict(manifest, machine=dict(manifest["machine"], cpu="elsewhere"))))
    prepare_run(folder, run, resume=True, device=torch.device("cpu"))  # no checkpoint: it begins here
    assert json.loads((folder / ckpt.RUN_FILE).read_text())["machine"] == machine_info(torch.device("cpu"))
