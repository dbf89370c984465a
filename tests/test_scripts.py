"""The benchmark scripts run end to end at tiny sizes and print their tables (numbers are not asserted)."""
import subprocess
import sys

from tests.helpers.config import REPO


def _run(args, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_norms_runs(tmp_path):
    out = _run(["scripts/bench_norms.py", "--device", "cpu", "--shapes", "3", "--rounds", "1", "--iters", "1",
                "--warmup", "0", "--norms", "l1,topk", "--markdown", str(tmp_path / "t.md")])
    table = (tmp_path / "t.md").read_text()
    assert "l1" in table and "topk" in table and "NHWC" in table and "×" in out + table


def test_bench_train_runs(tmp_path):
    out = _run(["scripts/bench_train.py", "--models", "resnet20", "--norms", "l2,l1", "--steps", "1", "--rounds", "1",
                "--compile", "0", "--data", "1", "--data-images", "256", "--workers", "0",
                "--out", str(tmp_path / "t.md")])
    table = (tmp_path / "t.md").read_text()
    assert "resnet20" in table and "| l1 |" in table and "DataLoader" in table, out[-2000:]


def test_fp16_train_script_writes_its_table(tmp_path):
    _run(["scripts/fp16_train.py", "--epochs", "1", "--seeds", "0", "--settings", "raw", "--out", str(tmp_path), "--",
          "dataset.image_size=8", "train.max_steps_per_epoch=1", "train.num_threads=1"])
    md = (tmp_path / "fp16_train.md").read_text()
    for arm in ("fp32 l2", "fp16 l2 (torch kernel)", "fp16 l2_lp (squares in fp16)", "fp16 l1"):
        assert f"| raw | {arm} | 0 |" in md
    assert (tmp_path / "fp16_train.png").stat().st_size > 0
