"""Interactive attention views: every arm's attention pattern per head side by side (hover a token to see
where it attends) and each token's smear coefficient on one colour scale with its legend, drawn by
CircuitsVis on one self-contained HTML page.

CircuitsVis's own `render` inlines its script bundle only when its connectivity check finds no network
(online, the page imports the bundle from unpkg.com), so the same call gives different pages on different
machines. Here the bundle is always inlined, once per page, and each view calls `CircuitsVis.render`
on it: the page works offline (file://) and is the same everywhere.
"""

from __future__ import annotations

import hashlib
import html
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import circuitsvis
import numpy as np
from circuitsvis.utils.convert_props import convert_props

from analysis.writeup.plots import ARM_LABELS, display_markdown, inspect_arrays
from trainer.errors import AnalysisError
from trainer.io import atomic_write_text

BUNDLE = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
ERRORS_ID = "smearlens-errors"

# Records every script error into a visible box: a reader sees why a view is empty, and tests read it
# back from the DOM. window.onerror sees script errors; the capturing listener also sees resources that
# failed to load (whose error events do not reach window.onerror).
ERROR_RECORDER = f"""<pre id="{ERRORS_ID}" hidden style="color:#b00;white-space:pre-wrap"></pre>
<script>
(function () {{
  function record(message) {{
    var box = document.getElementById("{ERRORS_ID}");
    box.hidden = false;
    box.textContent += "script error: " + message + "\\n";
  }}
  window.onerror = function (message, source, line) {{ record(message + " (" + source + ":" + line + ")"); }};
  window.addEventListener("error", function (e) {{
    if (e.target !== window) record("could not load " + (e.target.src || e.target.href || e.target.tagName));
  }}, true);
  window.addEventListener("unhandledrejection", function (e) {{ record("unhandled rejection: " + e.reason); }});
}})();
</script>"""

# The coefficient highlight runs from white to these colours. CircuitsVis writes a token in black when its
# background's brightness is >= 0.6, else in white; both colours are light enough that every shade between
# them and white gets black text at a contrast ratio of at least 4.5 (WCAG AA; tests/test_views.py checks
# the drawn page); with CircuitsVis's default blue, mid shades got white text at a contrast near 3.
POSITIVE_COLOR = "#f59e0b"  # amber, near the smear arm's orange
NEGATIVE_COLOR = "#38bdf8"  # sky blue: a learned λ below 0 would give negative coefficients

# Arms in columns side by side (three fit a 1400-pixel window); more wrap onto the next row.
STYLE = """body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.arms { display: grid; gap: 28px; grid-template-columns: repeat(auto-fit, minmax(400px, 1fr)); }
.arm { min-width: 0; } .arm h3 { font-size: 1em; margin: 0.4em 0; } .note { color: #555; font-size: 0.9em; }
.text { background: #f6f6f6; padding: 8px 12px; white-space: pre-wrap; }
.legend { display: flex; align-items: center; gap: 8px; margin: 0.6em 0 1em; font-size: 0.9em; }
.legend .bar { width: 260px; height: 14px; border: 1px solid #bbb; }"""


def _js_props(props: Mapping[str, Any]) -> str:
    """CircuitsVis's own prop conversion (arrays to lists, None dropped), made safe inside <script>:
    a token such as "</script>" or "<!--" must not end or comment out the script."""
    return convert_props(dict(props)).replace("<", "\\u003c")


def _bundle() -> str:
    if not BUNDLE.is_file():
        raise AnalysisError(f"{BUNDLE}: CircuitsVis's script bundle is missing; reinstall circuitsvis")
    return BUNDLE.read_text(encoding="utf-8").replace("</script>", "<\\/script>")


@dataclass(frozen=True)
class ArmResult:
    """One arm's inspection of the text: `inspect_text`'s patterns, tokens and coefficients, and where from."""

    arm: str
    patterns: list[np.ndarray | None]
    tokens: list[str]
    coefficients: np.ndarray | None
    source: str = ""


@dataclass(frozen=True)
class Component:
    """One CircuitsVis element to render: its name in the bundle and its props (JSON text)."""

    name: str
    props: str


