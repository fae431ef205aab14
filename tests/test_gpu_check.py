"""The GPU check's dry mode: every stage at tiny size on the CPU, results packed in one folder."""

import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry", "--out", str(out), "--budget", "600"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    for stage in ("`env`", "`tests`: exit 0", "`step`: exit 0", "`study`: exit 0", "trained on cpu, cpu: as asked",
                  "`pairs`: 1 complete tiny pairs", "`analysis`: exit 0",
                  "`full`: tiny pair", "`full-baseline`: exit 0", "`full-smear`: exit 0", "`full-analysis`: exit 0"):
        assert stage in summary, (stage, summary)
    assert "smear/baseline step time" in summary
    assert (out / "statistics-analysis.md").read_text().strip()
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"summary.md", "step.json", "env.json", "pairs.log"} <= names


def test_gpu_check_script_refuses_without_cuda_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path), "--stages", "env"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr
