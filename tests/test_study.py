import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

import commands.demo as demo
import commands.jobs as jobs
import commands.study as study
from commands.cli import main as cli_main
from commands.jobs import Progress
from commands.resources import Slot
from commands.study import MANIFEST, StudyPlan, load_plan, merge_plan, parse_seeds, resolve_plan
from trainer.errors import ConfigError, SmearlensError

REPO = Path(__file__).resolve().parent.parent


def plan(**kw) -> StudyPlan:
    return StudyPlan(**dict(dict(preset="tiny", arms=("baseline", "smear"), seeds=(0, 1), steps=10), **kw))


def test_study_restarts_equal_an_uninterrupted_study():
    """A short version of `benchmarks/fault_injection.py --study` (more interrupts there): a tiny study
    interrupted in training and in analysis, rerun each time, ends with the uninterrupted study's tables."""
    cmd = [sys.executable, "benchmarks/fault_injection.py", "--study", "--kills", "3", "--seeds", "1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    found = re.search(r"study interrupts: (\d+) \(training (\d+), analysis (\d+)\); launches (\d+); processes "
                      r"outliving a killed study: (\d+); tables equal to the uninterrupted study: (\w+)", out.stdout)
    assert found, out.stdout
    # a loaded machine can finish a stage before its random interrupt: count those that happened
    assert int(found[1]) >= 1 and int(found[4]) == int(found[1]) + 1, out.stdout
    assert found[5] == "0" and found[6] == "exactly", out.stdout


def test_a_plan_only_grows():
    old = plan()
    grown = merge_plan(old, plan(arms=("canon4",), seeds=(1, 2)), Path("s/study.json"))
    assert grown.arms == ("baseline", "smear", "canon4") and grown.seeds == (0, 1, 2)
    assert merge_plan(old, plan(seeds=(0,)), Path("x")) == old  # a subset asks for nothing new
    for change in (dict(steps=20), dict(preset="cpu-small"), dict(overrides=("val_every=5",)),
                   dict(path_positions=8), dict(record_every=5)):
        key = next(iter(change))
        with pytest.raises(ConfigError, match=f"s/study.json: this study was planned with {key}"):
            merge_plan(old, plan(**change), Path("s/study.json"))


def test_bare_command_continues_the_study_in_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="needs --preset"):
        resolve_plan(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps(plan(overrides=("val_every=0",), path_positions=8).to_json()))
    assert load_plan(tmp_path) == plan(overrides=("val_every=0",), path_positions=8)
    assert resolve_plan(tmp_path) == load_plan(tmp_path)
    added = resolve_plan(tmp_path, arms=["dose-0.8"])
    assert merge_plan(load_plan(tmp_path), added, tmp_path).arms == ("baseline", "smear", "dose-0.8")
    (tmp_path / MANIFEST).write_text(json.dumps({"preset": "tiny"}))
    with pytest.raises(ConfigError, match="not a study plan"):
        load_plan(tmp_path)


