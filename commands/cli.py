"""`smearlens` command line: data, train, train-pair, analyze, report, inspect, study, study-copy, sweep,
sweep-report, dose-report, steps-saved, demo, import-record, eval.

The command layer sits above both `trainer` and `analysis`: it parses arguments, wires the recorder
into training as a callback, and turns `SmearlensError`s into one clear line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from analysis.analyze import DEFAULT_ABLATION_TOKENS, DEFAULT_OUT as DEFAULT_TABLES_OUT, DEFAULT_TOKENS, METRICS
from analysis.mechanism.paths import DEFAULT_DRAWS as DEFAULT_PATH_DRAWS, DEFAULT_POSITIONS as DEFAULT_PATH_POSITIONS
from analysis.measures.recorder import DEFAULT_EVERY
from analysis.writeup import DEFAULT_FIGURES
from analysis.stats import DEFAULT_THRESHOLD
from commands.cli_reading import add_reading_parsers
from trainer.arms import ARMS, DOSE_PREFIX, NOATTN0_SUFFIX, arm_spec
from trainer.config import PRESETS, ModelConfig, TrainConfig, check_fields, expects, field_type, get_preset, shown
from trainer.corpus import embedded_data
from trainer.errors import AnalysisError, ConfigError, SmearlensError
from trainer.record import RECORD_PRESET, RECORD_ROW_TOKENS, RECORD_VAL_TOKENS, RECORD_WORLD_SIZES, UNKNOWN_SEED

DEFAULT_OUT = Path("checkpoints")
PAIR_ARMS = ("smear", "baseline")  # train-pair's default
SET_FORMS = "values are JSON: lists as --set long_window_layers=[0,3], true/false, null; text as it is"
ARM_HELP = (f"one of {', '.join(ARMS)}, or {DOSE_PREFIX}<c> (a fixed dose, e.g. {DOSE_PREFIX}0.8), any with the suffix "
            f"{NOATTN0_SUFFIX} (no attention in layer 0, e.g. smear{NOATTN0_SUFFIX}); see trainer/arms.py")


def ensure_data(args: argparse.Namespace) -> Path:
    """The data folder to train on: the one given, or the embedded corpus built for the preset."""
    return Path(args.data) if args.data else embedded_data(args.preset)


# fields that come from elsewhere (a --set would contradict them)
NOT_SET = dict(arm="choose it with --arm (or --arms)", seed="choose it with --seed (or --seeds)",
               vocab_size="it is the tokenizer's", bos_id="it is the tokenizer's")


def parse_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """`--set name=value` for any TrainConfig or ModelConfig field: the value is JSON (lists too) or, for a
    text setting, the text as it is; each is checked against its field's type here, before any training."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_SET)
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(NOT_SET)
    train, model = {}, {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected name=value")
        if name in NOT_SET:
            raise ConfigError(f"--set {name}: not a --set setting; {NOT_SET[name]}")
        if name in train_fields:
            cls, into = TrainConfig, train
        elif name in model_fields:
            cls, into = ModelConfig, model
        else:
            shown_name = name if name.isidentifier() else shown(name)  # a stray newline stays off the line
            raise ConfigError(f"--set {shown_name}: no such training or model setting")
        into[name] = parse_setting(cls, name, raw)
    return train, model


def parse_setting(cls: type, name: str, raw: str) -> object:
    """One `--set` value for field `name` of `cls`, or a one-line ConfigError with an example of the right form."""
    hint = field_type(cls, name)
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        value = raw
    if hint is str and not isinstance(value, str):
        value = raw  # text settings take the text as written: --set autocast=fp32
    problem = expects(hint, value)
    if problem:
        got = f"the text {shown(raw)}" if isinstance(value, str) else shown(value)
        example = setting_example(cls, name, raw)
        raise ConfigError(f"--set {name}: takes {problem}, not {got}; e.g. --set {name}={example}")
    return check_fields(cls, {name: value}, f"--set {name}")[name]


def setting_example(cls: type, name: str, raw: str) -> str:
    """A value of the right form: the user's own text in brackets when that is one (0,1 → [0,1]), else the default."""
    hint = field_type(cls, name)
    try:
        if expects(hint, json.loads(f"[{raw}]")) is None:
            return f"[{raw.strip()}]"
    except (json.JSONDecodeError, RecursionError):
        pass
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    if isinstance(default, str):
        return default
    return json.dumps(list(default) if isinstance(default, tuple) else default, separators=(",", ":"))


def parse_arms(text: str, option: str) -> list[str]:
    """`a,b,c` → the arms, each checked (before any training starts), duplicates dropped."""
    from commands.study import parse_names

    arms = parse_names(text, option, arm_spec)
    if option == "--arm" and len(arms) > 1:
        raise ConfigError(f"--arm {text!r}: one arm (train-pair --arms takes several)")
    return arms


def run_train(args: argparse.Namespace, arms: list[str]) -> None:
    from analysis.measures.lambda_grad import LambdaGradRecorder
    from analysis.measures.recorder import make_recorder
    from trainer.train import make_run, train

    train_over, model_over = parse_overrides(args.set)  # before the data: a mistyped --set fails at once
    data = ensure_data(args)
    for key in ("steps", "batch_size", "seq_len"):
        if getattr(args, key) is not None:
            train_over[key] = getattr(args, key)
    if args.compile:
        train_over["compile"] = True
    for arm in arms:
        run = make_run(args.preset, get_preset(args.preset), arm, args.seed, data,
                       name=f"{args.run}-{arm}" if (args.run and len(arms) > 1) else args.run,
                       train_overrides=train_over, model_overrides=model_over)
        recorder = make_recorder(args.record_every)
        # with recording on, λ and dL/dλ at every step too (record_lambda.parquet; arms with a λ · gate term)
        callbacks = (recorder, LambdaGradRecorder()) if recorder else ()
        summary = train(Path(args.out) / run.name, run, resume=args.resume, stop_at=args.stop_at, device=args.device,
                        callbacks=callbacks)
        print(json.dumps(summary))


def cmd_data(args: argparse.Namespace) -> None:
    from trainer.corpus import build_dataset

    meta = build_dataset(Path(args.out), args.text or None, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                         val_fraction=args.val_fraction, seed=args.seed)
    print(json.dumps(meta))


def cmd_analyze(args: argparse.Namespace) -> None:
    from analysis.analyze import analyze

    metrics = [m for item in args.metrics for m in item.split(",") if m]
    added = analyze(args.paths, out=args.out, metrics=metrics, tokens=args.tokens,
                    ablation_tokens=args.ablation_tokens, seq_len=args.seq_len,
                    data=args.data, device=args.device, csv=args.csv, progress=not args.no_progress,
                    path_positions=args.path_positions, path_draws=args.path_draws,
                    final_only=[m for item in args.final_only for m in item.split(",") if m])
    print(json.dumps({"out": str(args.out), "rows_added": added}))


def cmd_report(args: argparse.Namespace) -> None:
    from analysis.writeup.report import write_report

    figures = Path(args.figures)
    out = Path(args.out) if args.out else figures / "report.md"
    commands = list(args.commands) + [args.command_line]
    path = write_report(args.tables, figures, out, commands=commands, preset=args.preset, threshold=args.threshold,
                        notebooks=args.notebooks, runs_dir=args.checkpoints, reference=args.reference)
    print(f"wrote {path}")


def inspect_checkpoints_for(args: argparse.Namespace) -> dict[str, Path]:
    """Each arm's checkpoint, in the study's arm order: every arm of one seed in --checkpoints (default: the
    demo's folder), --baseline/--smear in place of theirs; --arms picks and orders the arms shown."""
    from analysis.writeup.plots import pick_runs
    from commands.study import parse_names

    # any name: one not in the folder is reported with the arms that are there
    wanted = parse_names(args.arms, "--arms", lambda name: None) if args.arms else None
    given = {arm: Path(path) for arm, path in (("baseline", args.baseline), ("smear", args.smear)) if path}
    for arm, path in given.items():
        if not path.exists():
            raise AnalysisError(f"{path}: no {arm} checkpoint or run folder there (pass --{arm} RUN_OR_CHECKPOINT)")
    from_folder = [a for a in wanted if a not in given] if wanted else None
    runs: dict[str, Path] = {}
    # the folder fills in the arms not given (every arm of the seed), unless --baseline and --smear, or --arms,
    # leave none to fill
    if args.checkpoints or (from_folder if wanted else len(given) < 2):
        folder = Path(args.checkpoints or args.checkpoints_default)
        if not args.checkpoints and not any(folder.glob("*/run.json")):
            raise AnalysisError(f"{folder}: no demo runs there (train them with `smearlens demo`, or pass "
                                "--checkpoints FOLDER or --baseline/--smear RUN_OR_CHECKPOINT)")
        runs = pick_runs(folder, args.preset, args.seed, from_folder)
    runs.update(given)
    return {arm: runs[arm] for arm in wanted} if wanted else runs


def cmd_inspect(args: argparse.Namespace) -> None:
    from analysis.writeup.views import inspect_checkpoints

    view = inspect_checkpoints(inspect_checkpoints_for(args), args.text, device=args.device or "cpu")
    path = view.save(args.html)
    print(json.dumps(dict(html=str(path), tokens=len(view.arms[0].tokens),
                          arms={a.arm: a.source for a in view.arms})))


def cmd_import_record(args: argparse.Namespace) -> None:
    from trainer import checkpoint as ckpt
    from trainer.record import import_record

    out = import_record(args.path, args.out, world_size=args.world_size, seed=args.seed)
    meta = ckpt.read_meta(out)
    print(json.dumps(dict(checkpoint=str(out), arm=meta["arm"], step=meta["step"], windows=meta["windows"],
                          source=meta["source"]["path"])))


def cmd_eval(args: argparse.Namespace) -> None:
    from trainer.record import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data, args.tokens, args.row_tokens, args.device,
                                         args.precision, args.segment_tokens)))


