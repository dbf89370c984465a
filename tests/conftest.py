"""Test-wide settings, as fixtures (nothing changes at import): the shared CPU's thread count, a headless matplotlib."""
import pytest
import torch


@pytest.fixture(scope="session")
def cpu_threads() -> int:
    """The intra-op threads each test runs with: at most 2 (the machine is shared)."""
    return min(2, torch.get_num_threads())


@pytest.fixture(autouse=True)
def shared_cpu(cpu_threads, monkeypatch):
    """Every test starts with ``cpu_threads`` threads (a run's train.num_threads is undone) and MPLBACKEND=Agg."""
    torch.set_num_threads(cpu_threads)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield
    torch.set_num_threads(cpu_threads)
