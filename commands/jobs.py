"""The study's process queue: child processes a few at a time, each in a slot of this machine (its threads
and GPUs) and into its log, dying with the study; and one progress bar over the study's training steps and
analyses with the time left. `commands/cluster.py` runs the same jobs as Ray tasks instead."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from commands.resources import Slot
from trainer.errors import SmearlensError

STEP = re.compile(rb"(\d+)/(\d+) \[")
POLL = 0.25  # seconds between looks at the training processes (a look reads 4 KB of each log)


def last_step(log: Path) -> int:
    """The newest step a child's progress bar printed (its log is its stderr)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            found = STEP.findall(f.read())
    except OSError:
        return 0
    return int(found[-1][0]) if found else 0


try:  # looked up here, not in the forked child (no dynamic loading between fork and exec)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int):
    """preexec_fn: the child gets SIGKILL when its parent (the study, or a cluster node's task) dies, even by
    SIGKILL (Linux), so a killed study leaves no training process behind to race the restarted one's."""
    def setup() -> None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return setup if _PRCTL is not None else None


class Progress:
    """One bar over the whole study: training steps of every run and the runs' analyses.

    Its time left adds the remaining training steps at the rate measured over the last RATE_WINDOW
    seconds to the remaining analyses at the seconds they have taken so far. The rate is steps per
    second a training process trains, times `jobs`: time the cores spend on analyses (or on other work, or
    paused) does not count as slow training, which the analyses' own seconds would count again. Before one is measured,
    an analysis is priced in training steps (ANALYSIS_PRIOR) while training is left to do, else (a study
    with every run trained) at cpu-small's measured seconds (ANALYSIS_PRIOR_SECONDS); the time left reads
    "?" only while training has no rate yet. The bar fills by that same estimate of seconds."""

    # a run's analysis before one is measured: cpu-small's 8 checkpoints and the final one's ablations and
    # mechanism measures took 29.5 s on one quiet thread; in training steps of the same study, about 150
    # fp32 steps at two processes' ~10 steps a second (its seconds are halved too: two analyses at a time)
    ANALYSIS_PRIOR = 150.0
    ANALYSIS_PRIOR_SECONDS = 29.5
    RATE_WINDOW = 600.0  # seconds: the step rate follows the machine as it speeds up or slows down

    def __init__(self, train_total: int, train_done: int, analyses: int, analysed: int = 0, jobs: int = 2,
                 enabled: bool = True):
        self.train_total, self.train_done = train_total, train_done
        self.analyses, self.analysed = analyses, analysed  # to do in all, done
        self.seconds: list[float] = []  # measured seconds of analyses that did work
        self.jobs = jobs
        self.busy = 0.0  # training process-seconds so far
        self.last: float | None = None  # when `training` was last told
        self.samples: deque[tuple[float, int, float]] = deque()  # (time, steps done, busy) over the window
        self.step_rate: float | None = None  # steps per second, all processes together
        self.bar = tqdm(total=1000, disable=not enabled, dynamic_ncols=True,
                        bar_format="study {percentage:3.0f}%|{bar}| {desc}")
        self.refresh()

    def training(self, done: int, training: int, now: float | None = None) -> None:
        """`done` steps in all, `training` processes training since the last call (at `now`)."""
        now = time.perf_counter() if now is None else now
        if self.last is not None:
            self.busy += (now - self.last) * training
        self.last, self.train_done = now, done
        self.samples.append((now, done, self.busy))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.RATE_WINDOW:
            self.samples.popleft()
        _, done0, busy0 = self.samples[0]
        if self.busy > busy0:  # no step in the whole window (stalled, paused): no rate, the time left is "?"
            self.step_rate = (done - done0) / (self.busy - busy0) * self.jobs or None
        self.refresh()

    def analysis(self, seconds: float, worked: bool) -> None:
        self.analysed += 1
        if worked:  # an analysis already done is a no-op: its seconds say nothing about the others
            self.seconds.append(seconds)
        self.refresh()

    def _analysis_seconds(self) -> float | None:
        if self.seconds:
            return sum(self.seconds) / len(self.seconds)
        if self.step_rate:
            return self.ANALYSIS_PRIOR / self.step_rate
        return self.ANALYSIS_PRIOR_SECONDS if self.train_done >= self.train_total else None

    def left(self) -> tuple[float | None, float | None]:
        """(seconds left, seconds done) by the estimate; None where nothing prices it yet."""
        per_step = 1 / self.step_rate if self.step_rate else None
        left = done = 0.0
        if self.train_total > self.train_done:
            if per_step is None:
                return None, None
            left += (self.train_total - self.train_done) * per_step
        done += self.train_done * (per_step or 0)
        each = self._analysis_seconds()
        if each is None:
            return (None, None) if self.analyses > self.analysed else (left, done)
        return left + (self.analyses - self.analysed) * each, done + self.analysed * each

    def refresh(self) -> None:
        left, done = self.left()
        if left is not None and left + done > 0:
            self.bar.n = round(1000 * done / (done + left))
        eta = "?" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
        self.bar.set_description_str(f"training {self.train_done}/{self.train_total} steps · analysis "
                                     f"{self.analysed}/{self.analyses} · {eta} left", refresh=True)

    def close(self) -> None:
        self.bar.n = 1000
        self.refresh()
        self.bar.close()


