"""`smearlens study`: arms × seeds of one preset, trained, analysed and reported in one folder.

    smearlens study --preset cpu-small --arms baseline,smear,canon4 --seeds 5 --out studies/canon

A study folder holds the run folders (`PRESET-sSEED-ARM/`), `analysis/` (the tables), `figures/`,
`report.md` and `study.json`, the plan: preset, arms, seeds, steps, `--set` overrides, data and the
analysis settings. Runs are trained one process a usable core (or a slot of --gpus-per-run GPUs each),
every arm paired with the baseline by seed (same initial weights and data order); `analyze` then probes
every checkpoint and `report` compares every arm with the baseline, paired by seed. `--cluster ray` runs
the same commands as Ray tasks over a cluster's nodes (commands/cluster.py).

Restarting is the same command: a finished run is never trained again, a run with a complete
checkpoint resumes from it (`train --resume`; a half-written checkpoint has no meta.json and is
ignored), analysis skips every (run, step) its tables hold, and training is deterministic given the
seed, so the tables equal those of an uninterrupted study (`benchmarks/fault_injection.py --study`).
A run whose analysis is complete (its `analysed.json`, written once its `analyze` succeeds, names the
plan's steps and every metric, and the tables hold its final step) is done even without checkpoints:
`--drop-checkpoints` deletes each run's `step_*` folders once it is analysed, and a study copied
without them (`smearlens study-copy`: tables, run.json, loss.csv, records, ~0.05% of the disk) goes
on where it stopped on another machine.

A plan only grows: arms and seeds given are added to those in study.json (so `smearlens study --out
DIR` alone continues DIR's study, and `--arms canon4` adds an arm to it); everything else (preset,
steps, overrides, data, recording and analysis settings) must equal study.json's, else a
ConfigError names the setting: a changed setting is a new study (another --out).

`smearlens demo` is a study with a fixed plan (commands/demo.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from filelock import FileLock, Timeout

from commands.cluster import PARTS, RayRunner
from commands.jobs import Job, LocalRunner, Progress, last_step
from commands.machine_kind import held_seeds, this_kind
from commands.resources import Launch, local_slots, train_command
from trainer import checkpoint as ckpt
from trainer.arms import arm_spec
from trainer.config import check_fields, get_preset
from trainer.corpus import default_data_dir, embedded_data
from trainer.errors import ConfigError
from trainer.io import atomic_write_text

MANIFEST = "study.json"
DONE_FILE = "analysed.json"  # in a run folder: {"steps", "metrics"} of the analysis it completed
LOCK_FILE = ".study.lock"
# a recorder probe (4,096 tokens) costs about one 1,024-token cpu-small step: every 50 steps ≈ 2%
RECORD_EVERY = 50
# Settings a study keeps for good (a change means another study); arms, seeds and metrics only grow.
FIXED = ("preset", "steps", "overrides", "data", "record_every", "tokens", "ablation_tokens", "path_positions",
         "path_draws")
GROWING = ("arms", "seeds", "metrics")
DEFAULT_ARMS = ("baseline", "smear")
# Trainings a study keeps ahead of its analyses at the end: ~12 cpu-small analyses (~30 s each) fill the
# second core while the last runs train (~80 s at the demo's setting, ~300 s at 1,600 fp32 steps).
TAIL_TRAININGS = 12


def _metrics() -> tuple[str, ...]:
    from analysis.analyze import METRICS

    return tuple(METRICS)


@dataclass(frozen=True)
class StudyPlan:
    """What a study trains and analyses; `study.json` records it."""

    preset: str
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    overrides: tuple[str, ...] = ()  # `--set NAME=VALUE` for every run
    data: str | None = None  # None: the embedded corpus for the preset
    record_every: int = RECORD_EVERY
    metrics: tuple[str, ...] = ()  # () : every metric `analyze` knows
    tokens: int | None = None  # analyze's --tokens etc.; None: analyze's default
    ablation_tokens: int | None = None
    path_positions: int | None = None
    path_draws: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics) or _metrics())
        if not self.arms:
            raise ConfigError("study: name at least one arm")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ConfigError(f"study: seeds {list(self.seeds)}: name at least one, none negative")
        if self.steps < 1:
            raise ConfigError(f"study: --steps {self.steps} must be at least 1")

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict, where: Path) -> "StudyPlan":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names or {"preset", "arms", "seeds", "steps"} - set(d):
            raise ConfigError(f"{where}: not a study plan (expected the keys {', '.join(sorted(names))})")
        return cls(**check_fields(cls, d, str(where)))  # a mistyped value would fail deep in the study

    def runs(self) -> list[tuple[int, str]]:
        """(seed, arm) in training order: the arms of a seed side by side, so pairs finish together."""
        return [(seed, arm) for seed in self.seeds for arm in self.arms]

    def analyze_settings(self) -> dict:
        return {k: getattr(self, k) for k in ("tokens", "ablation_tokens", "path_positions", "path_draws")
                if getattr(self, k) is not None}


def merge_plan(old: StudyPlan, new: StudyPlan, where: Path) -> StudyPlan:
    """The plan `new` asks for added to the one in study.json: arms, seeds and metrics grow; anything
    else that differs is a clear error (it would make the study's runs not comparable)."""
    for key in FIXED:
        if getattr(old, key) != getattr(new, key):
            raise ConfigError(f"{where}: this study was planned with {key} {getattr(old, key)!r}, not "
                              f"{getattr(new, key)!r}; a study only adds arms and seeds: use another --out")
    grown = {k: tuple(dict.fromkeys(getattr(old, k) + getattr(new, k))) for k in GROWING}
    return dataclasses.replace(old, **grown)


def load_plan(folder: Path) -> StudyPlan | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    return StudyPlan.from_json(ckpt.read_json(path, "study plan"), path)


def run_name(preset: str, seed: int, arm: str) -> str:
    return f"{preset}-s{seed}-{arm}"


def done_steps(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (0: none)."""
    done = ckpt.complete_checkpoints(run_dir)
    return ckpt.read_meta(done[-1])["step"] if done else 0


def finished(run_dir: Path, steps: int) -> bool:
    return done_steps(run_dir) >= steps


def mark_analysed(run_dir: Path, plan: StudyPlan) -> None:
    atomic_write_text(run_dir / DONE_FILE, json.dumps({"steps": plan.steps, "metrics": list(plan.metrics)}))


def analysed_runs(plan: StudyPlan, runs: Sequence[Path], tables: Path) -> set[Path]:
    """The runs whose analysis for this plan is complete: their DONE_FILE names the plan's steps and every
    metric, and the tables' heads hold their final step. They are neither trained nor analysed again."""
    marked = []
    for run in runs:
        try:
            done = json.loads((run / DONE_FILE).read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(done, dict) or not isinstance(done.get("metrics"), list):
            continue  # a damaged mark: the run is analysed again
        if done.get("steps") == plan.steps and set(plan.metrics) <= set(map(str, done["metrics"])):
            marked.append(run)
    if not marked or not (tables / "heads.parquet").exists():
        return set()
    import pandas as pd

    with open(tables / "heads.parquet", "rb") as f:  # one open file: analyses may rewrite it meanwhile
        heads = pd.read_parquet(f, columns=["run", "step"])
    final = set(heads.loc[heads["step"] == plan.steps, "run"].astype(str))
    return {run for run in marked if run.name in final}


def drop_checkpoints(run_dir: Path) -> None:
    """Delete a run's step folders (its records, run.json and loss.csv stay)."""
    import shutil

    for step in run_dir.glob("step_*"):
        shutil.rmtree(step)


# what a carried run leaves behind: checkpoints, logs and the tokenizer (a run trained again writes them anew)
NOT_CARRIED = ("step_*", "*.log", "tokenizer.json", LOCK_FILE)


def copy_present(src: Path, dst: Path, files: Sequence[str], folders: Sequence[str]) -> None:
    """Copy those of `files` and `folders` that `src` holds into `dst` (updated in place), leaving out
    checkpoints, logs and locks (NOT_CARRIED)."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for name in files:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    for folder in folders:
        if (src / folder).is_dir():
            shutil.copytree(src / folder, dst / folder, ignore=shutil.ignore_patterns(*NOT_CARRIED),
                            dirs_exist_ok=True)


def copy_study(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the study in `src` to `dst` without checkpoints: study.json, the tables, report, its headline table and figures,
    and the folder of each analysed run (its run.json, loss.csv, records and analysed.json). The copy
    resumes with the same command: its analysed runs are done, the rest train from the start. An existing
    `dst` is updated in place; a table not in the row order this version writes is written again in it (compact
    in git, whichever version wrote `src`), one in order is left byte for byte (`Tables.rewrite`). Returns the runs copied."""
    from analysis.analyze import Tables
    from analysis.stats.headline import FILE as HEADLINE

    src, dst = Path(src), Path(dst)
    plan = load_plan(src)
    if plan is None:
        raise ConfigError(f"{src}: no {MANIFEST} here: not a study folder")
    runs = [src / run_name(plan.preset, seed, arm) for seed, arm in plan.runs()]
    done = sorted(analysed_runs(plan, runs, src / "analysis"))
    copy_present(src, dst, [MANIFEST, "report.md", HEADLINE], ["analysis", "figures", *(run.name for run in done)])
    if (dst / "analysis").is_dir():
        Tables(dst / "analysis", csv=any((dst / "analysis").glob("*.csv"))).rewrite()
    return [run.name for run in done]


def override_name(override: str) -> str:
    """The setting a `--set NAME=VALUE` names."""
    return override.split("=", 1)[0].strip()


def arm_overrides(overrides: Iterable[str], arm: str) -> list[str]:
    """The study's `--set` overrides that apply to `arm`: λ's learning-rate multiple only reaches arms with a
    learned λ (the baseline of a `--set smear_lr_mult=0.1` study is the plain baseline, paired as ever)."""
    return [o for o in overrides if not (override_name(o) == "smear_lr_mult" and not arm_spec(arm).learned_lambda)]


def training_jobs(plan: StudyPlan, data: Path, out: Path, analysed: set[Path],
                  ranks: int = 1, held: set[Path] = frozenset()) -> tuple[dict[Path, Job], int]:
    """A training job for every (seed, arm) of the plan not finished, `analysed` or `held` back yet, by run
    folder (its note: the step it starts from), and the steps of the runs already finished. `ranks` > 1: each
    trains under torchrun with that many ranks (one a GPU of its slot)."""
    todo, finished_steps = {}, 0
    for seed, arm in plan.runs():
        extra = [x for pair in arm_overrides(plan.overrides, arm) for x in ("--set", pair)]
        run_dir = out / run_name(plan.preset, seed, arm)
        if run_dir in held:
            continue
        if run_dir in analysed:
            finished_steps += plan.steps
            continue
        start = min(plan.steps, done_steps(run_dir))  # a half-trained run goes on from its newest checkpoint
        if finished(run_dir, plan.steps):
            finished_steps += start
            continue
        # --resume always: a job started again (a restarted study, a cluster task retried on another node)
        # goes on from the run's newest complete checkpoint, whenever it was written; none: from the start
        cmd = train_command(["--preset", plan.preset, "--arm", arm, "--seed", str(seed), "--data", str(data),
                             "--out", str(out), "--steps", str(plan.steps), "--record-every", str(plan.record_every),
                             *extra, "--resume"], ranks)
        todo[run_dir] = Job(cmd, run_dir / "train.log", "training", note=start)
    return todo, finished_steps


def analysis_jobs(plan: StudyPlan, runs: list[Path], tables: Path, training: dict[Path, Job],
                  parts: Path | None = None) -> list[Job]:
    """One `analyze` per run, waiting for the run's training: every checkpoint, but the ablations only at
    the final one (21 forwards a checkpoint, that only feed final-step figures). The tables' lock lets
    processes share the folder, and each job skips what the tables hold. With `parts` (a cluster: no lock
    across machines) each run's analysis writes a folder of its own, `parts/RUN`, that this process merges
    into the tables."""
    from analysis.measures.probes import ABLATIONS

    if not plan.metrics:
        return []
    ablations = [m for m in plan.metrics if m in ABLATIONS]
    flags = [x for k, v in plan.analyze_settings().items() for x in (f"--{k.replace('_', '-')}", str(v))]
    flags += ["--final-only", *ablations] if ablations else []
    jobs = []
    for run in runs:
        out = parts / run.name if parts else tables
        jobs.append(Job([sys.executable, "-m", "commands.cli", "analyze", str(run), "--out", str(out), "--metrics",
                         *plan.metrics, "--no-progress", *flags], run / "analyze.log", "analysis", note=run,
                        after=training.get(run), publish=out if parts else None))
    return jobs


def train_and_analyze(plan: StudyPlan, data: Path, out: Path, runs: list[Path], tables: Path, runner,
                      progress: Progress, analysed: set[Path], drop: bool = False,
                      held: set[Path] = frozenset()) -> None:
    """Every training job of the plan but the `held` runs, and every analysis of `runs`, not done yet,
    `runner.width` at a time in one queue (which job goes next: `pick_job`); a run's analysis waits only for its
    training. A run is marked analysed once its `analyze` succeeds (its part merged into the tables, on a
    cluster) and, with `drop`, loses its checkpoints. `runner`: a LocalRunner or commands.cluster's RayRunner."""
    from analysis.analyze import merge_tables

    jobs = runner.width
    merge_parts(out / PARTS, tables)
    training, finished_steps = training_jobs(plan, data, out, analysed, runner.ranks, held)
    queue = [*training.values(), *analysis_jobs(plan, [r for r in runs if r not in analysed], tables, training,
                                                runner.parts)]
    trained: list[Job] = []

    def on_done(job: Job, seconds: float) -> None:
        if job.what == "training":
            trained.append(job)
            return
        if job.publish is not None:
            merge_tables(job.publish, tables)
            drop_part(job.publish)
        mark_analysed(job.note, plan)
        if drop:
            drop_checkpoints(job.note)
        # analyses run `jobs` at a time: each takes 1/jobs of the wall clock it spans
        progress.analysis(seconds / jobs, _rows_added(job.log))

    def on_poll(running: list[Job]) -> None:
        waiting = [j.note for j in training.values() if j not in trained and j not in running]
        progress.training(finished_steps + plan.steps * len(trained) + sum(waiting)
                          + sum(max(last_step(j.log), j.note) for j in running if j.what == "training"),
                          sum(j.what == "training" for j in running))

    runner.run(queue, on_done, on_poll, pick_job)


def merge_parts(parts: Path, tables: Path) -> None:
    """Merge into the tables the parts a stopped cluster study published but never merged (their rows count;
    their runs are analysed again, which adds nothing), and clear what it left half written or deleted."""
    import shutil

    from analysis.analyze import merge_tables

    for part in sorted(parts.glob("*")):
        if part.name.startswith("."):
            shutil.rmtree(part, ignore_errors=True)
        elif part.is_dir():
            merge_tables(part, tables)
            drop_part(part)


def drop_part(part: Path) -> None:
    """Delete a merged part: renamed aside first, so a stopped study never finds half of one."""
    import shutil

    gone = part.with_name(f".{part.name}.merged")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(part, gone)
    shutil.rmtree(gone)


def make_runner(launch: Launch, runs_dir: Path, runs: int):
    """Where the study's jobs run: this machine's slots for `runs` runs left to start, or a Ray cluster
    (connected, every node checked to see `runs_dir`)."""
    if launch.cluster == "ray":
        return RayRunner(launch, runs_dir)
    return LocalRunner(local_slots(launch, runs))


def pick_job(ready: list[Job], todo: list[Job]) -> Job:
    """A trained run's analysis goes first while more than TAIL_TRAININGS trainings are left to start (a long
    study's tables grow as it goes, and one stopped for good keeps every run it trained long ago); the
    last trainings go first, so the analyses left fill the cores while they train (a short study, such as
    the demo, trains everything first)."""
    if sum(j.what == "training" for j in todo) > TAIL_TRAININGS:
        return next((j for j in ready if j.what == "analysis"), ready[0])
    return next((j for j in ready if j.what == "training"), ready[0])


def _rows_added(log: Path) -> bool:
    """Whether the `analyze` that just ended, writing its summary line into `log`, added any rows."""
    for line in reversed(log.read_bytes()[-8192:].decode(errors="replace").splitlines()):
        if line.startswith('{"out"'):
            return any(json.loads(line)["rows_added"].values())
    return True


def prepare(plan: StudyPlan, runs_dir: Path) -> StudyPlan:
    """Check the plan against the folder's study.json (the grown plan is written back) and the arms."""
    from trainer.arms import arm_spec

    get_preset(plan.preset)
    for arm in plan.arms:
        arm_spec(arm)
    from analysis.analyze import Settings
    from analysis.measures.probes import check_metrics

    check_metrics(plan.metrics, _metrics())
    Settings(**plan.analyze_settings()).validate()  # before training, not after it
    if plan.record_every < 0:
        raise ConfigError(f"--record-every {plan.record_every} must be at least 0 (0: off)")
    old = load_plan(runs_dir)
    if old is not None:
        plan = merge_plan(old, plan, runs_dir / MANIFEST)
    runs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(runs_dir / MANIFEST, json.dumps(plan.to_json(), indent=1))
    return plan


def run_study(plan: StudyPlan, runs_dir: str | Path, *, tables: str | Path | None = None,
              figures: str | Path | None = None, report: str | Path | None = None, launch: Launch = Launch(),
              notebooks: bool = False, command: str | None = None, progress: bool = True,
              drop: bool = False, reference: str | Path | None = None, allow_split: bool = False) -> Path:
    """Train, analyse and report the plan; skip whatever is done. Returns the report.

    Defaults: tables in runs_dir/analysis, figures in runs_dir/figures, the report runs_dir/report.md.
    `launch`: where the jobs run (this machine's cores or GPUs, or a Ray cluster) and how many at a time.
    `drop`: delete each run's checkpoints once it is analysed (`--drop-checkpoints`). `reference`: an earlier
    report's folder whose verdicts the report's summary states too (analysis.writeup.report.write_report).
    `allow_split`: train seeds whose other runs began on another machine kind (commands.machine_kind)."""
    from analysis.writeup.report import write_report

    start = time.perf_counter()
    runs_dir = Path(runs_dir)
    tables = Path(tables) if tables else runs_dir / "analysis"
    figures = Path(figures) if figures else runs_dir / "figures"
    report = Path(report) if report else runs_dir / "report.md"
    runs_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(runs_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{runs_dir}: another study is running in this folder (it holds {LOCK_FILE})") from None
    try:
        plan = prepare(plan, runs_dir)
        command = command or study_command(plan, runs_dir)
        data = Path(plan.data) if plan.data else None
        print(f"[1/3] data: {data or default_data_dir(plan.preset)}", flush=True)
        data = data or embedded_data(plan.preset)
        if launch.cluster != "local":  # a node's task starts in a folder of its own: it gets absolute paths
            runs_dir, tables, data = runs_dir.absolute(), tables.absolute(), data.absolute()
        runs = [runs_dir / run_name(plan.preset, seed, arm) for seed, arm in plan.runs()]
        analysed = analysed_runs(plan, runs, tables)
        runner = make_runner(launch, runs_dir, sum(r not in analysed for r in runs))  # checks the launch first
        held: set[Path] = set()
        try:
            if launch.cluster == "local":  # on a cluster the nodes' kinds are the report's to state
                held = held_runs(plan, runs_dir, runs, analysed, launch, allow_split)
            active = [r for r in runs if r not in held]
            print(f"[2/3] training {plan.preset}: arms {', '.join(plan.arms)} × seeds "
                  f"{', '.join(map(str, plan.seeds))}, {plan.steps} steps each, and each run's analysis once it is "
                  f"trained → {tables}; {runner.width} at a time ({runner.describe()})", flush=True)
            done = sum(plan.steps if r in analysed else min(plan.steps, done_steps(r)) for r in active)
            bar = Progress(plan.steps * len(active), done, len(active) if plan.metrics else 0,
                           len(analysed.intersection(active)), runner.width, enabled=progress)
            try:
                train_and_analyze(plan, data, runs_dir, active, tables, runner, bar, analysed, drop, held)
            finally:
                bar.close()
        finally:
            runner.close()
        print(f"[3/3] {'notebooks, ' if notebooks else ''}figures and report → {figures}", flush=True)
        path = write_report(tables, figures, report, commands=[command], preset=plan.preset, notebooks=notebooks,
                            runs_dir=runs_dir, reference=reference)
    finally:
        lock.release()
    print(f"study finished in {(time.perf_counter() - start) / 60:.1f} min; report: {path}", flush=True)
    if held:
        print(f"held back, not trained here: {', '.join(sorted(r.name for r in held))} (see the note above)",
              file=sys.stderr, flush=True)
    return path


def held_runs(plan: StudyPlan, runs_dir: Path, runs: list[Path], analysed: set[Path], launch: Launch,
              allow_split: bool) -> set[Path]:
    """Before training: the runs left to train in seeds whose other runs began on another machine kind, held
    back (none with `allow_split`): commands.machine_kind."""
    to_train = {r for r in runs if r not in analysed and not finished(r, plan.steps)}
    by_seed: dict[int, list[Path]] = {}
    for (seed, _), run in zip(plan.runs(), runs):
        by_seed.setdefault(seed, []).append(run)
    seeds = held_seeds(runs_dir, by_seed, to_train, this_kind(launch), plan.overrides, allow_split)
    return {r for seed in seeds for r in by_seed[seed] if r in to_train}


def study_command(plan: StudyPlan, out: Path) -> str:
    """The `smearlens study` command line that makes this study."""
    import shlex

    parts = ["smearlens", "study", "--preset", plan.preset, "--arms", ",".join(plan.arms),
             "--seeds", ",".join(map(str, plan.seeds)), "--steps", str(plan.steps), "--out", str(out)]
    parts += [x for pair in plan.overrides for x in ("--set", pair)]
    if plan.data:
        parts += ["--data", plan.data]
    if plan.record_every != RECORD_EVERY:
        parts += ["--record-every", str(plan.record_every)]
    if set(plan.metrics) != set(_metrics()):
        parts += ["--metrics", ",".join(plan.metrics)]
    for key, value in plan.analyze_settings().items():
        parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def resolve_plan(runs_dir: str | Path, *, preset: str | None = None, arms: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, steps: int | None = None, **settings) -> StudyPlan:
    """The plan a `smearlens study` command asks for: what it names, the rest from the folder's
    study.json when there is one (so the bare command continues a study), else the defaults."""
    old = load_plan(Path(runs_dir))
    given = {k: v for k, v in settings.items() if v is not None}
    if old is None:
        if preset is None:
            raise ConfigError(f"{runs_dir}: no {MANIFEST} here: a new study needs --preset")
        return StudyPlan(preset=preset, arms=tuple(arms or DEFAULT_ARMS), seeds=tuple(range(3) if seeds is None else seeds),
                         steps=steps or get_preset(preset).train.steps,
                         **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    return dataclasses.replace(
        old, preset=preset or old.preset, arms=tuple(arms or old.arms), seeds=tuple(seeds or old.seeds),
        steps=steps or old.steps, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def parse_names(text: str, option: str, check: Callable[[str], object]) -> list[str]:
    """`a,b,c` → the names, duplicates dropped, each passed to `check` (which raises ConfigError) before any
    work starts; an error names `option`."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError(f"{option} {text!r}: name at least one")
    for name in names:
        try:
            check(name)
        except ConfigError as e:
            raise ConfigError(f"{option}: {e}") from None
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    """`3` → seeds 0, 1, 2; `0,4,7` → those; `2-5` → 2, 3, 4, 5 (ranges and seeds mix: `0,10-12`)."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d+", text):
            return tuple(range(int(text)))
        seeds: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, sep, hi = part.partition("-")
            seeds += range(int(lo), int(hi) + 1) if sep else [int(lo)]
    except ValueError:
        seeds = []
    if not seeds:
        raise ConfigError(f"--seeds {text!r}: a count (3 → 0, 1, 2), a list (0,4,7) or a range (2-5)")
    return tuple(dict.fromkeys(seeds))


__all__ = ["StudyPlan", "run_study", "merge_plan", "load_plan", "parse_seeds", "run_name", "MANIFEST",
           "RECORD_EVERY"]
