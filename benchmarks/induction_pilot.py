"""The induction pilot's measurements (docs/induction.md): on every saved checkpoint of the given runs,
the detection measures fixed before the study.

- the induction score of every head (TransformerLens's definition: BOS + R + R, |R| = L random non-BOS
  tokens, mean attention from each second-copy token to the token after its first occurrence) at each
  repeat length of `probes.INDUCTION_LENGTHS` (11, 19, 27: held out of the cpu-induction data; 40: longer
  than any of its spans), on --rows rows per length; reported: the best head per length, and the best
  head's mean over the lengths (the recorder's `induction_heldout`);
- the loss on each copy of those rows (R[1:] of each copy, averaged over the lengths);
- Olsson's in-context score on the probe rows of the validation text (the recorder's: document
  positions late minus 40–59), and the best previous-token head on them.

    python benchmarks/induction_pilot.py RUN_DIR [RUN_DIR ...] [--rows 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from analysis.loading import load_checkpoint_model
from analysis.measures import probes as P
from analysis.measures.recorder import icl_ranges, probe_rows
from trainer.checkpoint import complete_checkpoints
from trainer.train import load_run


def measure(model, inputs, targets, rows: int) -> dict:
    rep = P.repeat_probe(model, P.INDUCTION_LENGTHS, batch=rows, seed=0)
    ind = torch.nan_to_num(rep.induction, nan=-1.0)  # (lengths, layers, heads); NaN: a layer without attention
    per_length = {L: float(ind[i].max()) for i, L in enumerate(rep.lengths)}
    mean = ind.mean(0)
    layer, head = divmod(int(mean.argmax()), mean.size(1))
    icl = P.in_context_losses(model, inputs, targets, *icl_ranges(inputs.size(1)))
    prev = torch.nan_to_num(P.previous_token_scores(model, inputs), nan=-1.0)
    return dict(best_head=[layer, head], best_mean=float(mean.max()), best_per_length=per_length,
                heads_ge_0_2=int((mean >= 0.2).sum()), copy_loss_first=float(rep.loss_first.mean()),
                copy_loss_second=float(rep.loss_second.mean()), icl_score=icl["icl_score"],
                best_prev_token=float(prev.max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--rows", type=int, default=16, help="rows of repeated tokens per length")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()
    out = {}
    for run_dir in args.runs:
        run = load_run(run_dir)
        inputs, targets = probe_rows(run.data, run.model.bos_id, run.model.vocab_size, run.train.seq_len)
        out[run.name] = {}
        for ckpt in complete_checkpoints(run_dir):
            t0 = time.process_time()
            model, meta = load_checkpoint_model(ckpt)
            m = measure(model, inputs, targets, args.rows)
            m["val_loss"] = meta.get("val_loss")
            out[run.name][int(meta["step"]) if "step" in meta else ckpt.name] = m
            lengths = " ".join(f"{L}:{v:.2f}" for L, v in m["best_per_length"].items())
            print(f"{run.name} {ckpt.name}: induction best L{m['best_head'][0]}H{m['best_head'][1]} "
                  f"{m['best_mean']:.3f} (per length {lengths}), heads ≥ 0.2: {m['heads_ge_0_2']}, copy loss "
                  f"{m['copy_loss_first']:.2f} → {m['copy_loss_second']:.2f}, ICL {m['icl_score']:+.3f}, "
                  f"prev-token {m['best_prev_token']:.2f}, val {m['val_loss']} ({time.process_time() - t0:.1f} CPU-s)",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