def cmd_demo(args: argparse.Namespace) -> None:
    from commands.demo import run_demo

    parse_overrides(args.set or [])  # a bad name fails here, before any training
    run_demo(args.preset, args.seeds, args.steps, args.out, args.figures, launch_from(args), not args.no_notebooks,
             overrides=args.set or (), arms=parse_arms(args.arms, "--arms"))


def cmd_study(args: argparse.Namespace) -> None:
    from commands.study import parse_seeds, resolve_plan, run_study

    parse_overrides(args.set or [])  # a bad name fails here, before any training
    metrics = [m for item in args.metrics for m in item.split(",") if m] if args.metrics else None
    plan = resolve_plan(args.out, preset=args.preset, arms=parse_arms(args.arms, "--arms") if args.arms else None,
                        seeds=parse_seeds(args.seeds) if args.seeds else None, steps=args.steps,
                        overrides=args.set, data=args.data, record_every=args.record_every, metrics=metrics,
                        tokens=args.tokens, ablation_tokens=args.ablation_tokens,
                        path_positions=args.path_positions, path_draws=args.path_draws)
    run_study(plan, args.out, launch=launch_from(args), notebooks=args.notebooks, progress=not args.no_progress,
              drop=args.drop_checkpoints, allow_split=args.allow_split_pairs)


