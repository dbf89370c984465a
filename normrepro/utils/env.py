"""What a run records about where it ran: git commit, torch version, device name."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """``<sha>`` or ``<sha>-dirty``; ``unknown`` outside a git checkout of normrepro (an installed wheel, even in a
    venv inside another repository)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.split()
        if len(out) != 2 or Path(out[0]).resolve() != REPO_ROOT:
            return "unknown"
        sha = out[1]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"cpu {cpu} ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def run_env(device: torch.device) -> dict:
    """Where a run ran: git commit, torch and python versions, device, host."""
    return {"git_commit": git_commit(), "torch": torch.__version__, "device": device_name(device),
            "python": platform.python_version(), "host": platform.node()}
