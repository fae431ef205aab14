"""Execute the notebooks headless (papermill), each in its own process, their kernels on local sockets.

Light on imports (no torch, no pandas): the demo's report calls it, and so can a process that only
runs notebooks.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from trainer.errors import AnalysisError

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"  # the repository's notebooks/
NOTEBOOKS = ("01_previous_token_heads", "02_smear_gate", "03_freed_heads", "04_inspect", "05_mechanism", "06_induction")
# A study's notebook runs only where the tables folder holds one of its tables: elsewhere (the demo) it would start
# a kernel to say there is nothing to show.
NEEDS = {"06_induction": ("key_shares.parquet", "induction_knockouts.parquet", "head_roles.parquet")}


def log_terminal_to(path: str) -> None:
    """Point this (pool worker) process's stdout and stderr, and so its kernels', at `path`.

    A kernel's own output is not the notebook's (that comes back over its sockets): it is log lines
    and, rarely, libzmq aborting on a socket at shutdown ("Assertion failed: pfd.revents & POLLIN"),
    after every cell has run. It belongs in a log beside the executed notebooks, not among the demo's
    progress lines.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def execute_notebook(src: str, dest: str, params: dict, sockets: str) -> tuple[bool, str]:
    """One notebook through papermill in this (child) process: (True, the executed copy's path) or
    (False, why it failed)."""
    if not Path(src).exists():
        return False, f"{src} is missing"
    import papermill as pm
    from traitlets.config import Config

    kernel = Config({"KernelManager": {"transport": "ipc", "ip": sockets}})
    try:
        # the kernel logs only what is fatal: its shutdown can log a caught KeyboardInterrupt
        pm.execute_notebook(src, dest, parameters=params, cwd=str(NOTEBOOKS_DIR), progress_bar=False,
                            kernel_name="python3", config=kernel, extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        return True, dest
    except Exception as e:  # a kernel or cell failure: report it, keep the other notebooks
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


def run_notebooks(tables_dir: str | Path, figures_dir: str | Path, *, checkpoints: str | Path | None = None,
                  preset: str | None = None, threshold: float | None = None,
                  names: Sequence[str] = NOTEBOOKS, out_dir: str | Path | None = None) -> dict[str, Path | str]:
    """Execute the notebooks headless (papermill) into `out_dir` (default figures_dir/notebooks).

    Returns, per notebook, the executed copy or why it failed; a notebook of NEEDS whose tables are not in
    tables_dir is not run and not in the result. The notebooks write their figures
    into figures_dir under the same names the report uses; `threshold` None keeps the notebooks' own.
    """
    try:
        import papermill  # noqa: F401 (the notebooks run in child processes; fail here, early and clearly)
    except ImportError:
        raise AnalysisError("papermill is not installed (pip install -e '.[dev]'); run the report without "
                            "--notebooks to draw the figures directly") from None
    tables_dir, figures_dir = Path(tables_dir).resolve(), Path(figures_dir).resolve()
    out_dir = Path(out_dir) if out_dir else figures_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = Path(checkpoints).resolve() if checkpoints else tables_dir.parent
    common = dict(figures_dir=str(figures_dir), preset=preset)
    names = [n for n in names if n not in NEEDS or any((tables_dir / f).exists() for f in NEEDS[n])]
    if not names:
        return {}
    # The kernels talk over local sockets (IPC), not TCP: nothing listens on a port, and ipykernel has
    # no "running over TCP without encryption" warning to print among our progress lines. The sockets
    # live in a private temporary folder (by default they would land in the notebooks' working folder),
    # one prefix per notebook.
    with tempfile.TemporaryDirectory(prefix="smearlens-kernel-") as sockets:
        jobs = [(str(NOTEBOOKS_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
                 dict(common, checkpoints=str(checkpoints)) if name == "04_inspect" else
                 dict(common, tables_dir=str(tables_dir), runs_dir=str(checkpoints),
                      **({} if threshold is None else {"threshold": threshold})),
                 str(Path(sockets) / name)) for name in names]
        # Two at a time, each in its own process: papermill changes the working folder of the process it
        # runs in while the notebook runs, so two in threads of this one left it in notebooks/ (and the
        # report, written to a relative path, went there too).
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        log = out_dir / "kernels.log"
        log.write_text("")
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=log_terminal_to, initargs=(str(log),)) as pool:
            done = list(pool.map(execute_notebook, *zip(*jobs)))
    if not log.stat().st_size:
        log.unlink()
    see = f" (the kernels' log: {log})" if log.exists() else ""
    return {name: Path(r) if ok else r + see for name, (ok, r) in zip(names, done)}
