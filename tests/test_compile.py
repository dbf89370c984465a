"""``train.compile=true``: every norm trains two steps under torch.compile (inductor) as it does eagerly.

Compiling is slow on a CPU: a tiny VGG-11 on 8x8 digits, and inductor's cache under the repo's .cache/ (the
Makefile exports TORCHINDUCTOR_CACHE_DIR there too), so a second run of the suite finds the kernels compiled.
"""
import pytest

from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg

COMPILE = [o for o in TINY if not o.startswith("model")] + ["model=vgg11", "model.width_mult=0.0625",
                                                             "train.checkpoint=false", "norm.track_max_dev=true"]


@pytest.fixture(autouse=True)
def inductor_cache(monkeypatch):
    """Inductor's cache in the repo's .cache/ unless TORCHINDUCTOR_CACHE_DIR is set."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "torchinductor"))


@pytest.mark.parametrize("norm", ["l2", "l1", "linf", "topk", "mean"])
def test_compiled_run_trains_like_eager(norm, tmp_path):
    eager = fit(compose_cfg(COMPILE + [f"norm={norm}"]), tmp_path / "eager")
    compiled = fit(compose_cfg(COMPILE + [f"norm={norm}", "train.compile=true"]), tmp_path / "compiled")
    assert compiled["status"] == "completed"
    a, b = eager["epochs"][0], compiled["epochs"][0]
    assert b["train_images"] == 128 and b["nonfinite_images"] == 0
    for key in ("train_loss", "test_loss"):  # same model and steps: equal up to the compiled kernels' rounding
        assert b[key] == pytest.approx(a[key], rel=1e-3), key
    assert b["weight_norm"] == pytest.approx(a["weight_norm"], rel=1e-3)  # the steps moved the weights alike
    # the layers' max |x - mu| (a module attribute set in forward) is tracked through the compiled graph too
    assert set(b["max_abs_dev"]) == set(a["max_abs_dev"]) and len(a["max_abs_dev"]) == 8
    assert b["max_abs_dev"] == pytest.approx(a["max_abs_dev"], rel=1e-3)
