"""A full disk during a checkpoint or table write, and two `analyze` runs writing one folder at once.

The full-disk tests mount a small tmpfs (root only; skipped with the reason otherwise) and fill it
with a file to leave a chosen number of bytes, so the failure lands inside a chosen write.
"""

import gc
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.measures import probes as P
from analysis.analyze import COLUMNS
from commands.cli import main as cli_main
from trainer import checkpoint as ckpt
from trainer.config import get_preset
from trainer.train import make_run, train

REPO = Path(__file__).resolve().parent.parent
DISK_SIZE = "8m"
TOKENS = "512"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_disk(tmp_path):
    """A fresh tmpfs of DISK_SIZE, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        gc.collect()  # a failed test's traceback can hold a file open on it
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "--lazy", str(mnt)], check=True)  # detached now, freed when closed


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bfree * st.f_frsize


def page(folder: Path) -> int:
    return os.statvfs(folder).f_frsize


def fill(folder: Path, leave: int) -> Path:
    """A file that takes all but `leave` bytes of the filesystem."""
    filler = folder / "filler"
    size = free_bytes(folder) - leave
    assert size > 0, "the disk is too small for this test"
    with open(filler, "wb") as f:
        f.write(b"\0" * size)
    assert abs(free_bytes(folder) - leave) <= page(folder)
    return filler


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of atomic writes (the lock file is meant to stay)."""
    return [p for p in folder.rglob(".*") if p.name != ".analyze.lock"]


def one_error_line(capsys) -> str:
    """The CLI's error: one line after any progress bar, and no traceback."""
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("smearlens: error:") and "Traceback" not in err, err
    return last


# ---- training ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", [ckpt.MODEL_FILE, ckpt.STATE_FILE])
def test_full_disk_during_checkpoint_write_stops_training_and_resume_continues(failing, tiny_data, small_disk, capsys):
    argv = ["train", "--preset", "tiny", "--arm", "smear", "--data", str(tiny_data), "--steps", "3", "--device", "cpu",
            "--record-every", "0", "--set", "n_checkpoints=1", "--set", "checkpoint_every=1", "--set", "val_every=0",
            "--out", str(small_disk)]
    assert cli_main(argv + ["--stop-at", "1"]) == 0
    run, first = small_disk / "tiny-s0-smear", small_disk / "tiny-s0-smear" / "step_000001"
    sizes = {name: (first / name).stat().st_size for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE)}
    pg = page(small_disk)
    # room for loss.csv's rewrite, the files written before the failing one, and half of that one
    before = sum(math.ceil(sizes[n] / pg) * pg for n in (ckpt.MODEL_FILE, ckpt.STATE_FILE)[:list(sizes).index(failing)])
    filler = fill(small_disk, leave=2 * pg + before + sizes[failing] // 2)
    free = free_bytes(small_disk)
    capsys.readouterr()

    assert cli_main(argv + ["--resume"]) == 2
    err = one_error_line(capsys)
    assert f"{run / 'step_000002' / failing}: no space left on device (disk full)" in err
    assert f"newest complete checkpoint is {first}" in err and "--resume" in err
    # the failed write left nothing behind: no temp file, no half checkpoint, its space given back
    assert not leftovers(small_disk) and not (run / "step_000002").exists()
    assert free_bytes(small_disk) >= free - pg
    model, meta = ckpt.load_model(run)
    assert meta["path"] == str(first) and ckpt.load_train_state(first)["step"] == 1

    filler.unlink()
    assert cli_main(argv + ["--resume"]) == 0
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step_000001", "step_000002", "step_000003"]
    assert list(pd.read_csv(run / "loss.csv")["step"]) == [1, 2, 3]
    ckpt.load_model(run)


# ---- analysis ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data):
    """Both arms of seed 0, four steps each: checkpoints at steps 1, 2 and 4."""
    root = tmp_path_factory.mktemp("disk_runs")
    out = {}
    for arm in ("smear", "baseline"):
        run = make_run("tiny", get_preset("tiny"), arm, 0, tiny_data, train_overrides=dict(steps=4, val_every=0))
        train(root / run.name, run, device="cpu", progress=False)
        out[arm] = root / run.name
    return out


def analyze_argv(paths, out: Path) -> list[str]:
    return ["analyze", *map(str, paths), "--out", str(out), "--tokens", TOKENS, "--device", "cpu", "--no-progress",
            "--csv"]


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / f"{name}.parquet")


KEYS = {"heads": ["run", "step", "metric", "layer", "head"], "smear": ["run", "step"],
        "smear_vocab": ["run", "step", "token_id"], "smear_tokens": ["run", "step", "sample", "position"]}


def check_heads_complete(heads: pd.DataFrame, steps: dict[str, set[int]]) -> None:
    """Every (run, step) named holds all metrics for all 6 attention heads, each key once."""
    assert not heads.duplicated(KEYS["heads"]).any()
    assert {r: set(heads.loc[heads["run"] == r, "step"]) for r in set(heads["run"])} == steps
    assert heads.groupby(["run", "step", "metric"]).size().eq(6).all()
    assert heads.groupby(["run", "step"])["metric"].nunique().eq(len(P.HEAD_METRICS)).all()


