"""``train.profile`` (``debug=profile``): a torch.profiler trace of the first epoch's training steps this process runs,
written as a Chrome trace (open in chrome://tracing or https://ui.perfetto.dev) to ``<run dir>/profile/trace.json``."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)
TRACE_NAME = "profile/trace.json"


@contextlib.contextmanager
def profile_epoch(enabled: bool, run_dir: Path, device: torch.device):
    """Profile the enclosed steps (CPU, and CUDA on a GPU) into ``run_dir/profile/trace.json`` when ``enabled``."""
    if not enabled:
        yield
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    path = Path(run_dir) / TRACE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        yield
    tmp = path.with_name(f".{path.name}.tmp")
    prof.export_chrome_trace(str(tmp))
    tmp.replace(path)
    log.info("profiler trace -> %s", path)
