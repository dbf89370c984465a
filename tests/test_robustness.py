"""Faults and hostile input around the training loop (issue 12 points 1, 3, 5, 8-12): one error line, a failed or
diverged status that says why, no second process in a run dir, no temp files left, rank 0 alone logs."""
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from normrepro import cli, trainer
from normrepro.data import build_data
from normrepro.errors import ConfigError
from normrepro.utils.io import atomic_write_bytes
from tests.helpers.config import REPO, TINY, compose_cfg, dataset_cfg
from tests.helpers.data import write_cifar, write_imagenet

# the new API (run lock, error classes, temp-file cleanup) is imported inside the tests that use it, so that each
# test fails on its own against the code before issue 12

CPU = torch.device("cpu")
QUICK = TINY + ["train.num_threads=1"]


def train_py(args, run_dir, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (proc.returncode,
                                                                                         proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ 3: run-dir lock
def test_second_process_in_a_run_dir_is_refused_with_the_holders_pid(tmp_path):
    from normrepro.run_lock import acquire_run_lock, release_run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    acquire_run_lock(run_dir)
    try:
        line = one_error_line(train_py(QUICK, run_dir))
    finally:
        release_run_lock(run_dir)
    assert f"is in use by process {os.getpid()}" in line
    assert not (run_dir / "metrics.json").exists() and not (run_dir / ".hydra").exists()


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    from normrepro.run_lock import acquire_run_lock, release_run_lock

    code = ("import sys, time; from normrepro.run_lock import acquire_run_lock; acquire_run_lock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            acquire_run_lock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire_run_lock(tmp_path)  # the OS released the dead holder's lock
    release_run_lock(tmp_path)


# ----------------------------------------------------------------------------------- 1, 5: CIFAR batch content
def _rewrite_batch(path, change):
    with open(path, "rb") as f:
        entry = pickle.load(f)
    change(entry)
    with open(path, "wb") as f:
        pickle.dump(entry, f)


CIFAR_DAMAGE = {
    "missing data": (lambda e: e.pop(b"data"), "no 'data' entry"),
    "wrong dtype": (lambda e: e.update({b"data": e[b"data"].astype(np.float32)}), "'data' must be a uint8 array"),
    "wrong size": (lambda e: e.update({b"data": e[b"data"][:, :1000]}), "'data' must be a uint8 array [N, 3072]"),
    "short labels": (lambda e: e.update({b"labels": e[b"labels"][:-1]}), "'labels' must be 4 integers"),
    "label out of range": (lambda e: e.update({b"labels": [0, 1, 2, 10]}), "labels must be in [0, 10), found 0..10"),
    "not a dict": (None, "expected a dict, found list"),
}


@pytest.mark.parametrize("damage", list(CIFAR_DAMAGE))
def test_bad_cifar_batch_is_one_line_naming_the_file(tmp_path, damage):
    write_cifar(tmp_path, "cifar10", 4, 3)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    change, message = CIFAR_DAMAGE[damage]
    if change is None:
        path.write_bytes(pickle.dumps([1, 2]))
    else:
        _rewrite_batch(path, change)
    with pytest.raises(ConfigError) as e:
        build_data(dataset_cfg("cifar10", root=str(tmp_path)), 2, 2, CPU, 0)
    assert f"bad CIFAR batch '{path}': {message}" in str(e.value) and "\n" not in str(e.value)


class TouchMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    write_cifar(tmp_path, "cifar10", 4, 3)
    path, marker = tmp_path / "cifar-10-batches-py" / "test_batch", tmp_path / "pwned"
    path.write_bytes(pickle.dumps({b"data": TouchMarker(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(ConfigError, match=r"refusing CIFAR batch .*test_batch.*global (posix|os)\.mkdir"):
        build_data(dataset_cfg("cifar10", root=str(tmp_path)), 2, 2, CPU, 0)
    assert not marker.exists()


# -------------------------------------------------------------------------------- 5: corrupt ImageNet images
@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_corrupt_jpeg_stops_with_its_path(tmp_path, workers, damage):
    from normrepro.errors import DataFileError

    write_imagenet(tmp_path, n_train=4, n_val=2)
    bad = tmp_path / "train" / "n02" / "1.JPEG"
    bad.write_bytes(bad.read_bytes()[:200] if damage == "truncated" else b"GIF? no")
    b = build_data(dataset_cfg("imagenet", root=str(tmp_path), image_size=16, num_workers=workers),
                   8, 2, CPU, 0)
    b.train.set_epoch(0)
    with pytest.raises(DataFileError) as e:
        list(b.train)
    assert str(e.value).startswith(f"corrupt image '{bad}'") and "\n" not in str(e.value)
    assert len(list(b.test)) == 2  # the intact val/ split still loads


def test_corrupt_jpeg_mid_run_fails_the_run_with_its_path(tmp_path):
    """A corrupt image found in epoch 1: one-line error naming it, metrics.json status failed with it."""
    write_imagenet(tmp_path / "data", n_train=4, n_val=2, size=(20, 24))
    bad = tmp_path / "data" / "train" / "n01" / "2.JPEG"
    bad.write_bytes(b"\xff\xd8 corrupt")
    cfg = compose_cfg(QUICK + ["dataset=imagenet", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                               "dataset.num_workers=0", "train.batch_size=4", "train.eval_batch_size=2"])
    with pytest.raises(ConfigError, match=f"corrupt image '{bad}'"):
        cli.run(cfg, tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and f"corrupt image '{bad}'" in m["error"]


# --------------------------------------------------------------------------------------- 8: status failed
def test_crash_mid_run_writes_status_failed_with_the_reason(tmp_path, monkeypatch):
    def evaluate_boom(*args, **kwargs):
        raise RuntimeError("boom in evaluate\nsecond line")

    monkeypatch.setattr(trainer, "evaluate", evaluate_boom)
    with pytest.raises(RuntimeError, match="boom"):
        cli.run(compose_cfg(QUICK), tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "failed" and m["error"] == "RuntimeError: boom in evaluate"


def test_completed_metrics_are_never_marked_failed(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed"}))
    assert not cli.mark_failed(tmp_path / "metrics.json", "late error")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"status": "completed"}


# ------------------------------------------------------------------------------ 9: full disk, stale temps
def _limit_file_size(limit):
    def preexec():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_write_failure_is_a_storage_error_and_leaves_no_temp(tmp_path):
    code = ("import sys; from normrepro.utils.io import atomic_write_bytes; from normrepro.errors import "
            "StorageError\ntry: atomic_write_bytes(sys.argv[1], b'x' * 100000)\n"
            "except StorageError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.bin")], cwd=REPO, capture_output=True,
                         text=True, timeout=60, preexec_fn=_limit_file_size(10000))
    assert out.stdout.startswith(f"cannot write '{tmp_path / 'big.bin'}': File too large (EFBIG)"), out
    assert list(tmp_path.iterdir()) == []


def test_storage_error_names_the_errno(tmp_path, monkeypatch):
    from normrepro.errors import StorageError

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=r"No space left on device \(ENOSPC\); free some space"):
        atomic_write_bytes(tmp_path / "metrics.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_file_too_large_mid_run_is_one_error_line(tmp_path):
    """last.ckpt (~0.2 MB) exceeds a 100 kB file size limit: exit 2 naming it, metrics.json says failed."""
    proc = train_py(QUICK, tmp_path / "run", preexec_fn=_limit_file_size(100_000))
    line = one_error_line(proc)
    assert f"cannot write '{tmp_path / 'run' / 'last.ckpt'}': File too large (EFBIG)" in line
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and "EFBIG" in m["error"]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_stale_temp_files_are_removed_when_a_run_starts(tmp_path):
    from normrepro.utils.io import remove_stale_temp_files

    stale = [tmp_path / ".last.ckpt.k2j_9x0a.tmp", tmp_path / ".metrics.json.abcdefgh.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / ".last.ckpt.short.tmp"]
    for p in stale + kept:
        p.write_bytes(b"half")
    cli.run(compose_cfg(QUICK), tmp_path)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temp_files(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------------- 10: run dir
def _read_only_dir(path):
    """A folder no one (root included) can write: chmod for a user, chattr +i for root; None if impossible."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return path
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return path
    return None


@pytest.mark.parametrize("kind", ["a file", "below a file", "under /proc", "read-only"])
def test_unusable_run_dir_is_one_error_line(tmp_path, kind):
    (tmp_path / "file").write_text("x")
    run_dir = {"a file": tmp_path / "file", "below a file": tmp_path / "file" / "run",
               "under /proc": "/proc/normrepro-run", "read-only": tmp_path / "ro"}[kind]
    if kind == "read-only" and _read_only_dir(run_dir) is None:
        pytest.skip("no way to make a folder read-only for root here (chattr)")
    try:
        line = one_error_line(train_py(QUICK, run_dir, timeout=120))
    finally:
        if kind == "read-only":
            subprocess.run(["chattr", "-i", str(run_dir)], capture_output=True) if os.geteuid() == 0 else \
                run_dir.chmod(0o755)
    assert f"hydra.run.dir='{run_dir}'" in line and "use another hydra.run.dir" in line


# ------------------------------------------------------------------------------------------ 11: diverged
def test_diverged_run_exits_3_and_keeps_the_reason(tmp_path):
    proc = train_py(QUICK + ["optim.lr=1e30"], tmp_path / "run")
    assert proc.returncode == 3, proc.stderr[-2000:]  # normrepro.errors.EXIT_DIVERGED
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["env"]["diverged"] in proc.stdout


# ------------------------------------------------------------------------------ 12: rank 0 alone logs
def test_torchrun_writes_each_log_line_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *QUICK, "optim.schedule.name=constant", f"hydra.run.dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert sum("epoch 1/1" in ln for ln in lines) == 1, lines
