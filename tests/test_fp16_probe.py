"""Float16 probe (issue 4, item 1): the naive float16 L2 fails at large pre-norm scales, L1 does not."""
import math
import subprocess
import sys

import pytest

from normrepro.errors import ConfigError
from normrepro.experiments import fp16_probe as P
from tests.helpers.config import REPO

SHAPE = (32, 8, 4, 4)  # n = 512 values per channel


@pytest.fixture(scope="module")
def x():
    return P.make_activations(SHAPE, seed=0)


def test_row_columns(x):
    row = P.probe_one("l1", x, 1.0)
    assert tuple(row) == P.COLUMNS
    assert row["norm"] == "l1" and row["K"] == 1.0
    for c in P.COLUMNS[2:]:
        assert isinstance(row[c], float)


def test_naive_l2_fp16_fine_at_k1_broken_at_k1000(x):
    ok = P.probe_one("l2_lp", x, 1.0)
    assert ok["out_nonfinite"] == 0 and ok["collapsed"] == 0 and ok["buf_nonfinite"] == 0
    assert ok["scale_err_max"] < 1e-2 and ok["out_err"] < 1e-2
    bad = P.probe_one("l2_lp", x, 1000.0)
    assert bad["input_nonfinite"] == 0  # the input itself is representable
    assert bad["out_nonfinite"] > 0 or bad["collapsed"] == 1.0
    assert math.isinf(bad["scale_err_max"]) and bad["buf_nonfinite"] == 1.0


def test_l1_fp16_accurate_at_k10000(x):
    r = P.probe_one("l1", x, 10000.0)
    assert r["input_nonfinite"] == 0
    assert r["out_nonfinite"] == 0 and r["collapsed"] == 0 and r["buf_nonfinite"] == 0
    assert r["scale_err_max"] < 5e-3 and r["out_err"] < 5e-3


def test_torch_bn_output_ok_but_fp16_running_var_overflows(x):
    r = P.probe_one("l2_torch", x, 1000.0)
    assert r["out_nonfinite"] == 0 and r["collapsed"] == 0 and r["out_err"] < 5e-3
    assert r["buf_nonfinite"] > 0


def test_bad_norm_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown probe norm 'l3'"):
        P.parse_norms("l1,l3")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fp16_probe.py"), "--norms", "l1,bogus",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0] and "l2_lp" in err[0]
    assert not list(tmp_path.iterdir())


def test_run_probe_and_write_results(tmp_path):
    rows = P.run_probe(["l2_lp", "l1"], [1, 1000], shape=(16, 4, 4, 4))
    assert [(r["norm"], r["K"]) for r in rows] == [("l2_lp", 1.0), ("l2_lp", 1000.0), ("l1", 1.0), ("l1", 1000.0)]
    paths = P.write_results(rows, tmp_path, "probe", "cmd", {"torch": "x"}, (16, 4, 4, 4), 0, 4.0)
    assert [p.name for p in paths] == ["probe.csv", "probe.md", "probe.png"]
    csv = paths[0].read_text().splitlines()
    assert csv[0] == ",".join(P.COLUMNS) and len(csv) == 5
    md = paths[1].read_text()
    assert "| l2_lp | 1000 |" in md and "collapsed channels: from K = 1000" in md
    assert paths[2].stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
