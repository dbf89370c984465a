"""notebooks/reproduce_tables.ipynb runs top to bottom on a tiny synthetic sweep and writes its PNGs."""
from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from tests.helpers.config import REPO  # noqa: E402
from tests.helpers.runs import make_sweep  # noqa: E402

NOTEBOOK = REPO / "notebooks" / "reproduce_tables.ipynb"


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_notebook_runs_and_writes_figures(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path)
    fig_dir = tmp_path / "figs"
    monkeypatch.setenv("NORMREPRO_SWEEP", str(sweep))
    monkeypatch.setenv("NORMREPRO_FIG_DIR", str(fig_dir))
    monkeypatch.delenv("NORMREPRO_TABLE", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3": ipykernel's own spec (jupyter_client finds it, or falls back to the native kernel of this
    # interpreter); the kernel inherits the environment above.
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    pngs = sorted(p.name for p in fig_dir.glob("*.png"))
    # (a) curves, (b) bars, (c) fp16 (the sweep holds a diverged fp16 run); no WD/LR runs -> skipped with a note
    assert {"curves_test_acc.png", "bars_vs_paper.png", "fp16_bars.png", "fp16_curves.png"} <= set(pngs)
    assert not any(name.startswith("wd_lr") for name in pngs)
    for name in pngs:
        assert (fig_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = _outputs_text(nb)
    assert "skipping the wd_lr figures" in text
    assert "12 run(s), 5 group(s), 3 incomplete or crashed" in text
