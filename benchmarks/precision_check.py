"""Do two trainings of the same runs give the same per-seed numbers? (bf16 vs fp32, or two code versions)

    python benchmarks/precision_check.py studies/bf16-check checkpoints \
        [--floor studies/powered checkpoints] [--out figures/study/precision_check.csv]

Each argument is a folder of run folders with an `analysis/` tables folder (a study folder, or the
demo's `checkpoints/`). Runs are matched by (arm, seed). For every per-seed number the study reads —
total previous-token mass, best head, heads ≥ 0.4, validation loss, the smear path's share of token
i−1's effect — it prints both values and their difference, and for each seed the difference of the
*paired contrast* (arm − baseline), which is what the study's claims are about. Differences are
compared with each claim's smallest effect of interest (SESOI): a precision that moves per-seed
contrasts by a good fraction of the SESOI cannot stand in for the other.

--floor names a second pair of folders trained in the *same* precision whose only difference is the
order of floating-point sums (e.g. the same seed trained by two code versions that agree bit for bit
for the first hundreds of steps): training is chaotic, so any perturbation grows, and this floor is
what "the same numbers" can mean at all. A null effect within seed noise is no check: the verdict
is about per-seed agreement, not about the arms' means.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.stats import mechanism_stats as mech  # noqa: E402
from analysis import stats  # noqa: E402
from trainer.errors import AnalysisError  # noqa: E402

MEASURES = ("prev_mass", "best_prev", "n_prev_heads", "val_loss", "smear_share")
SESOI = {**{m: stats.SESOI[m] for m in MEASURES if m in stats.SESOI}, "smear_share": mech.SESOI["share"]}
AGREE = 0.25  # "well within" the SESOI: every per-seed contrast moves by at most a quarter of it


def per_seed(folder: Path) -> pd.DataFrame:
    """arm, seed and the MEASURES of every run analysed in `folder`/analysis."""
    tables = stats.load_tables(folder / "analysis", runs_dir=folder, validate=False)
    df = stats.per_seed_claims(tables.heads)
    if tables.losses is not None:
        df = df.merge(tables.losses, on="run", how="left")
    if tables.paths is not None:
        share = mech.share_per_seed(tables.paths)[["run", "smear_all"]].rename(columns={"smear_all": "smear_share"})
        df = df.merge(share, on="run", how="left")
    for m in MEASURES:
        df[m] = df.get(m, float("nan"))
    df.loc[df["arm"] == stats.BASELINE, "smear_share"] = 0.0  # no smear term: nothing travels by it
    return df[["arm", "seed"] + list(MEASURES)]


def contrasts(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, seed) with a baseline of that seed: arm − baseline for every measure."""
    base = df[df["arm"] == stats.BASELINE].set_index("seed")[list(MEASURES)]
    rows = []
    for _, r in df[df["arm"] != stats.BASELINE].iterrows():
        if r["seed"] in base.index:
            rows.append({"arm": r["arm"], "seed": r["seed"],
                         **{m: r[m] - base.loc[r["seed"], m] for m in MEASURES}})
    return pd.DataFrame(rows, columns=["arm", "seed", *MEASURES])


def compare(a: pd.DataFrame, b: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Tidy: kind, arm, seed, measure, a, b, diff (a − b) over the (arm, seed) pairs both hold."""
    both = a.merge(b, on=["arm", "seed"], suffixes=("_a", "_b"))
    rows = [dict(kind=kind, arm=r["arm"], seed=int(r["seed"]), measure=m, a=r[f"{m}_a"], b=r[f"{m}_b"],
                 diff=r[f"{m}_a"] - r[f"{m}_b"]) for _, r in both.iterrows() for m in MEASURES]
    return pd.DataFrame(rows)


def table(a_dir: Path, b_dir: Path, label: str) -> pd.DataFrame:
    a, b = per_seed(a_dir), per_seed(b_dir)
    out = pd.concat([compare(a, b, "run"), compare(contrasts(a), contrasts(b), "contrast")], ignore_index=True)
    return out.assign(check=label)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Largest and median |difference| per check, kind and measure, as a fraction of the SESOI too."""
    g = df.dropna(subset=["diff"]).assign(abs=lambda d: d["diff"].abs())
    out = g.groupby(["check", "kind", "measure"])["abs"].agg(["count", "median", "max"]).reset_index()
    out["sesoi"] = out["measure"].map(SESOI)
    out["max_over_sesoi"] = out["max"] / out["sesoi"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="folder of runs + analysis/ (e.g. the bf16 study)")
    ap.add_argument("b", type=Path, help="the same runs trained the other way (e.g. fp32)")
    ap.add_argument("--floor", nargs=2, type=Path, metavar=("A", "B"),
                    help="two folders of the same runs in one precision, differing only in summation order")
    ap.add_argument("--out", type=Path, help="write the per-seed differences as CSV here")
    args = ap.parse_args(argv)
    try:
        parts = [table(args.a, args.b, f"{args.a} vs {args.b}")]
        if args.floor:
            parts.append(table(*args.floor, f"floor: {args.floor[0]} vs {args.floor[1]}"))
    except AnalysisError as e:
        print(f"precision_check: error: {e}", file=sys.stderr)
        return 2
    df = pd.concat(parts, ignore_index=True)
    pd.set_option("display.width", 200)
    for (check, kind), g in df.groupby(["check", "kind"], sort=False):
        print(f"\n{check} — {'per run' if kind == 'run' else 'per seed, arm − baseline'}:")
        print(g.pivot_table(index=["arm", "seed"], columns="measure", values="diff")[list(MEASURES)]
              .to_string(float_format=lambda v: f"{v:+.4f}"))
    s = summary(df)
    print("\n|difference| against each measure's SESOI:")
    print(s.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    main_contrasts = s[(s["check"] == parts[0]["check"].iloc[0]) & (s["kind"] == "contrast")]
    worst = main_contrasts["max_over_sesoi"].max()
    agree = bool(len(main_contrasts)) and worst <= AGREE
    print(f"\nlargest per-seed contrast difference: {worst:.2f} × its SESOI → "
          + ("the same per-seed numbers well within the SESOI (≤ {:.2f} ×)".format(AGREE) if agree else
             "NOT the same per-seed numbers to well within the SESOI (> {:.2f} ×)".format(AGREE)))
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(tmp, index=False)
        tmp.replace(args.out)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
