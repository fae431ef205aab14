"""`smearlens inspect --html`: one self-contained CircuitsVis page with every arm's attention per head, side
by side in the study's order (or those `--arms` names), and the smear coefficients on one colour scale with
its legend, readable on every shade; the script bundle is inlined even when CircuitsVis would load it from
its CDN, and the page renders without script errors in a real (offline) browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import circuitsvis.utils.render as cv_render
import numpy as np
import pytest
from circuitsvis.attention import attention_heads
from PIL import Image

from analysis.writeup import plots, views
from analysis.measures.inspect import inspect_text
from analysis.loading import load_checkpoint_model
from commands.cli import main
from trainer.config import get_preset
from trainer.errors import AnalysisError
from trainer.train import make_run, train

TEXT = "It was the best of times, it was the worst of times. </script><!-- Mr. Holmes & Watson"
DEMO_ARMS = ("baseline", "smear", "dose-0.8")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_data) -> Path:
    """A tiny run of each of the demo's arms, a few steps each, in a folder laid out as the demo's
    (PRESET-sSEED-ARM and study.json)."""
    root = tmp_path_factory.mktemp("views")
    for arm in DEMO_ARMS:
        run = make_run("tiny", get_preset("tiny"), arm, 0, tiny_data, train_overrides=dict(steps=3, val_every=0))
        train(root / run.name, run, device="cpu", progress=False)
    (root / "study.json").write_text(json.dumps(dict(preset="tiny", arms=list(DEMO_ARMS), seeds=[0], steps=3)))
    return root


@pytest.fixture(scope="module")
def pair(study) -> dict[str, Path]:
    return {arm: study / f"tiny-s0-{arm}" for arm in ("baseline", "smear")}


@pytest.fixture(scope="module")
def page(study, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "inspect.html"
    assert main(["inspect", TEXT, "--html", str(path), "--checkpoints", str(study)]) == 0
    return path


def view_ids(text: str) -> list[str]:
    return re.findall(r'CircuitsVis\.render\("([^"]+)"', text)


def arms_shown(text: str) -> list[str]:
    """The arms of the coefficient section's columns, left to right (their headings start with the arm)."""
    section = text.split("<h2>Smear coefficient")[1].split("<h2>")[0]
    return [h.split(":")[0].split(" (")[0] for h in re.findall(r"<h3>(.*?)</h3>", section)]


def coefficients_shown(text: str) -> list[np.ndarray]:
    return [np.array(values.split(", "), dtype=float)
            for values in re.findall(r'CircuitsVis\.ColoredTokens, \{.*?"values": \[([^\]]*)\]', text)]


def test_page_holds_every_arm_every_attention_layer_and_the_coefficients(page, study):
    text = page.read_text(encoding="utf-8")
    cfg = get_preset("tiny").model
    assert arms_shown(text) == list(DEMO_ARMS)  # side by side in the study's order
    # one AttentionHeads per arm and attention layer; one ColoredTokens per arm with a smear
    assert text.count("CircuitsVis.AttentionHeads,") == 3 * len(cfg.attn_layers())
    assert text.count("CircuitsVis.ColoredTokens,") == 2
    for layer in cfg.no_attn_layers:
        assert f"<h2>Layer {layer}</h2>" in text
    assert text.count("attention-free block: no pattern.") == 3 * len(cfg.no_attn_layers)
    assert text.count("no smear in this arm") == 1  # the baseline's coefficient panel says why it is empty
    # the numbers are the models' own: the coefficients as inspect_text computes them, on one scale
    shown = coefficients_shown(text)
    for arm, values in zip(("smear", "dose-0.8"), shown):
        model, _ = load_checkpoint_model(study / f"tiny-s0-{arm}")
        np.testing.assert_allclose(values, inspect_text(model, TEXT)["coefficients"], rtol=1e-6)
    top = max(v.max() for v in shown)
    assert text.count(f'"minValue": 0.0, "maxValue": {top}') == 2
    # the legend bar, its ends labelled with the scale's
    legend = re.search(r'<div class="legend"><span>(.*?)</span><span class="bar" style="([^"]*)"></span>'
                       r'<span>(.*?)</span>', text)
    assert legend and legend.group(1) == "0" and float(legend.group(3)) == pytest.approx(top, rel=1e-3)
    assert views.POSITIVE_COLOR in legend.group(2)
    assert len(set(view_ids(text))) == len(view_ids(text))  # element ids are unique


def test_arms_picks_and_orders_the_arms_shown(study, tmp_path, capsys):
    out = tmp_path / "p.html"
    assert main(["inspect", "The cat sat.", "--html", str(out), "--checkpoints", str(study),
                 "--arms", "dose-0.8,baseline"]) == 0
    text = out.read_text(encoding="utf-8")
    assert arms_shown(text) == ["dose-0.8", "baseline"]
    assert "tiny-s0-smear" not in text and text.count("CircuitsVis.ColoredTokens,") == 1
    assert list(json.loads(capsys.readouterr().out)["arms"]) == ["dose-0.8", "baseline"]