@pytest.mark.parametrize("text, seeds", [("3", (0, 1, 2)), ("0,4,7", (0, 4, 7)), ("2-4", (2, 3, 4)),
                                          ("5,", (5,)), ("0,10-11,0", (0, 10, 11))])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "a,b"], "--seeds 'a,b'"),
        (["--arms", "smear,nonsense"], "unknown arm 'nonsense'"),
        (["--set", "nonsense=1"], "--set nonsense"),
        (["--steps", "20"], "this study was planned with steps 10, not 20"),
        (["--metrics", "prev_token", "wrong"], "wrong"),
        (["--path-positions", "0"], "--path-positions 0 must be at least 1"),
    ],
)
def test_bad_study_input_gives_one_line_error(extra, message, tmp_path, capsys):
    if "--path-positions" not in extra:
        (tmp_path / MANIFEST).write_text(json.dumps(plan().to_json()))
    assert cli_main(["study", "--out", str(tmp_path), "--preset", "tiny", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smearlens: error:") and message in err and "\n" not in err
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # refused before any run folder was made


def test_one_study_at_a_time_in_a_folder(tmp_path, capsys):
    with FileLock(tmp_path / study.LOCK_FILE):
        assert cli_main(["study", "--out", str(tmp_path), "--preset", "tiny", "--steps", "1"]) == 2
    assert "another study is running in this folder" in capsys.readouterr().err


def test_the_demo_is_a_study_with_its_layout(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(demo, "native_bf16_matmul", lambda device: True)
    monkeypatch.setattr(demo, "run_study", lambda plan, runs_dir, **kw: seen.update(plan=plan, runs=runs_dir, **kw))
    demo.run_demo(seeds=3, out=tmp_path / "checkpoints", figures=tmp_path / "figures")
    p = seen["plan"]
    # ten minutes on two cores: half of cpu-small's 1,600 steps, under bf16 autocast
    assert (p.preset, p.arms, p.seeds, p.steps) == ("cpu-small", ("baseline", "smear", "dose-0.8"), (0, 1, 2), 800)
    assert p.overrides == ("autocast=bf16",)
    assert p.record_every == 50 and p.metrics == study._metrics()
    assert seen["runs"] == tmp_path / "checkpoints" and seen["tables"] == tmp_path / "checkpoints" / "analysis"
    assert seen["figures"] == tmp_path / "figures" and seen["report"] == tmp_path / "figures" / "report.md"
    assert seen["notebooks"] and seen["command"].startswith("smearlens demo --preset cpu-small --seeds 3")
    assert seen["command"].endswith("--set autocast=bf16")
    # a CPU without bf16 GEMMs (AVX2) trains the demo in fp32: its bf16 autocast is many times slower
    monkeypatch.setattr(demo, "native_bf16_matmul", lambda device: False)
    assert demo.demo_plan().overrides == ("autocast=fp32",)


def test_the_demo_trains_as_told():
    # a --set replaces the demo's own setting of that name, and adds any other
    p = demo.demo_plan(steps=1600, overrides=["autocast=fp32", "val_every=100"])
    assert p.steps == 1600 and p.overrides == ("autocast=fp32", "val_every=100")
    assert demo.demo_plan(preset="tiny").steps == 40  # another preset keeps its own schedule


def test_jobs_wait_for_what_they_need(tmp_path):
    # one queue for training and analysis: a run's analysis starts once its training ends, and any free
    # core takes the first job that is ready (here: b's analysis while a trains on)
    # a trains until b's analysis has ended (then a few polls more; at most a minute), not for a fixed
    # time: a loaded machine can take longer than any sleep to start a Python process
    marker = tmp_path / "analysed b"

    def job(name: str, seconds: float, after=None, until: Path | None = None, touch: Path | None = None) -> jobs.Job:
        wait = (f"t = time.time()\nwhile not pathlib.Path({str(until)!r}).exists() and time.time() < t + 60:"
                " time.sleep(0.05)\n") if until else ""
        mark = f"pathlib.Path({str(touch)!r}).touch()\n" if touch else ""
        code = f"import pathlib, time\n{wait}time.sleep({seconds})\nprint(time.time())\n{mark}"
        return jobs.Job([sys.executable, "-c", code], tmp_path / f"{name}.log", name, note=name, after=after)

    train_a, train_b = job("train a", 8 * jobs.POLL, until=marker), job("train b", 0.2)
    queue = [train_a, train_b, job("analyse a", 0.1, after=train_a), job("analyse b", 0.1, after=train_b, touch=marker)]
    order = []
    jobs.run_jobs(queue, [Slot()] * 2, lambda j, s: order.append(j.note), lambda running: None)
    assert order == ["train b", "analyse b", "train a", "analyse a"]
    ended = {j.note: float((tmp_path / f"{j.note}.log").read_text()) for j in queue}
    assert ended["analyse b"] < ended["train a"] < ended["analyse a"]
    with pytest.raises(SmearlensError, match="waits for"):
        jobs.run_jobs([job("orphan", 0, after=job("never queued", 0))], [Slot()], lambda j, s: None, lambda r: None)


def test_analyses_go_first_until_the_last_trainings():
    def queued(what: str, n: int) -> list[jobs.Job]:
        return [jobs.Job([], Path(f"{what}{i}.log"), what) for i in range(n)]

    analyses = queued("analysis", 2)
    for left in (study.TAIL_TRAININGS + 1, study.TAIL_TRAININGS):
        trainings = queued("training", left)
        ready = [*trainings, *analyses]
        picked = study.pick_job(ready, ready)
        # a long study analyses what it trained; its last trainings go first, analyses filling the tail
        assert picked is (analyses[0] if left > study.TAIL_TRAININGS else trainings[0])
    assert study.pick_job(analyses, [*queued("training", 1), *analyses]) is analyses[0]  # nothing else ready


def test_step_rate_counts_training_time_only_and_forgets_old_slowness():
    bar = Progress(train_total=10_000, train_done=0, analyses=0, jobs=2, enabled=False)
    bar.training(0, 0, now=0.0)
    bar.training(100, 2, now=50.0)  # two processes at 1 step/s each
    assert bar.step_rate == pytest.approx(2.0)
    bar.training(150, 1, now=100.0)  # one core analysing: training is no slower, the rate stays
    assert bar.step_rate == pytest.approx(2.0)
    bar.training(150, 2, now=400.0)  # paused five minutes (training held back, as when stopped)
    assert bar.step_rate == pytest.approx(150 / 750 * 2)  # 150 steps in 750 process-seconds
    bar.training(150, 2, now=1000.0)  # ten minutes without a step: no rate to price with
    assert bar.step_rate is None and bar.left() == (None, None)
    for k in range(1, 13):  # it trains again at 1 step/s a process: the pause leaves the window
        bar.training(150 + 100 * k, 2, now=1000.0 + 50 * k)
    assert bar.step_rate == pytest.approx(2.0)
    bar.close()


def test_time_left_adds_training_and_analysis():
    bar = Progress(train_total=100, train_done=40, analyses=4, enabled=False)
    assert bar.left() == (None, None)  # nothing measured: no rate to price with
    bar.step_rate = 2.0  # steps a second, all processes
    left, done = bar.left()
    assert left == pytest.approx(60 / 2 + 4 * Progress.ANALYSIS_PRIOR / 2)
    assert done == pytest.approx(40 / 2)
    bar.train_done = 100
    bar.analysis(3.0, worked=True)
    bar.analysis(100.0, worked=False)  # an analysis already done: its seconds are not a measurement
    left, _ = bar.left()
    assert left == pytest.approx(2 * 3.0)
    bar.close()
    # every run trained before this study process started: analysis priced at the prior's seconds, no "?"
    rerun = Progress(train_total=100, train_done=100, analyses=3, analysed=1, enabled=False)
    assert rerun.left()[0] == pytest.approx(2 * Progress.ANALYSIS_PRIOR_SECONDS)
    rerun.close()


def test_lambda_learning_rate_reaches_only_arms_with_a_learned_lambda():
    # a `--set smear_lr_mult=0.1` study still trains its plain baseline (the trainer refuses the setting there)
    overrides = ("smear_lr_mult=0.1", "autocast=bf16")
    assert study.arm_overrides(overrides, "smear") == list(overrides)
    assert study.arm_overrides(overrides, "smear-nogate") == list(overrides)
    assert study.arm_overrides(overrides, "baseline") == ["autocast=bf16"]
    assert study.arm_overrides(overrides, "dose-0.8") == ["autocast=bf16"]


def test_a_study_without_checkpoints_goes_on_elsewhere(tiny_data, tmp_path):
    """--drop-checkpoints: each analysed run keeps its records and marker, not its step folders; a copy of
    the study (`study-copy`) trains nothing again; the markers count only with the tables and metrics."""
    import pandas as pd

    args = ["study", "--preset", "tiny", "--arms", "baseline,smear", "--seeds", "1", "--steps", "6",
            "--data", str(tiny_data), "--set", "val_every=0", "--record-every", "3", "--metrics", "prev_token",
            "smear", "--no-progress"]
    first = tmp_path / "first"
    assert cli_main([*args, "--out", str(first), "--drop-checkpoints"]) == 0
    runs = sorted(p for p in first.iterdir() if (p / "run.json").exists())
    assert len(runs) == 2 and not list(first.glob("*/step_*"))
    assert all(json.loads((r / study.DONE_FILE).read_text()) == {"steps": 6, "metrics": ["prev_token", "smear"]}
               for r in runs)
    heads = pd.read_parquet(first / "analysis" / "heads.parquet")

    moved = tmp_path / "moved"
    assert cli_main(["study-copy", str(first), str(moved)]) == 0
    assert not list(moved.glob("*/*.log")) and not list(moved.glob("*/tokenizer.json"))
    assert (moved / "summary.csv").read_text() == (first / "summary.csv").read_text()  # the headline travels too
    (moved / "report.md").unlink()
    assert cli_main([*args, "--out", str(moved)]) == 0
    assert not list(moved.glob("*/train.log"))  # nothing trained
    assert (moved / "report.md").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(moved / "analysis" / "heads.parquet"), heads)

    plan = load_plan(moved)
    assert study.analysed_runs(plan, [moved / r.name for r in runs], moved / "analysis") == {moved / r.name for r in runs}
    grown = StudyPlan(**{**plan.__dict__, "metrics": plan.metrics + ("induction",)})
    assert study.analysed_runs(grown, [moved / r.name for r in runs], moved / "analysis") == set()
    (moved / "analysis" / "heads.parquet").unlink()  # tables gone: the markers alone do not count
    assert study.analysed_runs(plan, [moved / r.name for r in runs], moved / "analysis") == set()
