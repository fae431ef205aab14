"""Where a study's jobs run on one machine: its cores, its GPUs cut into disjoint slots, multi-rank launches."""

import json
import re
import sys
import time
from pathlib import Path

import pytest

import commands.jobs as jobs
import commands.study as study
from commands.resources import Launch, Slot, gpu_slots, local_slots, train_command, visible_gpus
from trainer import checkpoint as ckpt
from trainer.errors import ConfigError

GPUS = [str(i) for i in range(8)]


@pytest.mark.parametrize("per_run, expected", [
    (1, [(d,) for d in GPUS]),
    (2, [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")]),
    (3, [("0", "1", "2"), ("3", "4", "5")]),  # two GPUs left over: too few for a run
    (8, [tuple(GPUS)]),
])
def test_gpus_are_cut_into_disjoint_slots(per_run, expected):
    slots = gpu_slots(GPUS, per_run)
    assert slots == expected
    used = [d for s in slots for d in s]
    assert len(used) == len(set(used))  # no GPU in two slots


def test_a_run_cannot_ask_for_more_gpus_than_there_are():
    with pytest.raises(ConfigError, match=r"--gpus-per-run 3: this machine shows 2 GPU\(s\) \(0, 1\)"):
        gpu_slots(["0", "1"], 3)
    with pytest.raises(ConfigError, match="--gpus-per-run 1: this machine shows 0 GPU"):
        local_slots(Launch(gpus_per_run=1), runs=4, cores=2, gpus=[])
    with pytest.raises(ConfigError, match="--gpus-per-run -1"):
        Launch(gpus_per_run=-1)
    with pytest.raises(ConfigError, match="--jobs 0"):
        Launch(jobs=0)


@pytest.mark.parametrize("env, expected", [
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, ["0"]),  # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": "GPU-5e1f, GPU-77aa"}, ["GPU-5e1f", "GPU-77aa"]),
])
def test_the_gpus_handed_out_are_those_this_process_may_use(env, expected):
    assert visible_gpus(env) == expected


def test_cpu_slots_one_a_core_capped_by_the_runs():
    # 16 cores: one single-thread run a core; fewer runs left than cores: each gets a share as threads
    assert local_slots(Launch(), runs=27, cores=16, gpus=[]) == [Slot(1)] * 16
    assert local_slots(Launch(), runs=4, cores=16, gpus=[]) == [Slot(4)] * 4
    assert local_slots(Launch(jobs=2), runs=27, cores=16, gpus=[]) == [Slot(8)] * 2
    assert local_slots(Launch(), runs=0, cores=2, gpus=[]) == [Slot(2)]  # nothing left: one slot, idle
    # a CPU run on a GPU machine sees no GPU
    assert local_slots(Launch(gpus_per_run=0), runs=3, cores=2, gpus=GPUS)[0].env()["CUDA_VISIBLE_DEVICES"] == ""


def test_gpu_slots_a_run_each():
    assert local_slots(Launch(), runs=27, cores=16, gpus=GPUS) == [Slot(2, (d,)) for d in GPUS]
    assert local_slots(Launch(gpus_per_run=4), runs=27, cores=16, gpus=GPUS) == [
        Slot(8, ("0", "1", "2", "3")), Slot(8, ("4", "5", "6", "7"))]
    assert len(local_slots(Launch(jobs=3), runs=27, cores=16, gpus=GPUS)) == 3
    assert Slot(2, ("4", "5")).env() == {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "4,5"}


def test_running_jobs_never_share_a_gpu(tmp_path):
    # six jobs in two slots of two GPUs: each job sees its slot's GPUs, and two jobs at once never the same
    code = ("import os, time; t = time.time(); time.sleep(0.3); "
            "print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['OMP_NUM_THREADS'], t, time.time())")
    queue = [jobs.Job([sys.executable, "-c", code], tmp_path / f"{i}.log", "training") for i in range(6)]
    runner = jobs.LocalRunner(local_slots(Launch(gpus_per_run=2), runs=6, cores=2, gpus=["0", "1", "2", "3"]))
    assert (runner.width, runner.ranks) == (2, 2)
    runner.run(queue, lambda j, s: None, lambda running: None, lambda ready, todo: ready[0])
    seen = [(gpus, threads, float(t0), float(t1)) for gpus, threads, t0, t1 in
            (j.log.read_text().split() for j in queue)]
    assert {s[0] for s in seen} == {"0,1", "2,3"} and {s[1] for s in seen} == {"1"}
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            if a[2] < b[3] and b[2] < a[3]:  # ran at the same time
                assert a[0] != b[0]


def test_a_multi_rank_run_starts_under_torchrun(tiny_data, tmp_path):
    """The study's launch command for a run of two GPUs, run on the CPU: torchrun starts two gloo ranks,
    each prints its summary, and the run is trained."""
    plan = study.StudyPlan(preset="tiny", arms=("smear",), seeds=(0,), steps=2, record_every=0,
                           overrides=("n_checkpoints=1", "val_every=0"), metrics=("prev_token",))
    training, _ = study.training_jobs(plan, tiny_data, tmp_path, set(), ranks=2)
    (job,) = training.values()
    assert job.cmd[:6] == train_command([], 2)[:6] and "--resume" in job.cmd
    assert train_command(["--seed", "0"]) == [sys.executable, "-m", "commands.cli", "train", "--seed", "0"]
    t0 = time.perf_counter()
    jobs.run_jobs([job], [Slot(1)], lambda j, s: None, lambda running: None)  # no GPU in the slot: gloo
    # each rank prints its summary (after its progress bar, on the same line where both share the log)
    summaries = [json.loads(found) for found in re.findall(r'\{"run": [^\n]*?\}', job.log.read_text())]
    assert [s["step"] for s in summaries] == [2, 2], job.log.read_text()[-2000:]  # one a rank
    assert study.done_steps(tmp_path / "tiny-s0-smear") == 2 and ckpt.complete_checkpoints(tmp_path / "tiny-s0-smear")
    print(f"two-rank launch: {time.perf_counter() - t0:.1f} s")


def test_cluster_options_fail_in_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    from commands.cli import main as cli_main

    args = ["study", "--out", str(tmp_path / "s"), "--preset", "tiny", "--steps", "1", "--data", str(tiny_data)]
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed: `import ray` fails
    for extra, message in ((["--cluster", "ray"], "--cluster ray needs Ray: pip install -e \".[cluster]\""),
                           (["--address", "head:6379"], "--address head:6379: only with --cluster ray"),
                           (["--gpus-per-run", "2"], "--gpus-per-run 2: this machine shows 0 GPU(s)")):
        if "--gpus-per-run" in extra:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert cli_main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("smearlens: error:") and message in err and "\n" not in err, err
    assert not [p for p in (tmp_path / "s").iterdir() if p.is_dir()]  # refused before any run
