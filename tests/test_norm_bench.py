"""Smoke tests of the benchmark options added for issue 15 (numbers not asserted), run in-process: thread lists,
the three methods, the ghost norm, the GPU bandwidth bound, and bench_train's per-thread sections and first-epoch
path (on CUDA by default, run here on the CPU)."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from normrepro.norms import build_norm
from tests.helpers.config import REPO


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_bench_norms_methods_threads_and_ghost(tmp_path, threads):
    mod = _script("bench_norms")
    assert mod.main(["--device", "cpu", "--shapes", "3", "--batches", "16", "--rounds", "1", "--iters", "1",
                     "--warmup", "0", "--norms", "l1,topk_ghost", "--methods", "op,torch,compiled",
                     "--compile-backend", "aot_eager", "--threads", "1,2", "--markdown", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "1 thread(s)" in md and "2 thread(s)" in md and "default allocator" in md
    for col in ("l1/op ms", "l1/torch ms", "l1/compiled ms", "topk_ghost/op ms", "topk_ghost saved ×BN"):
        assert col in md
    assert md.count("| 16×512×4×4 |") == 4  # 2 layouts x 2 thread counts
    assert mod.main(["--device", "cpu", "--methods", "fast"]) == 2


def test_bench_norms_bound_and_formula():
    mod = _script("bench_norms")
    assert math.isclose(mod.bound_ms((128, 64, 32, 32), torch.float16, 1e12), 5 * 128 * 64 * 32 * 32 * 2 / 1e9)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    for name in ("l1", "linf", "topk", "mean"):
        torch.testing.assert_close(mod.Formula(name, 4).double()(x), build_norm(name, 4).double()(x))


def test_bench_train_threads_and_first_epoch(tmp_path, threads):
    mod = _script("bench_train")
    assert mod.main(["--no-train", "--compile", "0", "--data", "0", "--threads", "1,2", "--first-epoch", "1",
                     "--first-epoch-model", "resnet20", "--first-epoch-images", "64", "--batch-size", "32",
                     "--device", "cpu", "--out", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "1 thread(s)" in md and "2 thread(s)" in md and md.count("Time to first epoch") == 2
