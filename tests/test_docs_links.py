"""The README is a front page, and every relative link in it and in docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150

# [text](target "title") and ![alt](target); <img src="target">; [label]: target (reference definitions)
INLINE = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)[^)]*\)")
IMG = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
CODE_SPAN = re.compile(r"(`+).*?\1")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, …


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link in markdown `text`, outside fenced code blocks and code spans."""
    found, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        marker = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * len(marker.group(1))
            elif marker.group(1).startswith(fence):
                fence = None
            continue
        if fence is not None:
            continue
        line = CODE_SPAN.sub("", line)
        matches = sorted((m.start(), m.group(1)) for p in (INLINE, IMG, REFERENCE) for m in p.finditer(line))
        found += [(number, target.strip("<>")) for _, target in matches]
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """`file:line: link` for every relative link in `page` whose file or folder does not exist. A link is
    relative to the page that holds it (one starting with / to `root`); its #fragment is dropped."""
    broken = []
    for number, target in links(page.read_text(encoding="utf-8")):
        if target.startswith("#") or EXTERNAL.match(target):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = root / path.lstrip("/") if path.startswith("/") else page.parent / path
        if not resolved.exists():
            broken.append(f"{page.relative_to(root)}:{number}: {target}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}: move the rest to docs/"


def test_docs_exist_and_are_linked_from_the_readme() -> None:
    readme = {target.split("#", 1)[0] for _, target in links(README.read_text(encoding="utf-8"))}
    pages = [p for p in PAGES if p != README]
    assert pages, "docs/ holds no pages"
    unlinked = [str(p.relative_to(ROOT)) for p in pages if str(p.relative_to(ROOT)) not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "there.md").write_text("x")
    page = tmp_path / "docs" / "page.md"
    page.write_text("ok [a](../there.md#part) [b](https://example.com) [c](#top) `[d](nowhere.md)`\n"
                    "```\n[e](in-a-fence.md)\n```\n"
                    "![f](missing.png) <img src=\"../gone.png\"> [g](<also missing.md>) [h](/there.md)\n"
                    "[i]: ../there.md\n"
                    "[j]: absent.md\n", encoding="utf-8")
    assert [t for _, t in links(page.read_text(encoding="utf-8"))] == [
        "../there.md#part", "https://example.com", "#top", "missing.png", "../gone.png", "also missing.md",
        "/there.md", "../there.md", "absent.md"]
    assert broken_links(page, tmp_path) == ["docs/page.md:5: missing.png", "docs/page.md:5: ../gone.png",
                                            "docs/page.md:5: also missing.md", "docs/page.md:7: absent.md"]
