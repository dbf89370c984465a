"""scripts/demo.py (make demo) end to end at smoke size into a temporary folder: the mnist5k Lp table with its
statistics and figures, and the fp16 probe."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~40 s alone (5 train.py processes + the probe); make test-all runs it
def test_demo_smoke(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--out", str(out), "--epochs", "1", "--seeds", "0,1",
                           "--max-steps", "2", "--probe-shape", "16,8,4,4"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert {"table.md", "table.csv", "error.png", "diff.png", "curves.png", "vs_paper.png", "fp16_probe.md",
            "fp16_probe.csv", "fp16_probe.png"} <= files
    table = (out / "table.md").read_text()
    assert "mnist5k (image size 32, train images 4000)" in table and "Baseline arm: L2" in table
    for label in ("| L1 | 2 | 0 1 |", "| Top-k | 2 |", "| L∞ | 2 |"):
        assert label in table
    assert "paired t, n = 2" in table and str(tmp_path) not in table
    assert "ordering as the paper" in proc.stdout and "**l1**" in proc.stdout