class AttentionView:
    """Every arm's attention heads, layer by layer, and the smear coefficient of each token; arms side by
    side in the order given.

    `page()` is a whole HTML document; in a notebook the object shows itself (`_repr_html_`), always
    with the bundle inlined, whatever the network."""

    def __init__(self, arms: Sequence[ArmResult], text: str):
        if not arms:
            raise AnalysisError("attention view: no arm to show")
        self.arms = list(arms)
        self.text = text
        n_layers = {len(a.patterns) for a in self.arms}
        if len(n_layers) != 1:
            raise AnalysisError(f"the arms have different numbers of layers ({sorted(n_layers)})")
        self.n_layers = n_layers.pop()
        for a in self.arms:
            for layer, p in enumerate(a.patterns):
                if p is not None and (p.ndim != 3 or p.shape[1:] != (len(a.tokens), len(a.tokens))):
                    raise AnalysisError(f"{a.arm} layer {layer}: pattern of shape {p.shape}, expected "
                                        f"(heads, {len(a.tokens)}, {len(a.tokens)}) for its {len(a.tokens)} tokens")

    # -- the parts ---------------------------------------------------------------------------

    def scale(self) -> tuple[float, float]:
        """The coefficient colour scale, shared by every arm so that equal shades mean equal coefficients:
        from min(0, smallest) to max(1e-6, largest)."""
        values = [np.asarray(a.coefficients, dtype=float) for a in self.arms if a.coefficients is not None]
        lo = min([0.0] + [float(v.min()) for v in values])
        hi = max([1e-6] + [float(v.max()) for v in values])
        return lo, hi

    def legend(self) -> str:
        """The colour bar of the coefficient scale, its ends labelled, as CircuitsVis shades the tokens
        (white at 0, mixed linearly in RGB towards the colour at either end)."""
        lo, hi = self.scale()
        stops = f"{NEGATIVE_COLOR} 0%, #ffffff {100 * -lo / (hi - lo):.1f}%, " if lo < 0 else "#ffffff 0%, "
        return (f"<div class=\"legend\"><span>{lo:.3g}</span><span class=\"bar\" style=\"background: "
                f"linear-gradient(to right, {stops}{POSITIVE_COLOR} 100%)\"></span><span>{hi:.3g}</span>"
                "<span class=\"note\">smear coefficient, one scale for every arm (hover a token for its value)"
                "</span></div>")

    def _sections(self) -> list[tuple[str, str, list[tuple[str, str | Component]]]]:
        """(heading, HTML under it, [(sub-heading, element or note) per arm]) in page order."""
        lo, hi = self.scale()
        sections = []
        coef: list[tuple[str, str | Component]] = []
        for a in self.arms:
            label = ARM_LABELS.get(a.arm, a.arm)
            if a.coefficients is None:
                coef.append((label, "no smear in this arm: nothing of the previous token is added (coefficient 0)."))
            else:
                c = np.asarray(a.coefficients, dtype=float)
                coef.append((f"{label}: mean {c.mean():.3f}, max {c.max():.3f}", Component(
                    "ColoredTokens", _js_props(dict(tokens=a.tokens, values=c, minValue=lo, maxValue=hi,
                                                    positiveColor=POSITIVE_COLOR, negativeColor=NEGATIVE_COLOR)))))
        legend = self.legend() if any(a.coefficients is not None for a in self.arms) else ""
        sections.append(("Smear coefficient of each token (the share of the previous token's embedding added "
                         "to it)", legend, coef))
        for layer in range(self.n_layers):
            parts: list[tuple[str, str | Component]] = []
            for a in self.arms:
                label = ARM_LABELS.get(a.arm, a.arm)
                p = a.patterns[layer]
                if p is None:
                    parts.append((label, "attention-free block: no pattern."))
                    continue
                names = [f"L{layer}H{h}" for h in range(p.shape[0])]
                parts.append((label, Component("AttentionHeads", _js_props(dict(
                    attention=np.round(p, 4), tokens=a.tokens, attentionHeadNames=names, maskUpperTri=True,
                    maxValue=1.0, minValue=0.0)))))
            sections.append((f"Layer {layer}", "", parts))
        return sections

    def fragment(self, prefix: str | None = None) -> str:
        """The views as HTML (bundle inlined once), for a page body or a notebook output.

        Element ids derive from `prefix` (default: a digest of the content, so a page is reproducible)."""
        sections = self._sections()
        if prefix is None:
            digest = hashlib.sha256(json.dumps([[s, intro, [(h, getattr(e, "props", e)) for h, e in parts]]
                                                for s, intro, parts in sections]).encode()).hexdigest()
            prefix = f"smearlens-{digest[:12]}"
        body, calls = [], []
        for s, (heading, intro, parts) in enumerate(sections):
            body.append(f"<h2>{html.escape(heading)}</h2>\n{intro}<div class=\"arms\">")
            for i, (sub, element) in enumerate(parts):
                body.append(f"<div class=\"arm\"><h3>{html.escape(sub)}</h3>")
                if isinstance(element, Component):
                    div = f"{prefix}-{s}-{i}"
                    body.append(f"<div id=\"{div}\"></div>")
                    calls.append(f"CircuitsVis.render(\"{div}\", CircuitsVis.{element.name}, {element.props});")
                else:
                    body.append(f"<p class=\"note\">{html.escape(element)}</p>")
                body.append("</div>")
            body.append("</div>")
        # A classic (not module) script: its `var CircuitsVis` becomes a global the render calls can use.
        script = f"<script>\n{_bundle()}\n</script>\n<script>\n" + "\n".join(calls) + "\n</script>"
        return "\n".join(body) + "\n" + script

    def header(self) -> str:
        sources = "".join(f"<li>{html.escape(ARM_LABELS.get(a.arm, a.arm))}: <code>{html.escape(a.source)}</code></li>"
                          for a in self.arms if a.source)
        return (f"<p class=\"text\">{html.escape(self.text)}</p>"
                + (f"<ul class=\"note\">{sources}</ul>" if sources else "")
                + "<p class=\"note\">Hover a head's thumbnail to enlarge it (click to keep it); hover a cell or a "
                  "token to see where it attends. Rows are query tokens, columns the tokens attended to; "
                  "layers without attention are listed as such.</p>")

    def page(self) -> str:
        """A whole, self-contained HTML document (no network needed)."""
        return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>smearlens inspect: {html.escape(self.text[:60])}</title>\n<style>\n{STYLE}\n</style>\n</head>\n"
                f"<body>\n{ERROR_RECORDER}\n<h1>Attention and smear coefficients on one text</h1>\n{self.header()}\n"
                f"{self.fragment()}\n</body>\n</html>\n")

    def save(self, path: str | Path) -> Path:
        """Write the page (atomically)."""
        path = Path(path)
        atomic_write_text(path, self.page())
        return path

    def _repr_html_(self) -> str:
        # A fresh prefix: the same view shown twice in one notebook must not share element ids.
        return self.header() + "\n" + self.fragment(prefix=f"smearlens-{uuid.uuid4().hex[:12]}")


