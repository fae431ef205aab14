"""`smearlens report`: figures, statistics, verdict, commands and configs in one markdown file."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis.stats import headline as headline_table
from analysis.writeup import plots, report
from commands.cli import main as cli_main, parse_args
from fixtures.synthetic_tables import make_tables, write_tables
from trainer.errors import AnalysisError


@pytest.fixture(scope="module")
def good_report(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    tables = write_tables(root / "checkpoints" / "analysis")
    out = report.write_report(tables, root / "figures", root / "reports" / "report.md",
                              commands=["smearlens train-pair --preset tiny --seed 0", "smearlens report"])
    return out, out.read_text()


def test_report_embeds_every_figure_by_relative_path(good_report):
    out, text = good_report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # no doses, no gate arms, no speedrun arms and no induction tables here: none of their sections
    assert len(links) == (len(plots.FIGURES) - len(plots.DOSE_FIGURES) - len(plots.GATE_FIGURES)
                          - len(plots.SPEEDRUN_FIGURES) - len(plots.INDUCTION_FIGURES))
    assert "## Dose-response" not in text and "dose_response" not in text
    assert "## Induction" not in text and "induction_formation" not in text
    assert not (out.parent / "induction_claims.csv").exists()
    for link in links:
        assert link.startswith("../figures/")
        path = out.parent / link
        assert path.stat().st_size > 0 and path.with_suffix(".svg").stat().st_size > 0
        with Image.open(path) as im:
            assert im.size[0] > 100


def test_report_opens_with_its_answer_and_the_summary_figure(good_report):
    out, text = good_report
    first_screen = text.split("## Conclusion", 1)[0]
    assert re.findall(r"^## .*", first_screen, re.M) == ["## Summary"]  # the answer comes before anything else
    assert len(first_screen.splitlines()) <= 20
    # one sentence per arm, each number with its CI and verdict; the synthetic smear carries 0.30 by construction
    assert ("- **smear** carries 30.0% [27.5%, 32.5%] of token i−1's effect. Against the baseline, paired by seed: "
            "previous-token mass -0.858 [-0.966, -0.750]: **lower**; heads ≥ 0.4 -2.00 [-2.00, -2.00]: **lower**; "
            "best head -0.260 [-0.273, -0.248]: **lower** (3 pairs; primary claims (previous-token mass, heads ≥ 0.4, "
            "best head) fixed before the runs, Holm).") in first_screen
    assert "](../figures/summary.png)" in first_screen and "Small points: seeds" in first_screen
    assert "summary.png" not in text.split("## Figures", 1)[1]  # drawn once, at the top
    # the headline table beside the report says the same numbers as the statistics table
    headline = headline_table.read_headline(out.parent)
    mass = headline[(headline["arm"] == "smear") & (headline["measure"] == "prev_mass")].iloc[0]
    assert mass["role"] == "primary" and mass["verdict"] == "lower" and mass["n"] == 3
    assert round(mass["estimate"], 3) == -0.858 and round(mass["ci_low"], 3) == -0.966
    assert set(headline["measure"]) == {"smear_share", "prev_mass", "n_prev_heads", "best_prev"}


def test_a_report_states_its_reference_study(good_report, tmp_path):
    """A report with few seeds states the verdicts of the study that can decide (the demo: the powered one)."""
    reference, _ = good_report
    tables = write_tables(tmp_path / "analysis", seeds=(0, 1))
    out = report.write_report(tables, tmp_path / "figures", tmp_path / "report.md", reference=reference.parent)
    summary = out.read_text().split("## Conclusion", 1)[0]
    said = summary.split("The reference study", 1)[1]
    assert said.startswith(", with the seeds to decide (3 pairs at `tiny`, step 40; [its report](")
    link = re.search(r"\[its report\]\(([^)]+)\)", said).group(1)
    assert (out.parent / link).resolve() == reference.resolve()
    assert "- **smear** carries 30.0% [27.5%, 32.5%]" in said and "**lower**" in said
    # its own sentence says how few pairs it has
    assert "(2 pairs;" in summary.split("The reference study", 1)[0]


def test_a_missing_reference_is_one_line_before_any_work(tmp_path, capsys):
    tables = write_tables(tmp_path / "analysis")
    with pytest.raises(AnalysisError, match=r"nowhere: no headline table there"):
        report.write_report(tables, tmp_path / "figures", tmp_path / "report.md", reference=tmp_path / "nowhere")
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "figures").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("arm,verdict\nsmear,lower\n")
    code = cli_main(["report", "--tables", str(tables), "--figures", str(tmp_path / "f"), "--reference", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "bad.csv: not a headline table (no column preset" in err[0]


def test_report_states_the_verdict_and_the_statistics(good_report):
    _, text = good_report
    summary = text.split("## Summary", 1)[1].split("##", 1)[0]
    assert "Heads are freed up" in summary
    stats_part = text.split("## Statistics", 1)[1].split("## Per-seed values", 1)[0]
    primary = stats_part.split("### Primary claims (fixed before the runs)", 1)[1].split("###", 1)[0]
    assert ("| previous-token heads (score ≥ 0.4) | smear − baseline | 0.5 | 3 | -2.00 | [-2.00, -2.00] | 0 | "
            "0.250 (≥ 0.25) |") in primary
    assert "cannot go below 2/2ⁿ: 0.25 with these 3 pairs" in stats_part  # the floor for the pairs at hand
    assert "| total previous-token mass (sum of scores) | smear − baseline | 0.05 | 3 |" in primary
    assert primary.count("| lower |") == 3 and "Holm p" in primary and "TOST p" in primary
    assert "power at SESOI (observed σ / upper σ)" in primary and "Why these claims and SESOIs:" in primary
    assert "- total previous-token mass (sum of scores) (SESOI 0.05): σ of the paired differences" in primary
    assert "- previous-token heads (score ≥ 0.4): no spread in the paired differences, so the t tests" in primary
    explo = stats_part.split("### Exploratory comparisons (not corrected for multiple comparisons)", 1)[1]
    assert "| smear − baseline | induction score at the baseline's previous-token heads |" in explo
    assert "(paired t)" in explo and "Welch" not in explo and "no significant difference" not in text
    assert "### Previous-token heads at each threshold" in text and "| 0.80 |" in text
    assert "| baseline | 0 | tiny-s0-baseline | 40 | 20,480 | 2.00 |" in text  # per-seed table
    assert "| 0 | tiny-s0-smear | 40 |" in text  # smear λ per seed


def test_report_has_the_mechanism_section(good_report):
    out, text = good_report
    section = text[text.index("## Mechanism: where the previous token travels"):text.index("## Smear gate at the last")]
    for name in plots.MECHANISM_FIGURES:
        assert f"]({'../figures/'}{name}.png)" in section  # the mechanism figures sit in their section
    figures = text[text.index("## Figures"):text.index("## Mechanism")]
    assert not any(f"{name}.png" in figures for name in plots.MECHANISM_FIGURES)
    assert "#### Path shares" in section and "| smear share of token i−1's effect (gate all) | smear vs 0 | 3 |" in section
    conclusion = text[text.index("## Conclusion"):text.index("## Statistics")]
    assert "the smear term carries 0.30 (95% CI" in conclusion and "read-out above the backward-bigram" in conclusion
    assert "Knock-outs: knocking the smear term out" in conclusion and "no difference" not in text
    assert "`readout` (" in text and "`knockouts` (" in text  # provenance lists the mechanism tables


def test_report_lists_commands_and_configs(good_report):
    _, text = good_report
    prov = text.split("## How these numbers were made", 1)[1]
    assert "```bash\nsmearlens train-pair --preset tiny --seed 0\nsmearlens report\n```" in prov
    assert '"model_config.n_layers": 4' in prov  # shared settings, once
    assert "| tiny-s0-smear | \"smear\" | true |" in prov  # what differs between runs
    assert "`record_heads`" in prov


def test_identical_arms_are_reported_equivalent(tmp_path):
    frames = make_tables(arms=("baseline",))
    heads = frames["heads"]
    smear = heads.assign(arm="smear", run=heads["run"].str.replace("baseline", "smear"))
    folder = tmp_path / "analysis"
    folder.mkdir()
    pd.concat([heads, smear]).to_parquet(folder / "heads.parquet")
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "r.md", formats=("png",)).read_text()
    assert "Heads are not freed up: the smear arm matches the baseline within the smallest effects" in text
    assert "equivalent within ±0.05" in text and "equivalent within ±0.5" in text and "no difference" not in text
    assert "Commands:\n\n*Not recorded" in text
    assert "*Not drawn: no smear table" in text  # the smear figures say why they are absent


@pytest.fixture
def no_drawing(monkeypatch):
    """Skip drawing where a test checks only the text (figures are checked above and in test_notebooks)."""
    monkeypatch.setattr(report.plots, "draw_all", lambda tables, folder, *a, **k: {n: "skipped" for n in plots.FIGURES})


def test_one_seed_report_says_why_statistics_are_absent(tmp_path, no_drawing):
    folder = write_tables(tmp_path / "ck" / "analysis", seeds=(0,))
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "r.md", formats=("png",)).read_text()
    assert "Cannot decide whether heads are freed up" in text
    assert "absent: fewer than 2 seeds per arm (baseline 1, smear 1)" in text
    assert "- the baseline arm has 1 seed (0): no significance test" in text


def test_mixed_presets_give_a_report_without_statistics(tmp_path):
    folder = tmp_path / "analysis"
    folder.mkdir()
    pd.concat([make_tables(preset="tiny")["heads"], make_tables(preset="cpu-small")["heads"]]) \
        .to_parquet(folder / "heads.parquet")
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "r.md", commands=["x"]).read_text()
    assert "## No analysis" in text and "mix runs of different presets" in text
    assert "## Statistics" not in text and "```bash\nx\n```" in text
    assert not (tmp_path / "figs").exists()


def test_unreadable_tables_raise(tmp_path):
    with pytest.raises(AnalysisError, match="no such tables folder"):
        report.write_report(tmp_path / "nope", tmp_path / "f", tmp_path / "r.md")


def test_notebooks_flag_uses_the_notebooks(tmp_path, monkeypatch):
    folder = write_tables(tmp_path / "ck" / "analysis")
    calls = []

    def fake_run(tables_dir, figures_dir, **kw):  # executing notebooks is tested in test_notebooks
        calls.append(kw)
        (Path(figures_dir) / "notebooks").mkdir(parents=True, exist_ok=True)
        plots.draw_all(report.stats.load_tables(tables_dir), figures_dir, names=["prev_token_heatmaps"],
                       formats=("png",))
        return {"01_previous_token_heads": Path(figures_dir) / "notebooks" / "01.ipynb", "02_smear_gate": "boom"}

    monkeypatch.setattr(report, "run_notebooks", fake_run)
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "figs" / "report.md", notebooks=True,
                               threshold=0.3).read_text()
    assert calls and calls[0]["threshold"] == 0.3
    assert "![Previous-token score per head](prev_token_heatmaps.png)" in text
    assert "not drawn by the notebook" in text
    assert "[executed copy](notebooks/01.ipynb)" in text and "failed — boom" in text


def test_a_notebook_workers_terminal_output_goes_to_its_log(tmp_path):
    """What a kernel prints on its own (libzmq once aborted at shutdown: "Assertion failed: pfd.revents &
    POLLIN") lands in the kernels' log, not among the demo's progress lines."""
    import subprocess
    import sys

    log = tmp_path / "kernels.log"
    kernel = "import os; os.write(1, b'kernel out\\n'); os.write(2, b'Assertion failed: pfd.revents\\n')"
    worker = ("import subprocess, sys; from analysis.writeup.notebook_runner import log_terminal_to; log_terminal_to(sys.argv[1]); "
              f"subprocess.run([sys.executable, '-c', {kernel!r}], check=True); print('worker', flush=True)")
    done = subprocess.run([sys.executable, "-c", worker, str(log)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""
    assert log.read_text().splitlines() == ["kernel out", "Assertion failed: pfd.revents", "worker"]


def test_report_with_a_third_arm(tmp_path, no_drawing):
    folder = write_tables(tmp_path / "ck" / "analysis", arms=("baseline", "smear", "dose-0.8"))
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "r.md", formats=("png",)).read_text()
    assert "seeds: 0–2 in every arm ·" in text
    assert report.seed_ranges([5, 0, 1, 2, 3, 7, 9, 10]) == "0–3, 5, 7, 9, 10" and report.seed_ranges([]) == "none"
    primary = text.split("### Primary claims", 1)[1].split("###", 1)[0]
    assert "dose-0.8" not in primary
    explo = text.split("### Exploratory comparisons", 1)[1].split("##", 1)[0]
    assert "| dose-0.8 − baseline | total previous-token mass (sum of scores) |" in explo
    sweep = text.split("### Previous-token heads at each threshold", 1)[1].split("##", 1)[0]
    assert "| 0.40 | smear − baseline |" in sweep and "| 0.40 | dose-0.8 − baseline |" in sweep


def test_cli_writes_the_report(tmp_path, capsys, no_drawing):
    folder = write_tables(tmp_path / "ck" / "analysis", seeds=(0, 1))
    args = parse_args(["report", "--tables", str(folder), "--figures", str(tmp_path / "figs"),
                       "--command", "smearlens train-pair --preset tiny --seed 0", "--threshold", "0.5"])
    assert args.command == "report"  # --command does not clobber the subcommand's dest
    args.func(args)
    out = tmp_path / "figs" / "report.md"
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    assert "previous-token threshold 0.5" in text and "smearlens train-pair --preset tiny --seed 0" in text
    assert f"smearlens report --tables {folder} --figures" in text  # the command that made it, as typed
    assert cli_main(["report", "--tables", str(tmp_path / "nope")]) == 2
    assert "smearlens: error:" in capsys.readouterr().err


def test_every_arm_of_a_screen_gets_its_own_colour():
    # a screen has 20 arms: each is told apart in the figures (once, every arm past the 8th was green)
    from analysis.writeup.plots.style import _ArmStyle, _palette

    colours = _ArmStyle({"baseline": "#3b6fb6", "smear": "#e07b28"}, _palette())
    arms = ["baseline", "smear", *(f"arm-{i}" for i in range(28))]
    assert len({colours[a] for a in arms}) == len(arms)
    assert colours["arm-0"] == colours["arm-0"]  # an arm keeps its colour


def test_report_says_which_machines_trained_each_seed(tmp_path):
    from analysis import stats

    tables = stats.load_tables(write_tables(tmp_path / "checkpoints" / "analysis"))
    assert "not recorded" in report.machines_sentence(tables)  # manifests from before machines were recorded
    for run, manifest in tables.configs.items():
        seed = int(run.split("-s")[1].split("-")[0])
        kind = "native" if seed == 0 or (seed == 2 and "smear" in run) else "fp32, rounded to bf16"
        manifest["machine"] = dict(cpu="AMD EPYC", bf16_gemm=kind)
    sentence = report.machines_sentence(tables)
    assert "1 with fp32, rounded to bf16; 1 with native" in sentence and sentence.endswith("split across kinds: 2.")
    per_seed = stats.per_seed_claims(tables.heads)
    assert "AMD EPYC (native)" in report._runs_markdown(tables, per_seed)
    assert report.arms_by_machine(tables, per_seed) == ""  # one seed a kind: nothing to compare within a kind
    assert report.machine_offsets(tables, per_seed) == ""  # nor a kind's runs against another's
    tables = stats.load_tables(write_tables(tmp_path / "four" / "analysis", seeds=(0, 1, 2, 3)))
    per_seed = stats.per_seed_claims(tables.heads)
    for run, manifest in tables.configs.items():  # seeds 0 and 1 on one kind, 2 and 3 on the other
        seed = int(run.split("-s")[1].split("-")[0])
        manifest["machine"] = dict(bf16_gemm="native" if seed < 2 else "fp32, rounded to bf16")
    by_kind = report.arms_by_machine(tables, per_seed)
    diffs = per_seed.pivot(index="seed", columns="arm", values="prev_mass").pipe(lambda w: w["smear"] - w["baseline"])
    assert f"| total previous-token mass (sum of scores) | smear − baseline | native | 2 | {diffs[[0, 1]].mean():.3f} |" in by_kind
    assert f"| fp32, rounded to bf16 | 2 | {diffs[[2, 3]].mean():.3f} |" in by_kind
    offsets = report.machine_offsets(tables, per_seed)  # each arm's runs on one kind against the other, unpaired
    base = per_seed[per_seed["arm"] == "baseline"].set_index("seed")["prev_mass"]
    native, other = base[[0, 1]].mean(), base[[2, 3]].mean()
    assert (f"| total previous-token mass (sum of scores) | baseline | native − fp32, rounded to bf16 | 2 / 2 | "
            f"{native:.3f} − {other:.3f} | {native - other:.3f} |" in offsets)
    assert "| smear | native − fp32" in offsets
    # a promoted arm trained later on another kind: its pairs of seeds 0 and 1 are split, 2 and 3 are not
    tables = stats.load_tables(write_tables(tmp_path / "dose" / "analysis", seeds=(0, 1, 2, 3),
                                            arms=("baseline", "smear", "dose-0.8")))
    for run, manifest in tables.configs.items():
        seed = int(run.split("-s")[1].split("-")[0])
        manifest["machine"] = dict(bf16_gemm="native" if seed >= 2 or "dose" in run else "fp32, rounded to bf16")
    per_seed = stats.per_seed_claims(tables.heads)
    by_kind = report.arms_by_machine(tables, per_seed)
    wide = per_seed.pivot(index="seed", columns="arm", values="prev_mass")
    diffs = wide["dose-0.8"] - wide["baseline"]
    assert f"| dose-0.8 − baseline | native | 2 | {diffs[[2, 3]].mean():.3f} |" in by_kind
    assert "dose-0.8 − baseline | fp32" not in by_kind and "| smear − baseline | native | 2 |" in by_kind