@pytest.mark.parametrize("arms", ["baseline,dose-0.5", "baseline,nonsense"])
def test_an_arm_not_there_is_one_line_naming_it_and_the_arms_there(study, tmp_path, capsys, arms):
    assert main(["inspect", "x", "--html", str(tmp_path / "x.html"), "--checkpoints", str(study),
                 "--arms", arms]) == 2
    err = capsys.readouterr().err.strip()
    missing = arms.split(",")[1]
    assert "\n" not in err and f"no {missing} run of seed 0" in err and "(arms there: baseline, smear, dose-0.8)" in err
    assert not (tmp_path / "x.html").exists()


def test_runs_are_picked_in_the_study_order(tmp_path):
    def run(seed: int, arm: str) -> None:
        (tmp_path / f"p-s{seed}-{arm}").mkdir()
        (tmp_path / f"p-s{seed}-{arm}" / "run.json").write_text(json.dumps(dict(preset="p", arm=arm, seed=seed)))

    for seed, arm in [(0, "smear"), (0, "baseline"), (1, "dose-0.8"), (1, "baseline"), (1, "smear")]:
        run(seed, arm)
    names = lambda runs: [p.name for p in runs.values()]  # noqa: E731
    # seed 0 lacks dose-0.8: the lowest seed with every arm; without a study.json baseline, smear, the rest
    assert names(plots.pick_runs(tmp_path)) == ["p-s1-baseline", "p-s1-smear", "p-s1-dose-0.8"]
    assert names(plots.pick_runs(tmp_path, arms=["smear", "baseline"])) == ["p-s0-smear", "p-s0-baseline"]
    (tmp_path / "study.json").write_text(json.dumps(dict(arms=["dose-0.8", "smear", "baseline"])))
    assert list(plots.pick_runs(tmp_path)) == ["dose-0.8", "smear", "baseline"]
    assert list(plots.pick_runs(tmp_path, seed=0)) == ["smear", "baseline"]
    with pytest.raises(AnalysisError, match=r"no dose-0.8 run of seed 0 .*\(arms there: smear, baseline\)"):
        plots.pick_runs(tmp_path, seed=0, arms=["dose-0.8"])


def test_bundle_is_inlined_even_when_circuitsvis_finds_the_network(pair, monkeypatch):
    monkeypatch.setattr(cv_render, "internet_on", lambda: True)
    # the check bites: CircuitsVis's own output would now load its script from the CDN
    assert "unpkg.com" in attention_heads(np.ones((1, 2, 2)), ["a", "b"])._repr_html_()
    view = views.inspect_checkpoints(pair, TEXT)
    online, shown = view.page(), view._repr_html_()
    monkeypatch.setattr(cv_render, "internet_on", lambda: False)
    assert views.inspect_checkpoints(pair, TEXT).page() == online  # the same page offline and online
    bundle = views.BUNDLE.read_text(encoding="utf-8")[:200]
    for text in (online, shown):
        assert "unpkg.com" not in text and not re.search(r"<script[^>]*\bsrc=", text)
        assert text.count(bundle) == 1  # inlined once, however many views


def test_tokens_cannot_break_out_of_the_script(page):
    text = page.read_text(encoding="utf-8")
    # "</script>" and "<!--" in the text: escaped in the props, so only the page's own script tags close
    assert text.count("</script>") == 3  # the error recorder, the bundle, the render calls
    assert "<!-- Mr." not in text.split("<body>")[1].split("<h2>")[1]


def test_patterns_must_match_the_tokens():
    good = [np.full((2, 3, 3), 1 / 3), None]
    views.attention_view({"smear": dict(patterns=good, tokens=list("abc"), coefficients=np.zeros(3))}, "abc")
    with pytest.raises(AnalysisError, match="layer 0: pattern of shape"):
        views.attention_view({"smear": dict(patterns=good, tokens=list("ab"), coefficients=None)}, "ab")
    with pytest.raises(AnalysisError, match="different numbers of layers"):
        views.attention_view({"smear": dict(patterns=good, tokens=list("abc")),
                              "baseline": dict(patterns=good[:1], tokens=list("abc"))}, "abc")