def attention_view(results: Mapping[str, Any], text: str, sources: Mapping[str, str] | None = None) -> AttentionView:
    """The view of `inspect_text` results per arm (its dict, or the notebook's (patterns, tokens,
    coefficients) tuples), the arms in the order given (`pick_runs` gives the study's)."""
    arms = []
    for arm, r in results.items():
        patterns, tokens, coef = r if isinstance(r, tuple) else inspect_arrays(r)
        arms.append(ArmResult(arm, patterns, tokens, coef, (sources or {}).get(arm, "")))
    return AttentionView(arms, text)


def inspect_checkpoints(checkpoints: Mapping[str, str | Path], text: str, device: str = "cpu") -> AttentionView:
    """Load each arm's checkpoint (or run folder: its newest checkpoint) and inspect `text` with it; the arms
    are shown in the order given."""
    from analysis.measures.inspect import inspect_text
    from analysis.loading import load_checkpoint_model

    results, sources = {}, {}
    for arm, path in checkpoints.items():
        model, meta = load_checkpoint_model(path, device)
        if model.tokenizer is None:
            raise AnalysisError(f"{path}: its run folder has no tokenizer.json, so the text cannot be tokenised")
        results[arm] = inspect_text(model, text)
        sources[arm] = f"{meta['path']} (step {meta.get('step', '?')})"
    return attention_view(results, text, sources)


def notebook_view(results: Mapping[str, tuple] | None, text: str) -> AttentionView | None:
    """Notebook cell body: the interactive view of `plots.notebook_inspect`'s results (shown inline)."""
    if not results:
        display_markdown("*No interactive view: no inspect results (see above).*")
        return None
    return attention_view(results, text)
