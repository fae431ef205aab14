"""`--cluster ray`: a study's jobs as Ray tasks on every node of a cluster, retried when a node dies.

Each run's training and each run's analysis is one Ray task that asks for its CPUs and GPUs (a training:
one CPU, or --gpus-per-run GPUs and a CPU a rank; an analysis: one CPU and at most one GPU) and runs, on
whichever node Ray picks, the very command the local queue runs (commands/study.py), into the run's log.
A task whose node dies is run again elsewhere (Ray's `max_retries`, for system failures only: a command
that fails stops the study, as locally); a training started again resumes from the run's newest complete
checkpoint (`train --resume`), so a lost node costs at most the steps since it.

The study folder must be on storage every node mounts at the same path (Ray has no shared filesystem):
at the start a task on every node reads a token this process writes there, and a node that cannot see
it stops the study with one line naming the node and the path. No lock is held across machines (file
locks are unreliable on NFS): a run's analysis writes its tables in a folder on its node's local disk
and publishes it whole into the study's `.parts/RUN` (one rename); this process merges each part into
the tables (analysis.analyze.merge_tables) and then marks the run analysed. Plan, progress bar, restart
after Ctrl-C or a killed driver (Ray ends a dead driver's tasks; their commands die with them) and
`study-copy` are those of a local study. Ray is optional: `pip install -e ".[cluster]"`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from commands.jobs import POLL, Job, die_with_parent
from commands.resources import Launch, gpus_per_run, usable_cores
from trainer.errors import ConfigError, SmearlensError, one_line
from trainer.io import atomic_write_text

PARTS = ".parts"  # in the study folder: each run's analysis tables, published by its node, until merged
CHECK_FILE = ".cluster-check"  # in the study folder: the token every node must read back
NODE_RETRIES = 3  # a task is run again on another node this many times when its node dies
CHECK_TIMEOUT = 120.0  # seconds for every node to answer the folder check (a busy node starts a worker first)
NODES_EVERY = 2.0  # seconds between looks at which nodes are alive (to say when one is lost)
LOCAL_OBJECT_STORE = 100 * 2**20  # --address local: tasks pass only a few strings; Ray's default is 30% of RAM


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--cluster ray needs Ray: pip install -e \".[cluster]\" (or pip install ray)") from None
    return ray


def node_name(node: dict) -> str:
    """How a node is named in messages: its address and the start of its id (as `ray status` shows it)."""
    return f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"


def sees_folder(folder: str, token: str) -> str:
    """On a node: '' when it reads `token` in `folder`'s check file, else why not."""
    path = Path(folder) / CHECK_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        return "no such file or folder there" if not Path(folder).is_dir() else f"{CHECK_FILE} is not there"
    except OSError as e:
        return one_line(e)
    return "" if found == token else f"its {CHECK_FILE} is another's (another filesystem at that path)"


def run_task(cmd: list[str], log: str, env: dict[str, str], folder: str, token: str,
             publish: str | None) -> tuple[int | None, str, str]:
    """One job on this node: its command into its log (appended, after a line naming the node), the node's
    own Python in place of the driver's. (exit status, node, ''); (None, node, why) when the node cannot see
    the study folder. With `publish`, the command writes a node-local folder in its place, published there
    whole (one rename) when it succeeds."""
    import ray

    node = f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"
    why = sees_folder(folder, token)
    if why:
        return None, node, why
    staging = tempfile.mkdtemp(prefix="smearlens-part-") if publish else None
    cmd = [sys.executable, *(staging if publish and arg == publish else arg for arg in cmd[1:])]
    try:
        with open(log, "ab") as handle:
            # on a line of its own: a try cut short by a lost node may have ended mid-line
            handle.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} on node {node}: {shlex.join(cmd)}\n".encode())
            handle.flush()
            code = subprocess.run(cmd, stdout=handle, stderr=handle, env=dict(os.environ, **env),
                                  preexec_fn=die_with_parent(os.getpid())).returncode
        if code == 0 and publish:
            publish_folder(Path(staging), Path(publish))
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return code, node, ""


