"""Time of the mechanism tables per cpu-small checkpoint (readout, knock-outs, composition), one torch thread.

The checkpoint is a run folder's last one (default) or, with --random, a random-init cpu-small model
on the embedded corpus's validation data (built if missing), with analyze's default data settings
(16,384 readout tokens, 4,096 ablation tokens). Reports seconds per stage, the median of --reps.

    python benchmarks/mechanism_benchmark.py [RUN_DIR | --random] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from analysis.mechanism import composition, knockout, readout
from analysis.measures import probes
from analysis.analyze import DEFAULT_ABLATION_TOKENS, DEFAULT_TOKENS, data_batches, first_tokens
from analysis.loading import load_checkpoint_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="run folder or checkpoint (its last checkpoint is timed)")
    ap.add_argument("--random", action="store_true", help="random-init cpu-small model on the embedded corpus")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.random:
        from trainer.config import get_preset, to_dict
        from trainer.corpus import embedded_data
        from trainer.model import GPT

        preset = get_preset("cpu-small")
        model = GPT(preset.model, seed=0).eval()
        meta = dict(train_config=to_dict(preset.train), model_config=to_dict(preset.model),
                    data=str(embedded_data("cpu-small")))
    elif args.run:
        model, meta = load_checkpoint_model(args.run)
    else:
        ap.error("name a run folder or pass --random")
    batches = data_batches(meta, DEFAULT_TOKENS, None, None)
    tokens = torch.cat([x for x, _ in batches])
    prev = probes.data_pattern_metrics(model, [x for x, _ in batches], ["prev_token"])["prev_token"]
    induction = probes.repeat_metrics(model, ["induction"])["induction"]
    stages = {
        "readout_residuals": lambda: readout.residuals(model, tokens),
        "readout_total": lambda: readout.readout(model, tokens),
        "knockouts": lambda: knockout.knockout_table(model, first_tokens(batches, DEFAULT_ABLATION_TOKENS), prev),
        "composition": lambda: composition.composition_table(model, prev, induction),
    }
    times = {name: [] for name in stages}
    for _ in range(args.reps):
        for name, fn in stages.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    result = {name: round(statistics.median(v), 2) for name, v in times.items()}
    result["n_induction_heads"] = int((induction.nan_to_num(0) >= composition.INDUCTION_THRESHOLD).sum())
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