def test_missing_checkpoints_give_one_line(tmp_path, capsys, pair, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default (the demo's checkpoints/) is absent here
    assert main(["inspect", "some text", "--html", "x.html"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "checkpoints: no demo runs there" in err and "smearlens demo" in err
    assert "--checkpoints" in err and "--baseline" in err
    assert main(["inspect", "x", "--smear", str(pair["smear"]), "--baseline", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("smearlens: error: nowhere: no baseline checkpoint")
    assert main(["inspect", "x", "--checkpoints", str(tmp_path / "none")]) == 2
    assert "no such checkpoints folder" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_the_demo_folder_is_the_default_and_given_runs_replace_theirs(study, pair, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").symlink_to(study)
    assert main(["inspect", "The cat sat.", "--html", "a.html"]) == 0
    assert arms_shown((tmp_path / "a.html").read_text(encoding="utf-8")) == list(DEMO_ARMS)
    assert "a.html" in capsys.readouterr().out
    # --smear alone: the demo folder gives the other arms; --smear and --baseline: only those two
    other = tmp_path / "other-smear"
    shutil.copytree(pair["smear"], other)
    assert main(["inspect", "The cat sat.", "--html", "b.html", "--smear", str(other)]) == 0
    arms = json.loads(capsys.readouterr().out)["arms"]
    assert list(arms) == list(DEMO_ARMS) and str(other) in arms["smear"]
    assert main(["inspect", "The cat sat.", "--html", "c.html", "--smear", str(other),
                 "--baseline", str(pair["baseline"])]) == 0
    assert list(json.loads(capsys.readouterr().out)["arms"]) == ["baseline", "smear"]


def test_notebook_shows_the_same_view_inline(pair, monkeypatch, capsys):
    monkeypatch.setattr(cv_render, "internet_on", lambda: True)
    results = plots.notebook_inspect(pair["smear"].parent, TEXT, inspect_text)
    shown = views.notebook_view(results, TEXT)._repr_html_()
    page = views.attention_view(results, TEXT).page()
    # the notebook output is the page's body: the same views, the bundle inlined (ids aside)
    assert re.sub(r"smearlens-[0-9a-f]{12}", "ID", shown) in re.sub(r"smearlens-[0-9a-f]{12}", "ID", page)
    assert "unpkg.com" not in shown and shown.count("CircuitsVis.AttentionHeads,") == 9  # 3 arms × 3 layers
    assert views.notebook_view(None, TEXT) is None


# ---- a real browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with every host name unresolvable: the page gets no network at all."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
                           "--window-size=1300,1600", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_page_renders_offline_in_chromium_without_script_errors(page, tmp_path):
    url = page.resolve().as_uri()
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    box = re.search(rf'<pre id="{views.ERRORS_ID}"([^>]*)>(.*?)</pre>', dom.stdout, re.S)
    assert box is not None, "the error recorder is missing from the rendered page"
    assert box.group(2) == "" and "hidden" in box.group(1), f"script errors: {box.group(2)}"
    # every view was drawn: React filled each element CircuitsVis rendered into
    for div in view_ids(page.read_text(encoding="utf-8")):
        inner = re.search(rf'<div id="{div}">(.*?)</div>', dom.stdout, re.S)
        assert inner is not None and "<" in inner.group(1), f"view {div} is empty"
    assert "L3H1" in dom.stdout  # the last layer's head names, drawn by AttentionHeads

    shot = tmp_path / "page.png"
    run = chromium(f"--screenshot={shot}", url)
    assert shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank page: text, thumbnails and coloured tokens


def contrast(rgb: tuple[int, int, int], text: str) -> float:
    """WCAG 2 contrast ratio between a background colour and black or white text."""
    def luminance(c: tuple[int, ...]) -> float:
        lin = [x / 255 / 12.92 if x <= 10 else ((x / 255 + 0.055) / 1.055) ** 2.4 for x in c]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    light, dark = sorted([luminance(rgb), luminance({"black": (0, 0, 0), "white": (255, 255, 255)}[text])])[::-1]
    return (light + 0.05) / (dark + 0.05)


def highlights(dom: str) -> list[tuple[tuple[int, int, int], str]]:
    """(background, text colour) of every token CircuitsVis drew with a coefficient's shade."""
    cells = re.findall(r'<span style="display: inline-block; background-color: rgb\((\d+), (\d+), (\d+)\); '
                       r'color: (\w+);', dom)
    return [((int(r), int(g), int(b)), text) for r, g, b, text in cells]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_every_coefficient_shade_is_readable(tmp_path):
    """Across the whole scale, negative coefficients included, each token's text has a contrast ratio of at
    least 4.5 (WCAG AA) with its background, as the browser draws it."""
    tokens = [f"t{i}" for i in range(41)]
    patterns = [np.full((1, 41, 41), 1 / 41)]
    results = {"baseline": (patterns, tokens, None), "smear": (patterns, tokens, np.linspace(-0.3, 0.5, 41)),
               "dose-0.8": (patterns, tokens, np.full(41, 0.8))}
    page = views.attention_view(results, "t" * 41).save(tmp_path / "shades.html")
    dom = chromium("--dump-dom", page.resolve().as_uri())
    cells = highlights(dom.stdout)
    assert len(cells) == 2 * 41, dom.stderr[-2000:]  # every token of both smear arms
    assert len({rgb for rgb, _ in cells}) > 30  # many shades, white to both ends
    worst = min(cells, key=lambda c: contrast(*c))
    assert contrast(*worst) >= 4.5, f"text {worst[1]} on rgb{worst[0]}: contrast {contrast(*worst):.2f}"
    assert "-0.3" in page.read_text(encoding="utf-8").split('class="legend"')[1][:40]  # the scale's low end