def cmd_sweep(args: argparse.Namespace) -> None:
    from commands.study import parse_seeds
    from commands.sweep import parse_presets, run_sweep

    parse_overrides(args.set or [])  # a bad name fails here, before any training
    metrics = [m for item in args.metrics for m in item.split(",") if m] if args.metrics else None
    run_sweep(args.out, parse_presets(args.presets) if args.presets else None, launch=launch_from(args),
              progress=not args.no_progress, command=args.command_line,
              arms=parse_arms(args.arms, "--arms") if args.arms else None,
              seeds=parse_seeds(args.seeds) if args.seeds else None, steps=args.steps, overrides=args.set,
              data=args.data, record_every=args.record_every, metrics=metrics, allow_split=args.allow_split_pairs)


def cmd_study_copy(args: argparse.Namespace) -> None:
    from commands.study import copy_study
    from commands.sweep import MANIFEST as SWEEP_MANIFEST, copy_sweep

    copy = copy_sweep if (Path(args.study) / SWEEP_MANIFEST).exists() else copy_study
    runs = copy(args.study, args.dest)
    print(f"copied {args.study} to {args.dest} without checkpoints: {len(runs)} analysed runs")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="data folder from `smearlens data` or with FineWeb shards "
                                   "(default: the embedded corpus, built on first use)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder that holds run folders")
    p.add_argument("--run", help="run folder name (default: PRESET-sSEED-ARM)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="rows per step over all ranks")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help=f"override any training or model setting, e.g. --set val_every=50; {SET_FORMS}")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--stop-at", type=int, help="stop (with a checkpoint) after this step, to resume later")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--record-every", type=int, default=DEFAULT_EVERY, metavar="N",
                   help=f"record per-head previous-token scores and smear stats every N steps, and λ with "
                        f"dL/dλ at every step (default {DEFAULT_EVERY}; 0: off)")


