"""The wheel is self-contained (issue 13): built from a copy of the package alone, installed (not editable) into a
folder outside the checkout, its console scripts train, evaluate and report from another folder."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.config import REPO, TINY

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "normrepro")


def run(args, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(the scripts folder, an environment whose ``normrepro`` is the installed wheel's, not the checkout's)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # the package's own files only: a wheel needing anything else of the checkout fails
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")} if copy is shutil.copytree else {}
        copy(REPO / name, src / name, **kwargs)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
         str(src)], tmp, env)
    wheel = next((tmp / "dist").glob("normrepro-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("normrepro/conf/config.yaml", "normrepro/conf/hydra/help/normrepro.yaml",
                   "normrepro/conf/recipe/_regime/authors_cifar_164.yaml", "normrepro/norms/_kernels.cpp",
                   "normrepro/report/paper.yaml", "normrepro/report/experiments.yaml"):
        assert needed in names, needed
    target = tmp / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(target),
         str(wheel)], tmp, env)
    env = {**env, "PYTHONPATH": str(target)}  # the C++ kernels: built from the packaged source (cached by its hash)
    where = run([sys.executable, "-c", "import normrepro; print(normrepro.__file__)"], tmp, env).stdout.strip()
    assert Path(where).resolve().is_relative_to(target.resolve()), where  # not the editable checkout
    return target / "bin", env


def test_installed_wheel_trains_evaluates_and_reports_from_another_folder(installed, tmp_path):
    bin_dir, env = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([str(bin_dir / "normrepro-train"), "norm=l1", *TINY, "hydra.run.dir=runs/l1"], elsewhere, env)
    run_dir = elsewhere / "runs" / "l1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and (run_dir / "last.ckpt").is_file() and (run_dir / "train.log").is_file()
    assert metrics["env"]["norm"] == "l1" and metrics["env"]["git_commit"] == "unknown"  # no checkout of normrepro
    out = run([str(bin_dir / "normrepro-eval"), f"ckpt={run_dir}"], elsewhere, env).stdout
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["test_acc"] == metrics["final"]["test_acc"] and "top5" in out
    run([str(bin_dir / "normrepro-report"), "runs", "--out", "tables/l1"], elsewhere, env)
    table = (elsewhere / "tables" / "l1.md").read_text()
    assert "l1" in table and (elsewhere / "tables" / "l1.csv").is_file()
    help_text = run([str(bin_dir / "normrepro-train"), "--help"], elsewhere, env).stdout
    assert "== Examples ==" in help_text
    completion = run([str(bin_dir / "normrepro-train"), "-sc", "install=bash"], elsewhere, env).stdout
    assert completion.rstrip().endswith("-F hydra_bash_completion normrepro-train")
