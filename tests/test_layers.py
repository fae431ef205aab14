"""The layers are a contract: commands above analysis above trainer, inside analysis the write-up above statistics
above mechanism above measures, no import circles (import-linter); the analysis folder shows that architecture."""

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    out = lint_imports()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


def test_analysis_contract_orders_its_packages():
    """The contract inside analysis names every package of the folder, in the order the data flows."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    inner = next(c for c in config if c.get("containers") == ["analysis"])
    layers = [name.strip() for layer in inner["layers"] for name in layer.split("|")]
    assert layers.index("writeup") < layers.index("stats") < layers.index("mechanism") < layers.index("measures")
    on_disk = {p.stem for p in (REPO / "analysis").iterdir() if p.name != "__init__.py" and
               (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert on_disk == set(layers), f"analysis/ holds {sorted(on_disk)}; the contract orders {sorted(layers)}"
    assert len(on_disk) <= 8, f"analysis/ has {len(on_disk)} top-level modules and packages: group them by job"


def test_every_analysis_module_says_what_it_does_not_which_issue():
    for path in sorted((REPO / "analysis").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.relative_to(REPO)} has no docstring"
        assert not re.search(r"\b(issue|item) \d+", doc, re.I), f"{path.relative_to(REPO)} points at a tracker item"


def test_the_command_line_starts_without_the_plotting_stack():
    """Every study run is a `smearlens train` or `analyze` process: the command line imports matplotlib (and the
    report it draws) only for the commands that draw, not at start-up."""
    code = ("import sys, commands.cli; "
            "print(sorted(m for m in ('matplotlib', 'analysis.writeup.report') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