def add_training_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build train/val shards and a tokenizer from text")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text", nargs="*", help="text files or folders (default: the embedded corpus)")
    p.add_argument("--tokenizer", choices=["bpe", "gpt2"], default="bpe")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train one arm")
    add_train_args(p)
    p.add_argument("--arm", required=True, help=ARM_HELP)
    p.set_defaults(func=lambda a: run_train(a, parse_arms(a.arm, "--arm")))

    p = sub.add_parser("train-pair", help="train several arms from one seed (same initial weights and data order)")
    add_train_args(p)
    p.add_argument("--arms", default=",".join(PAIR_ARMS), metavar="A,B,...",
                   help=f"comma-separated arms (default {','.join(PAIR_ARMS)}); {ARM_HELP}")
    p.set_defaults(func=lambda a: run_train(a, parse_arms(a.arms, "--arms")))


def add_analysis_parsers(sub: argparse._SubParsersAction) -> None:
    import analysis.analyze

    p = sub.add_parser("analyze", help="probe every checkpoint of the named runs into tidy tables",
                       description=analysis.analyze.__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="RUN_OR_CHECKPOINT",
                   help="run folders, checkpoints (step folders) or folders of run folders")
    p.add_argument("--out", default=str(DEFAULT_TABLES_OUT), help=f"folder for the tables (default: {DEFAULT_TABLES_OUT})")
    p.add_argument("--csv", action="store_true", help="also write each table as CSV")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), metavar="METRIC",
                   help=f"any of: {', '.join(METRICS)} (default: all)")
    p.add_argument("--final-only", nargs="+", default=[], metavar="METRIC",
                   help="of the head metrics, those measured at each run's final checkpoint only (e.g. "
                        "ablation_zero ablation_mean; the mechanism measures always are)")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help=f"validation tokens to probe on (default: {DEFAULT_TOKENS})")
    p.add_argument("--ablation-tokens", type=int, default=DEFAULT_ABLATION_TOKENS,
                   help=f"the first this many of them for the ablations (default: {DEFAULT_ABLATION_TOKENS})")
    p.add_argument("--seq-len", type=int, help="tokens per row (default: the run's training row, cut to its longest document)")
    p.add_argument("--path-positions", type=int, default=DEFAULT_PATH_POSITIONS,
                   help=f"path attribution (last checkpoint of each run): query positions drawn from the validation "
                        f"data with a fixed seed, the same for every run (default: {DEFAULT_PATH_POSITIONS})")
    p.add_argument("--path-draws", type=int, default=DEFAULT_PATH_DRAWS,
                   help=f"replacement tokens per position (default: {DEFAULT_PATH_DRAWS})")
    p.add_argument("--data", help="data folder, when the one in the checkpoint metadata has moved")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("report", help="write the markdown report: figures, statistics, commands, configs")
    p.add_argument("--tables", default=str(DEFAULT_TABLES_OUT), help=f"analysis tables folder (default {DEFAULT_TABLES_OUT})")
    p.add_argument("--figures", default=str(DEFAULT_FIGURES), help=f"figures folder (default {DEFAULT_FIGURES})")
    p.add_argument("--out", help="report file (default FIGURES/report.md)")
    p.add_argument("--notebooks", action="store_true",
                   help="execute the notebooks (papermill) to draw the figures, keeping executed copies")
    p.add_argument("--preset", help="analyse only this preset's runs when the tables hold several")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"previous-token head threshold (default {DEFAULT_THRESHOLD})")
    p.add_argument("--checkpoints", help="folder of run folders, for record_*.parquet and run.json "
                                         "(default: the parent of --tables)")
    p.add_argument("--reference", metavar="REPORT_DIR",
                   help="an earlier report's folder (or its summary.csv) whose verdicts the summary states beside these, "
                        "e.g. figures/study/powered when these tables have too few seeds to decide")
    p.add_argument("--command", dest="commands", action="append", default=[], metavar="CMD",
                   help="a command that produced the tables, listed in the report (repeatable)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("inspect", help="one HTML page: every arm's attention per head and each token's smear "
                                       "coefficient, side by side",
                       description="Run every arm of one seed on TEXT and write one self-contained interactive page "
                                   "(CircuitsVis, its script inlined: it works offline): every head's attention "
                                   "pattern per layer, and the smear coefficient of each token on one colour "
                                   "scale, the arms side by side in the study's order.")
    p.add_argument("text", help="the text to inspect")
    p.add_argument("--html", default="figures/inspect.html", help="page to write (default figures/inspect.html)")
    p.add_argument("--checkpoints", help="folder of run folders (a study's or the demo's); every arm of one seed "
                   "is taken from it (default: the demo's checkpoints/)")
    p.add_argument("--arms", help="comma-separated arms to show, in this order (default: every arm of the seed)")
    p.add_argument("--seed", type=int, help="this seed's runs (default: the lowest seed with every arm)")
    p.add_argument("--preset", help="this preset's runs (default: the folder's only preset)")
    p.add_argument("--smear", metavar="RUN_OR_CHECKPOINT", help="the smear arm from this run folder (its newest "
                   "checkpoint) or checkpoint instead; with --baseline and no --checkpoints: only these two arms")
    p.add_argument("--baseline", metavar="RUN_OR_CHECKPOINT", help="the baseline arm from this run folder or "
                   "checkpoint instead")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_inspect, checkpoints_default=str(DEFAULT_OUT))