def publish_folder(src: Path, dest: Path) -> None:
    """Copy `src` (no lock files) beside `dest` under a hidden name, then rename it to `dest`: a reader sees
    all of it or nothing. A `dest` already there (an earlier try of the same job) is kept."""
    from analysis.analyze import LOCK_FILE

    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(LOCK_FILE))
    try:
        os.rename(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class RayRunner:
    """A study's jobs as Ray tasks on a cluster: connected, its nodes checked, at most as many tasks in flight
    as the cluster's alive nodes can run at once (and --jobs), so the queue's order (`pick`) holds."""

    def __init__(self, launch: Launch, folder: Path):
        self.ray = ray = import_ray()
        self.launch, self.folder = launch, folder
        self.parts = folder / PARTS
        self.started = not ray.is_initialized()
        if self.started:
            connect(launch.address)
        try:
            self.nodes = alive_nodes()
            self.gpus = gpus_per_run(launch, int(sum(n["Resources"].get("GPU", 0) for n in self.nodes)))
            self.ranks = max(1, self.gpus)  # a training's ranks: one a GPU (torchrun), or one process on a CPU
            self.token = check_folder(folder, self.nodes)
            self.width = self.capacity(self.nodes)
            self.parts.mkdir(exist_ok=True)
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        where = f"{self.gpus} GPU{'s' * (self.gpus > 1)} a run" if self.gpus else "one CPU a run"
        return f"Ray tasks on {len(self.nodes)} node{'s' * (len(self.nodes) > 1)}, {where}"

    def resources(self, job: Job) -> dict:
        """What a job's task asks Ray for: a training its ranks' GPUs and a CPU a rank; an analysis one CPU and
        one GPU at most."""
        if job.what == "training":
            return dict(num_cpus=self.ranks, num_gpus=self.gpus)
        return dict(num_cpus=1, num_gpus=min(1, self.gpus))

    def capacity(self, nodes: list[dict]) -> int:
        """Trainings the alive nodes can run at once (at least 1: a cluster still growing gets its queue)."""
        key, need = ("GPU", self.gpus) if self.gpus else ("CPU", self.ranks)
        fits = sum(int(n["Resources"].get(key, 0) // need) for n in nodes)
        return max(1, min(fits, self.launch.jobs or fits))

    def submit(self, task, job: Job):
        """Start `job` as a Ray task (retried on another node when its node dies); its object ref."""
        job.log.parent.mkdir(parents=True, exist_ok=True)
        res = self.resources(job)
        env = {"OMP_NUM_THREADS": "1"}  # a CPU per process: one run per core, as locally
        if not res["num_gpus"]:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run on a GPU node: the GPUs are other tasks'
        return task.options(**res, max_retries=NODE_RETRIES, retry_exceptions=False,
                            name=f"{job.what} {job.log.parent.name}").remote(
            job.cmd, str(job.log), env, str(self.folder), self.token, str(job.publish) if job.publish else None)

    def check_outcome(self, ref, job: Job) -> None:
        """Raise the one-line error of a job whose task failed, or whose node cannot see the study folder."""
        ray = self.ray
        try:
            code, node, why = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # raised in run_task itself, e.g. no smearlens there
            raise SmearlensError(f"{job.what} of {job.log.parent.name}: its Ray task failed ({type(e.cause).__name__}: "
                                 f"{one_line(e.cause or e)}); is smearlens installed on every node?") from None
        except ray.exceptions.RayError as e:
            raise SmearlensError(f"{job.what} of {job.log.parent.name} was lost with its node {NODE_RETRIES + 1} "
                                 f"times ({one_line(e)}); see {job.log}") from None
        if code is None:
            raise ConfigError(f"node {node} cannot see the study folder {self.folder}: {why}; put it on storage "
                              f"every node mounts at the same path")
        if code:
            raise SmearlensError(f"{job.what} failed (exit {code}) on node {node}; see {job.log}")

    def run(self, todo: list[Job], on_done, on_poll, pick) -> None:
        """As commands.jobs.run_jobs, with Ray tasks for processes: the first failure stops every task and
        raises; a lost node is announced, and its tasks start again on another."""
        ray = self.ray
        task = ray.remote(run_task)
        todo, running, succeeded = list(todo), {}, set()
        seen, looked = {n["NodeID"]: n for n in self.nodes}, time.monotonic()
        try:
            while todo or running:
                while len(running) < self.width:
                    ready = [j for j in todo if j.after is None or j.after in succeeded]
                    if not ready:
                        break
                    job = pick(ready, todo)
                    todo.remove(job)
                    running[self.submit(task, job)] = (job, time.perf_counter())
                if not running:
                    raise SmearlensError(f"{todo[0].what}: the job it waits for is not in the queue")
                done, _ = ray.wait(list(running), num_returns=len(running), timeout=POLL)
                for ref in done:
                    job, t0 = running.pop(ref)
                    self.check_outcome(ref, job)
                    succeeded.add(job)
                    on_done(job, time.perf_counter() - t0)
                if time.monotonic() - looked > NODES_EVERY:
                    looked, nodes = time.monotonic(), alive_nodes()
                    for lost in set(seen) - {n["NodeID"] for n in nodes}:
                        tqdm.write(f"node {node_name(seen.pop(lost))} left the cluster: its jobs start again "
                                   f"on another node", file=sys.stderr)
                    seen.update({n["NodeID"]: n for n in nodes})
                    self.width = self.capacity(nodes)
                on_poll([job for job, _ in running.values()])
        finally:
            for ref in running:
                ray.cancel(ref, force=True)  # kills the task's worker, and its command with it

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def connect(address: str) -> None:
    """Join the cluster at `address` (Ray's: host:port, ray://…, "auto"), or start one in this process
    ("local": this machine's usable cores, no dashboard, a small object store)."""
    ray = import_ray()
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        if address == "local":
            ray.init(num_cpus=usable_cores(), object_store_memory=LOCAL_OBJECT_STORE, **quiet)
        else:
            ray.init(address=address, **quiet)
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: no Ray cluster to join there ({one_line(e)}); start one with "
                          f"`ray start --head`, or use --address local") from None


def alive_nodes() -> list[dict]:
    return [n for n in import_ray().nodes() if n.get("Alive")]


def check_folder(folder: Path, nodes: list[dict]) -> str:
    """Write a fresh token into `folder` and have a task on every node read it back; a node that cannot is a
    ConfigError naming the node and the folder. Returns the token (each job checks it again: a node that
    joins later)."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    atomic_write_text(folder / CHECK_FILE, token)
    check = ray.remote(sees_folder)
    refs = {check.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(folder), token): n for n in nodes}
    _, late = ray.wait(list(refs), num_returns=len(refs), timeout=CHECK_TIMEOUT)
    problems = []
    for ref, node in refs.items():
        if ref in late:
            ray.cancel(ref, force=True)
            problems.append((node, f"it did not answer within {CHECK_TIMEOUT:.0f} s"))
            continue
        try:
            why = ray.get(ref)
        except ray.exceptions.RayError as e:
            why = f"its check failed ({one_line(getattr(e, 'cause', None) or e)})"
        if why:
            problems.append((node, why))
    if problems:
        node, why = problems[0]
        more = f" (and {len(problems) - 1} other node{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        raise ConfigError(f"node {node_name(node)}{more} cannot see the study folder {folder}: {why}; put it on "
                          f"storage every node mounts at the same path")
    return token


__all__ = ["RayRunner", "connect", "check_folder", "run_task", "PARTS", "NODE_RETRIES"]
