"""`smearlens inspect --html`: one self-contained CircuitsVis page with both arms' attention per head and
the smear coefficients; the script bundle is inlined even when CircuitsVis would load it from its CDN,
and the page renders without script errors in a real (offline) browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import circuitsvis.utils.render as cv_render
import numpy as np
import pytest
from circuitsvis.attention import attention_heads
from PIL import Image

from analysis.writeup import views
from analysis.measures.inspect import inspect_text
from analysis.loading import load_checkpoint_model
from commands.cli import main
from trainer.config import get_preset
from trainer.errors import AnalysisError
from trainer.train import make_run, train

TEXT = "It was the best of times, it was the worst of times. </script><!-- Mr. Holmes & Watson"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_data) -> dict[str, Path]:
    """A tiny run per arm, a few steps each, in a folder laid out as the demo's (PRESET-sSEED-ARM)."""
    root = tmp_path_factory.mktemp("views")
    out = {}
    for arm in ("baseline", "smear"):
        run = make_run("tiny", get_preset("tiny"), arm, 0, tiny_data, train_overrides=dict(steps=3, val_every=0))
        train(root / run.name, run, device="cpu", progress=False)
        out[arm] = root / run.name
    return out


@pytest.fixture(scope="module")
def page(pair, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "inspect.html"
    assert main(["inspect", TEXT, "--html", str(path), "--smear", str(pair["smear"]),
                 "--baseline", str(pair["baseline"])]) == 0
    return path


def view_ids(text: str) -> list[str]:
    return re.findall(r'CircuitsVis\.render\("([^"]+)"', text)


def test_page_holds_both_arms_every_attention_layer_and_the_coefficients(page, pair):
    text = page.read_text(encoding="utf-8")
    cfg = get_preset("tiny").model
    # one AttentionHeads per arm and attention layer; one ColoredTokens (the smear arm's)
    assert text.count("CircuitsVis.AttentionHeads,") == 2 * len(cfg.attn_layers())
    assert text.count("CircuitsVis.ColoredTokens,") == 1
    for layer in cfg.no_attn_layers:
        assert f"<h2>Layer {layer}</h2>" in text
    assert text.count("attention-free block: no pattern.") == 2 * len(cfg.no_attn_layers)
    assert "no smear gate" in text  # the baseline's coefficient panel says why it is empty
    # the numbers are the model's own: the smear arm's coefficients as inspect_text computes them
    model, _ = load_checkpoint_model(pair["smear"])
    expected = inspect_text(model, TEXT)["coefficients"]
    shown = re.search(r'CircuitsVis\.ColoredTokens, (\{.*?\})\);', text).group(1)
    values = np.array(re.search(r'"values": \[([^\]]*)\]', shown).group(1).split(", "), dtype=float)
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert len(set(view_ids(text))) == len(view_ids(text))  # element ids are unique


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
    monkeypatch.chdir(tmp_path)  # the defaults (the demo's checkpoints/cpu-small-s0-*) are absent here
    assert main(["inspect", "some text", "--html", "x.html"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "checkpoints/cpu-small-s0-baseline" in err and "--baseline" in err
    assert main(["inspect", "x", "--smear", str(pair["smear"]), "--baseline", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("smearlens: error: nowhere: no baseline checkpoint")
    assert main(["inspect", "x", "--checkpoints", str(tmp_path / "none")]) == 2
    assert "no such checkpoints folder" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_checkpoints_folder_picks_a_seeds_pair(pair, tmp_path, capsys):
    out = tmp_path / "p.html"
    assert main(["inspect", "The cat sat.", "--html", str(out), "--checkpoints", str(pair["smear"].parent)]) == 0
    assert str(pair["smear"]) in out.read_text(encoding="utf-8") and str(out) in capsys.readouterr().out


def test_notebook_shows_the_same_view_inline(pair, monkeypatch, capsys):
    from analysis.writeup import plots

    monkeypatch.setattr(cv_render, "internet_on", lambda: True)
    results = plots.notebook_inspect(pair["smear"].parent, TEXT, inspect_text)
    shown = views.notebook_view(results, TEXT)._repr_html_()
    page = views.attention_view(results, TEXT).page()
    # the notebook output is the page's body: the same views, the bundle inlined (ids aside)
    assert re.sub(r"smearlens-[0-9a-f]{12}", "ID", shown) in re.sub(r"smearlens-[0-9a-f]{12}", "ID", page)
    assert "unpkg.com" not in shown and shown.count("CircuitsVis.AttentionHeads,") == 6
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