def add_record_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-record", help="import a checkpoint saved by the speedrun record's train_gpt.py",
                       description="Read a record checkpoint (torch.load weights_only=True: no code runs), "
                                   "detect whether it has the smear, and write a smearlens checkpoint of "
                                   f"the {RECORD_PRESET} preset in the record's final validation state.")
    p.add_argument("path", help="the record's logs/<run_id>/state_step<step>.pt")
    p.add_argument("--out", help="run folder to write (default: checkpoints/record-ARM-<folder of PATH>)")
    p.add_argument("--world-size", type=int, choices=RECORD_WORLD_SIZES,
                   help="GPUs the record ran on, to check its scalars padding (default: accept any of 1, 2, 4, 8)")
    p.add_argument("--seed", type=int, default=UNKNOWN_SEED,
                   help=f"label the run with this seed, so several imported runs can be compared "
                        f"(default {UNKNOWN_SEED}: unknown)")
    p.set_defaults(func=cmd_import_record)

    p = sub.add_parser("eval", help="validation loss as the record computes it (comparable with its 3.2790)")
    p.add_argument("checkpoint", help="a checkpoint (step folder) or a run folder (its newest checkpoint)")
    p.add_argument("--data", help="data folder or shard glob (default: the checkpoint's own data folder)")
    p.add_argument("--tokens", type=int, default=RECORD_VAL_TOKENS,
                   help=f"validation tokens (default {RECORD_VAL_TOKENS:,}, the record's)")
    p.add_argument("--row-tokens", type=int, default=RECORD_ROW_TOKENS,
                   help=f"tokens per row (default {RECORD_ROW_TOKENS:,}, the record's per-GPU validation batch)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on CUDA (as the record), fp32 on CPU")
    p.add_argument("--segment-tokens", type=int,
                   help="tokens per forward pass, to bound memory (default: from free memory; the loss is the same)")
    p.set_defaults(func=cmd_eval)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    from commands.demo import DEMO_ARMS, DEMO_PRESET

    p = sub.add_parser("demo", help="the whole study on the embedded corpus: train, record, analyse, report")
    p.add_argument("--preset", default=DEMO_PRESET)
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--arms", default=",".join(DEMO_ARMS), metavar="A,B,...",
                   help=f"comma-separated arms, each trained for every seed (default {','.join(DEMO_ARMS)}); {ARM_HELP}")
    p.add_argument("--steps", type=int, help="training steps per run (default: 800 for cpu-small, to fit ten "
                   "minutes; else the preset's)")
    p.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                   help="override a training or model setting for every run (repeatable; default autocast=bf16, "
                        f"which --set autocast=fp32 replaces); {SET_FORMS}")
    p.add_argument("--out", default="checkpoints", help="folder for the run folders and tables")
    p.add_argument("--figures", default="figures", help="folder for figures, executed notebooks and report.md")
    _add_launch_options(p)
    p.add_argument("--no-notebooks", action="store_true", help="draw the figures without executing the notebooks")
    p.set_defaults(func=cmd_demo)


