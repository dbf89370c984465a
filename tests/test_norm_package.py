"""Packaging and code standards of normrepro.norms: the kernel source ships inside the wheel and builds from the
installed package; every public function and class of the norm modules has a docstring; ``norm=topk_ghost``
composes and trains through the trainer."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers.config import REPO, TINY, compose_cfg

NORMS_DIR = REPO / "normrepro" / "norms"


def test_wheel_ships_the_kernel_source_and_builds_from_it(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "normrepro", src / "normrepro", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                           "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("normrepro-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"normrepro/norms/_kernels.cpp", "normrepro/conf/norm/topk_ghost.yaml"} <= names
        z.extractall(tmp_path / "site")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from normrepro.norms import _native; "
            "assert str(_native.SOURCE).startswith(sys.argv[1]), _native.SOURCE; "
            "assert _native.lib() is not None, _native.error(); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for path in sorted(NORMS_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not (ast.get_docstring(node) or "").strip():
                    missing.append(f"{path.name}:{node.name}")
    assert not missing, missing


@pytest.mark.parametrize("bug", ["false", "true"])
def test_topk_ghost_config_trains(tmp_path, bug):
    from normrepro.trainer import fit

    cfg = compose_cfg(TINY + ["norm=topk_ghost", f"norm.ghost_bug={bug}", "train.checkpoint=false"])
    assert cfg.norm.name == "topk_ghost" and cfg.norm.beta == 0.75 and cfg.norm.k == 10
    result = fit(cfg, tmp_path)
    assert result["status"] == "completed"


def test_topk_ghost_bad_beta_is_a_config_error(tmp_path):
    from normrepro.errors import ConfigError
    from normrepro.trainer import fit

    with pytest.raises(ConfigError, match=r"^norm 'topk_ghost': beta must be a number in \(0, 1\), got 1.5$"):
        fit(compose_cfg(TINY + ["norm=topk_ghost", "norm.beta=1.5"]), tmp_path)