@dataclass(eq=False)
class Job:
    """One child process of a study: its command, its log, what it is (for errors), its caller's note, the
    job that must succeed before it starts (a run's analysis waits for the run's training) and, for a job
    that writes a folder of its own (a run's analysis on a cluster), that folder: its command names it, and a
    cluster node writes it locally and publishes it there whole."""

    cmd: list[str]
    log: Path
    what: str
    note: object = None
    after: "Job | None" = None
    publish: Path | None = None


class LocalRunner:
    """A study's jobs as child processes of this one, each in a slot of this machine."""

    parts: Path | None = None  # analyses write into the tables themselves (their lock is this machine's)

    def __init__(self, slots: Sequence[Slot]):
        self.slots = list(slots)
        self.width = len(self.slots)  # jobs at a time
        self.ranks = max(1, len(self.slots[0].gpus))  # a training's ranks: one per GPU of its slot

    def describe(self) -> str:
        slot = self.slots[0]
        where = f"GPUs {' | '.join(','.join(s.gpus) for s in self.slots)}" if slot.gpus else "CPU"
        return f"local processes on {where}, {slot.threads} thread{'s' * (slot.threads > 1)} each"

    def run(self, todo: list[Job], on_done: Callable[[Job, float], None], on_poll: Callable[[list[Job]], None],
            pick: Callable[[list[Job], list[Job]], Job]) -> None:
        run_jobs(todo, self.slots, on_done, on_poll, pick)

    def close(self) -> None:
        pass


def run_jobs(todo: list[Job], slots: Sequence[Slot], on_done: Callable[[Job, float], None],
             on_poll: Callable[[list[Job]], None],
             pick: Callable[[list[Job], list[Job]], Job] = lambda ready, todo: ready[0]) -> None:
    """Run `todo` one process a slot (its threads and GPUs), each into its log (appended): the job
    `pick(ready, todo)` chooses among those whose `after` has succeeded (default: the first). `on_done(job,
    seconds)` after each success, `on_poll(running)` every POLL s; the first failure stops every child and
    raises. Children die with this process (even by SIGKILL), and with an error or Ctrl-C here."""
    todo, free, running, succeeded = list(todo), list(slots), [], set()  # Jobs compare by identity
    try:
        while todo or running:
            while free:
                ready = [j for j in todo if j.after is None or j.after in succeeded]
                if not ready:
                    break
                job = pick(ready, todo)
                todo.remove(job)
                slot = free.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                handle = open(job.log, "ab")
                proc = subprocess.Popen(job.cmd, stdout=handle, stderr=handle, env=dict(os.environ, **slot.env()),
                                        preexec_fn=die_with_parent(os.getpid()))
                running.append((proc, handle, job, time.perf_counter(), slot))
            if not running:  # every job left waits on one that never ran
                raise SmearlensError(f"{todo[0].what}: the job it waits for is not in the queue")
            time.sleep(POLL)
            for item in list(running):
                proc, handle, job, t0, slot = item
                if proc.poll() is None:
                    continue
                handle.close()
                running.remove(item)
                free.append(slot)
                if proc.returncode:
                    raise SmearlensError(f"{job.what} failed (exit {proc.returncode}); see {job.log}")
                succeeded.add(job)
                on_done(job, time.perf_counter() - t0)
            on_poll([job for _, _, job, _, _ in running])
    finally:
        for proc, handle, _, _, _ in running:
            proc.terminate()
            proc.wait()
            handle.close()