def _add_run_options(p: argparse.ArgumentParser, every: str) -> None:
    """The options a study and a sweep share: which runs, how trained, what is recorded and analysed."""
    import commands.study as study

    p.add_argument("--seeds", help="a count (3: seeds 0, 1, 2; the default), a list (0,4,7) or a range (2-5)")
    p.add_argument("--steps", type=int, help="training steps per run (default: the preset's)")
    p.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                   help=f"override a training or model setting for {every} (repeatable); {SET_FORMS}")
    p.add_argument("--data", help="data folder (default: the embedded corpus, built on first use)")
    p.add_argument("--record-every", type=int, metavar="N",
                   help=f"record heads and smear every N training steps (default {study.RECORD_EVERY}; 0: off)")
    p.add_argument("--metrics", nargs="+", metavar="METRIC", help=f"analysis metrics: any of {', '.join(METRICS)} "
                   f"(default: all)")


def _add_launch_options(p: argparse.ArgumentParser) -> None:
    """Where a study's runs go (demo, study, sweep): this machine's cores or GPUs, or a Ray cluster."""
    from commands.resources import CLUSTERS

    p.add_argument("--jobs", type=int, help="runs at a time, at most (default: one single-thread run per usable "
                   "core, no more than the runs left; on GPUs one per --gpus-per-run GPUs)")
    p.add_argument("--gpus-per-run", type=int, metavar="N", help="GPUs each run trains on, its own "
                   "(CUDA_VISIBLE_DEVICES; N > 1: under torchrun, a rank a GPU); default 1 where there are GPUs, "
                   "else 0: the CPU")
    p.add_argument("--cluster", choices=CLUSTERS, default="local", help="local: processes on this machine "
                   "(default); ray: Ray tasks on a cluster's nodes, retried when a node dies (pip install -e "
                   "'.[cluster]'; the study folder on storage every node sees; docs/cluster.md)")
    p.add_argument("--address", help="--cluster ray: the cluster's address as Ray takes it (default auto: the "
                   "cluster this machine joined with `ray start`; local: a cluster in this process)")


def _add_split_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-split-pairs", action="store_true",
                   help="also train seeds whose runs began on another machine kind (held back by default: a seed's "
                        "arms are pairs; commands/machine_kind.py)")


