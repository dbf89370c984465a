"""notebooks/reproduce_tables.ipynb: runs top to bottom on records of two experiments and writes their figures; the
committed copy holds its outputs and no path of this machine."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers.report_runs import make_experiment

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "reproduce_tables.ipynb"


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(str(data.get("text/plain", "")) + str(data.get("text/markdown", "")))
    return "\n".join(parts)


def test_notebook_runs_on_records_and_writes_figures(tmp_path, monkeypatch):
    rng = random.Random(1)
    acc = {"l2": 97.0, "l1": 96.9, "linf": 94.0}
    runs = tmp_path / "results" / "runs"
    for ds in ("digits", "mnist5k"):
        make_experiment(runs / f"lp_{ds}", accs=lambda n, s: acc[n] + rng.gauss(0, 0.3), seeds=range(5), dataset=ds)
    fig_dir = tmp_path / "figs"
    monkeypatch.setenv("NORMREPRO_RUNS", str(runs))
    monkeypatch.setenv("NORMREPRO_FIG_DIR", str(fig_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    pngs = sorted(p.name for p in fig_dir.glob("*.png"))
    expected = {f"lp_{ds}_{k}.png" for ds in ("digits", "mnist5k") for k in ("error", "diff", "curves")}
    assert expected | {"lp_bn_imagenet_vs_paper.png"} == set(pngs)
    for name in pngs:
        assert (fig_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = _outputs_text(nb)
    assert "(2 experiment(s))" in text and "lp_digits: 3 group(s) from 15 run(s), 0 incomplete" in text
    assert "L∞: +" in text and "ordering reproduced?" in text and "6 figure(s)" in text
    assert str(tmp_path) not in text


def test_committed_notebook_has_outputs_and_no_machine_paths():
    raw = NOTEBOOK.read_text(encoding="utf-8")
    nb = json.loads(raw)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") and c.get("outputs") for c in code)
    assert str(REPO) not in raw and "/tmp/" not in raw and "/home/" not in raw
    assert all("execution" not in c.get("metadata", {}) for c in code)   # no timestamps: stable diffs