def test_full_disk_during_table_write_keeps_tables_and_a_rerun_finishes(runs, small_disk, capsys):
    out = small_disk / "analysis"
    assert cli_main(analyze_argv([runs["smear"]], out)) == 0
    before = {name: read(out, name) for name in COLUMNS}
    csv_before = {name: (out / f"{name}.csv").read_bytes() for name in COLUMNS}
    filler = fill(small_disk, leave=page(small_disk))  # less than any table's rewrite needs
    free = free_bytes(small_disk)
    capsys.readouterr()

    assert cli_main(analyze_argv([runs["baseline"]], out)) == 2
    err = one_error_line(capsys)
    assert f"{out / 'heads.parquet'}: no space left on device (disk full)" in err and "analyze again" in err
    assert not leftovers(small_disk) and free_bytes(small_disk) >= free - page(small_disk)
    for name in COLUMNS:  # the tables as they were, and readable
        pd.testing.assert_frame_equal(read(out, name), before[name])
        assert (out / f"{name}.csv").read_bytes() == csv_before[name]

    filler.unlink()
    assert cli_main(analyze_argv([runs["baseline"]], out)) == 0
    heads = read(out, "heads")
    check_heads_complete(heads, {"tiny-s0-smear": {1, 2, 4}, "tiny-s0-baseline": {1, 2, 4}})
    kept = heads[heads["run"].isin(set(before["heads"]["run"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before["heads"])  # the first run's rows as they were
    assert len(pd.read_csv(out / "heads.csv")) == len(heads)


def test_two_analyze_runs_on_one_folder_keep_every_key_once(runs, tmp_path):
    """A: the smear run (steps 1, 2, 4); B at the same time: the smear run's step 2 (overlap) and the
    baseline run. Each table write merges with the disk under the lock, so nothing is lost or doubled."""
    out = tmp_path / "analysis"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    jobs = [subprocess.Popen([sys.executable, "-m", "commands.cli", *analyze_argv(paths, out)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for paths in ([runs["smear"]], [runs["smear"] / "step_000002", runs["baseline"]])]
    results = [job.communicate(timeout=300) for job in jobs]
    for job, (stdout, stderr) in zip(jobs, results):
        assert job.returncode == 0, stderr
    added = [json.loads(stdout.strip().splitlines()[-1])["rows_added"] for stdout, _ in results]

    tables = {name: read(out, name) for name in COLUMNS}
    check_heads_complete(tables["heads"], {"tiny-s0-smear": {1, 2, 4}, "tiny-s0-baseline": {1, 2, 4}})
    for name, keys in KEYS.items():
        frame = tables[name]
        assert not frame.duplicated(keys).any(), name
        assert added[0][name] + added[1][name] == len(frame), name  # each row written by one of the two
    for name in ("heads", "smear"):  # (token texts may hold line breaks: the per-token CSVs have no row count)
        assert len(pd.read_csv(out / f"{name}.csv")) == len(tables[name]), name
    assert sorted(tables["smear"]["step"]) == [1, 2, 4] and set(tables["smear"]["run"]) == {"tiny-s0-smear"}
    # per-token tables: the last checkpoint each run named (A: step 4; B: step 2), whole
    for name in ("smear_vocab", "smear_tokens"):
        sizes = tables[name].groupby("step").size()
        assert list(sizes.index) == [2, 4] and sizes.nunique() == 1, name
    assert (tables["smear_vocab"].groupby("step")["token_id"].nunique() == 512).all()


def _rewrite_heads_until(out: Path, stop) -> None:
    """Rewrite heads.parquet as another `analyze` does (atomically, a different size each time) until `stop`."""
    from analysis.analyze import Tables

    tables, i = Tables(out, csv=False), 0
    while not stop.is_set():
        n = 200 + 150 * (i % 7)
        tables.write("heads", pd.DataFrame({c: range(n) if c in ("step", "layer", "head") else [0.5] * n
                                            if c == "value" else ["r"] * n for c in COLUMNS["heads"]}))
        i += 1


def test_a_table_read_while_another_process_rewrites_it_is_never_torn(tmp_path):
    """Read by path, pyarrow opens a parquet file more than once, so another analysis's rewrite (an atomic
    rename) in between gave a read half of one file and half of the next ("Page was smaller than expected",
    seen in CI with --jobs 2). Each read now holds one open file: 150 rewrites read, none torn (the old code tore
    about one read in 20)."""
    import multiprocessing as mp
    import time

    from analysis.analyze import Tables

    out = tmp_path / "analysis"
    out.mkdir()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    writer = ctx.Process(target=_rewrite_heads_until, args=(out, stop))
    writer.start()
    try:
        reader, reads, rewrites = Tables(out, csv=False), 0, set()
        deadline = time.monotonic() + 60
        while len(rewrites) < 150 and time.monotonic() < deadline:
            reader.refresh("heads")  # raised AnalysisError on a torn read
            rewrites.add(reader.stamps["heads"])
            reads += 1
    finally:
        stop.set()
        writer.join(timeout=30)
    assert len(rewrites) >= 150, f"the writer rewrote the table only {len(rewrites)} times in 60 s"
    assert not reader.frames["heads"].empty and reads >= 150
