"""`--cluster ray` on a real Ray cluster of several nodes in this machine: a lost node, a node blind to the folder.

The clusters are Ray's own test clusters (`ray.cluster_utils.Cluster`: a head and worker nodes, each its own
raylet), with node-death detection shortened to about five seconds. Skipped where Ray is not installed.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from commands.cli import main as cli_main  # noqa: E402
from commands.cluster import PARTS  # noqa: E402
from commands.study import done_steps  # noqa: E402
from trainer import checkpoint as ckpt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STORE = 80 * 2**20  # object store bytes a node: the tasks pass a few strings
# a node is declared dead after 5 missed health checks a second apart (Ray's default: 5, 3 s apart, each
# waiting up to 10 s): ~5 s, long enough that a node starved by a busy machine is not taken for dead
FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
              "health_check_failure_threshold": 5}
# one seed: its two runs start at once on three one-CPU nodes, so at least one trains on a worker node
RUNS = [f"tiny-s0-{arm}" for arm in ("baseline", "smear")]
STEPS = 30


def study_args(data: Path, out: Path) -> list[str]:
    return ["study", "--out", str(out), "--preset", "tiny", "--arms", "baseline,smear", "--seeds", "1",
            "--steps", str(STEPS), "--data", str(data), "--set", "checkpoint_every=5", "--set", "val_every=0",
            "--record-every", "5", "--metrics", "prev_token", "smear", "--no-progress"]


@pytest.fixture
def cluster():
    """A head of one CPU that runs tasks too, as on a Slurm allocation; each test adds its worker nodes."""
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False, object_store_memory=STORE,
                                                          _system_config=FAST_DEATH))
    yield c
    c.shutdown()


def study_tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every table a study wrote (analysis/*.parquet, each run's records) and its loss logs without timings."""
    found = {f"analysis/{p.name}": pd.read_parquet(p) for p in sorted((out / "analysis").glob("*.parquet"))}
    for run in RUNS:
        found |= {f"{run}/{p.name}": pd.read_parquet(p) for p in sorted((out / run).glob("record_*.parquet"))}
        found[f"{run}/loss.csv"] = pd.read_csv(out / run / "loss.csv").drop(columns="step_seconds")
    return found


def watch_and_kill(proc: subprocess.Popen, out: Path, cluster: Cluster, workers: list) -> tuple[str, Path, int]:
    """Once a run on a worker node has a complete checkpoint and trains on, remove that node; returns the
    run, its newest complete checkpoint then and that checkpoint's mtime."""
    by_id = {w.node_id[:8]: w for w in workers}
    # generous: on a machine busy with other work, Ray's start and the first steps can take minutes (a CI run
    # beside two training processes missed 240 s)
    deadline = time.monotonic() + 600
    seen: dict[str, tuple[list, int]] = {}
    while proc.poll() is None and time.monotonic() < deadline:
        for run in RUNS:
            log = out / run / "train.log"
            nodes = re.findall(r"on node \S+ \((\w+)\)", log.read_text(errors="replace")) if log.exists() else []
            step = done_steps(out / run)
            seen[run] = (nodes, step)
            # on a worker node, with a checkpoint to resume from and steps left to train
            if nodes and nodes[-1] in by_id and 0 < step < STEPS - 5:
                newest = ckpt.complete_checkpoints(out / run)[-1]
                cluster.remove_node(by_id[nodes[-1]], allow_graceful=False)
                return run, newest, newest.stat().st_mtime_ns
        time.sleep(0.02)
    why = f"the study exited ({proc.returncode})" if proc.poll() is not None else "600 s passed"
    pytest.fail(f"no run was caught training on a worker node ({why}; workers {sorted(by_id)}; last seen, per run, "
                f"its nodes and steps: {seen}): " + (out / "ray.err").read_text()[-2000:])


def test_a_study_survives_a_lost_node_and_equals_local_processes(cluster, tiny_data, tmp_path):
    t0 = time.perf_counter()
    workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
    cluster.wait_for_nodes()
    out = tmp_path / "ray"
    out.mkdir()
    with open(out / "ray.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "commands.cli", *study_args(tiny_data, out), "--cluster", "ray",
                                 "--address", cluster.address], cwd=REPO, stdout=err, stderr=err)
        try:
            run, newest, mtime = watch_and_kill(proc, out, cluster, workers)
            # as generous as the watcher: beside two training processes the rest once took over 300 s
            assert proc.wait(timeout=600) == 0, (out / "ray.err").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    ray_seconds = time.perf_counter() - t0
    said = (out / "ray.err").read_text()
    assert "left the cluster: its jobs start again on another node" in said, said[-2000:]

    # the lost run went on from its checkpoint on the other node: two attempts, that checkpoint untouched
    attempts = re.findall(r"on node \S+ \((\w+)\)", (out / run / "train.log").read_text())
    assert len(attempts) == 2 and attempts[0] != attempts[1], attempts
    assert newest.stat().st_mtime_ns == mtime
    # every run trained to its end once and was analysed once
    for r in RUNS:
        assert len(re.findall(r'\{"run": ', (out / r / "train.log").read_text())) == 1, r
        assert len(re.findall(r'\{"out": ', (out / r / "analyze.log").read_text())) == 1, r
    assert not list((out / PARTS).iterdir())  # every part merged
    assert (out / "report.md").exists()

    t1 = time.perf_counter()
    local = tmp_path / "local"
    assert cli_main([*study_args(tiny_data, local), "--jobs", "2"]) == 0
    ray_tables, local_tables = study_tables(out), study_tables(local)
    assert ray_tables.keys() == local_tables.keys()
    for key, frame in local_tables.items():
        pd.testing.assert_frame_equal(ray_tables[key], frame, check_exact=True, obj=key)
    for table in sorted((local / "analysis").glob("*.parquet")):  # the very same bytes
        assert (out / "analysis" / table.name).read_bytes() == table.read_bytes(), table.name
    print(f"ray study with a lost node: {ray_seconds:.0f} s (cluster start included); "
          f"local study: {time.perf_counter() - t1:.0f} s")


def can_hide_a_folder() -> bool:
    """Whether this process may start a node in a mount namespace of its own (root, or user namespaces)."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_hide_a_folder(), reason="needs `unshare -m` to hide the folder from one node")
def test_a_node_that_cannot_see_the_study_folder_stops_it_in_one_line(cluster, tiny_data, tmp_path, capsys):
    """A node started where the study folder's parent is another (empty) filesystem, as on a machine that
    mounts no shared storage there: the study stops before training, naming that node and the folder."""
    hidden = tmp_path / "shared"
    hidden.mkdir()
    ray_cli = Path(sys.executable).with_name("ray")
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {hidden} && exec {ray_cli} start --address {cluster.address} --num-cpus 1 "
         f"--object-store-memory {STORE} --block"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert time.monotonic() < deadline and node.poll() is None, "the blind node did not join"
            time.sleep(0.2)
        blind = next(n for n in ray.nodes() if n["Alive"] and n["NodeID"] != cluster.head_node.node_id)
        out = hidden / "study"
        assert cli_main([*study_args(tiny_data, out), "--cluster", "ray", "--address", cluster.address]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("smearlens: error: node ") and "\n" not in err, err
        assert f"({blind['NodeID'][:8]}) cannot see the study folder {out}: no such file or folder there" in err, err
        assert not [p for p in out.iterdir() if p.is_dir()]  # stopped before any run
    finally:
        ray.shutdown()
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