def launch_from(args: argparse.Namespace):
    """The Launch the options ask for."""
    from commands.resources import Launch

    if args.address and args.cluster != "ray":
        raise ConfigError(f"--address {args.address}: only with --cluster ray")
    return Launch(jobs=args.jobs, gpus_per_run=args.gpus_per_run, cluster=args.cluster, address=args.address or "auto")


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    import commands.study as study

    p = sub.add_parser("study", help="arms × seeds of a preset in one folder: train, analyse, report; "
                                     "rerun to continue an interrupted study",
                       description=study.__doc__.split("\n\n")[0] + " Options not given are taken from the "
                       "folder's study.json; arms and seeds given are added to it.")
    p.add_argument("--out", required=True, help="the study folder (run folders, analysis/, figures/, report.md, "
                                                "study.json), e.g. studies/NAME")
    p.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (required for a new study)")
    p.add_argument("--arms", metavar="A,B,...", help=f"comma-separated arms, each trained for every seed "
                   f"(new study: {','.join(study.DEFAULT_ARMS)}); {ARM_HELP}")
    _add_run_options(p, every="every run")
    p.add_argument("--tokens", type=int, help=f"analysis validation tokens (default {DEFAULT_TOKENS})")
    p.add_argument("--ablation-tokens", type=int, help=f"tokens for the ablations (default {DEFAULT_ABLATION_TOKENS})")
    p.add_argument("--path-positions", type=int,
                   help=f"path attribution query positions (default {DEFAULT_PATH_POSITIONS})")
    p.add_argument("--path-draws", type=int, help=f"path attribution draws per position (default {DEFAULT_PATH_DRAWS})")
    _add_launch_options(p)
    p.add_argument("--notebooks", action="store_true", help="draw the figures by executing the notebooks")
    p.add_argument("--drop-checkpoints", action="store_true",
                   help="delete each run's checkpoints once it is analysed (the study stays resumable and reportable "
                        "from its tables; the inspection notebook needs checkpoints)")
    _add_split_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_study)


def add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    import commands.study as study
    import commands.sweep as sweep

    p = sub.add_parser("sweep", help="a study per preset (one size each) under one folder, then the size sweep's "
                                     "report; rerun to continue",
                       description=sweep.__doc__.split("\n\n")[0] + " Options not given are taken from each "
                       "study's study.json (and the presets from sweep.json); arms, seeds and presets only grow.")
    p.add_argument("--out", required=True, help="the sweep folder: a study folder per preset, report.md, figures/, "
                                                "tables/, sweep.json")
    p.add_argument("--presets", metavar="P,Q,...", help=f"comma-separated presets, one size each (e.g. "
                   f"{','.join(sweep.SIZE_PRESETS)}; required for a new sweep)")
    p.add_argument("--arms", metavar="A,B,...", help=f"arms of every size (new study: {','.join(study.DEFAULT_ARMS)})")
    _add_run_options(p, every="every run of every size (e.g. --set val_every=100 for validation points to match losses at)")
    _add_launch_options(p)
    _add_split_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("study-copy", help="copy a study (or a sweep of studies) without its checkpoints (tables, "
                                          "report, each analysed run's records): the copy resumes on another machine")
    p.add_argument("study", help="the study folder, or a sweep's folder (its sweep.json)")
    p.add_argument("dest", help="where the copy goes (updated in place if it exists)")
    p.set_defaults(func=cmd_study_copy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smearlens", description="Does the smear gate free up attention heads?")
    sub = parser.add_subparsers(dest="command", required=True)
    add_training_parsers(sub)
    add_analysis_parsers(sub)
    add_study_parser(sub)
    add_sweep_parsers(sub)
    add_reading_parsers(sub)
    add_demo_parser(sub)
    add_record_parsers(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with `command_line`: what a report lists as the command that made it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["smearlens", *argv])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        args.func(args)
    except SmearlensError as e:
        print(f"smearlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "rerun the same command to continue" if args.command in ("study", "demo") else "resume with --resume"
        print(f"smearlens: interrupted; {again}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
