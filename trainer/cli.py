"""`smearlens` command line: data, train, train-pair, analyze, report, demo, import-record, eval."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from analysis.recorder import DEFAULT_EVERY
from trainer.config import PRESETS, ModelConfig, TrainConfig, get_preset
from trainer.errors import ConfigError, SmearlensError

DEFAULT_OUT = Path("checkpoints")
DEFAULT_DATA_ROOT = Path("data")


def default_data_dir(preset_name: str) -> Path:
    preset = get_preset(preset_name)
    vocab = "" if preset.tokenizer == "gpt2" else str(preset.bpe_vocab)
    return DEFAULT_DATA_ROOT / f"bigtxt-{preset.tokenizer}{vocab}"


def embedded_data(preset_name: str) -> Path:
    """The embedded corpus tokenised for the preset (built on first use; a built one is kept)."""
    from trainer.corpus import build_dataset

    preset = get_preset(preset_name)
    out = default_data_dir(preset_name)
    build_dataset(out, None, tokenizer=preset.tokenizer, vocab_size=preset.bpe_vocab)
    return out


def ensure_data(args: argparse.Namespace) -> Path:
    """The data folder to train on: the one given, or the embedded corpus built for the preset."""
    return Path(args.data) if args.data else embedded_data(args.preset)


def parse_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """`--set name=value` for any TrainConfig or ModelConfig field (values parsed as JSON when they can be)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"smear", "vocab_size", "bos_id"}
    train, model = {}, {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected name=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        value = tuple(value) if isinstance(value, list) else value
        if name in train_fields:
            train[name] = value
        elif name in model_fields:
            model[name] = value
        else:
            raise ConfigError(f"--set {name}: no such training or model setting")
    return train, model


def run_train(args: argparse.Namespace, arms: list[str]) -> None:
    from analysis.recorder import make_recorder
    from trainer.train import make_run, train

    data = ensure_data(args)
    train_over, model_over = parse_overrides(args.set)
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
        summary = train(Path(args.out) / run.name, run, resume=args.resume, stop_at=args.stop_at, device=args.device,
                        callbacks=(recorder,) if recorder else ())
        print(json.dumps(summary))


def cmd_data(args: argparse.Namespace) -> None:
    from trainer.corpus import build_dataset

    meta = build_dataset(Path(args.out), args.text or None, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                         val_fraction=args.val_fraction, seed=args.seed)
    print(json.dumps(meta))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smearlens", description="Does the smear gate free up attention heads?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="build train/val shards and a tokenizer from text")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text", nargs="*", help="text files or folders (default: the embedded corpus)")
    p.add_argument("--tokenizer", choices=["bpe", "gpt2"], default="bpe")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data)

    def train_args(p: argparse.ArgumentParser) -> None:
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
                       help="override any training or model setting, e.g. --set val_every=50")
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
        p.add_argument("--stop-at", type=int, help="stop (with a checkpoint) after this step, to resume later")
        p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
        p.add_argument("--record-every", type=int, default=DEFAULT_EVERY, metavar="N",
                       help=f"record per-head previous-token scores and smear stats every N steps "
                            f"(default {DEFAULT_EVERY}; 0: off)")

    p = sub.add_parser("train", help="train one arm")
    train_args(p)
    p.add_argument("--arm", required=True, choices=["smear", "baseline"])
    p.set_defaults(func=lambda a: run_train(a, [a.arm]))

    p = sub.add_parser("train-pair", help="train both arms from one seed (same initial weights and data order)")
    train_args(p)
    p.set_defaults(func=lambda a: run_train(a, ["smear", "baseline"]))

    from analysis.analyze import add_analyze_parser
    from analysis.demo import add_demo_parser
    from analysis.report import add_report_parser

    from trainer.record import add_record_parsers

    add_analyze_parser(sub)
    add_report_parser(sub)
    add_demo_parser(sub)
    add_record_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SmearlensError as e:
        print(f"smearlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smearlens: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
