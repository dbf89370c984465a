"""Preemption (issue 12): SIGTERM/SIGUSR2 at a random step saves a mid-epoch checkpoint and stops (exit 4 from the
command line); the same command resumes it and ends with exactly the metrics of an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from normrepro import cli, epoch_progress, trainer
from normrepro.checkpoint import CKPT_NAME, load_checkpoint
from normrepro.data import build_data
from normrepro.errors import ConfigError
from normrepro.preemption import EXIT_PREEMPTED, Preempted, PreemptionGuard
from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg, dataset_cfg
from tests.helpers.data import write_imagenet

EPOCHS, STEPS = 3, 5
# dropout (torch's RNG), max |x - mu| (a per-epoch running maximum), a multistep LR drop inside the run
BASE = TINY + [f"train.epochs={EPOCHS}", f"train.max_steps_per_epoch={STEPS}", "train.num_threads=1",
               "model=wrn", "model.depth=10", "model.widen_factor=1", "model.width=4", "model.dropout=0.1",
               "norm.track_max_dev=true"]
TIMING = {"seconds", "train_seconds"}


def history(metrics: dict) -> list[dict]:
    """The metrics rows without their timing columns."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in metrics["epochs"]]


class SignalAtBatch:
    """A training loader that sends ``signum`` to this process while it hands out its ``at``-th batch of the run."""

    def __init__(self, inner, at: int, signum: int):
        self.inner, self.at, self.signum, self.seen = inner, at, signum, 0

    def set_epoch(self, epoch, start_batch=0):
        self.inner.set_epoch(epoch, start_batch)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            self.seen += 1
            if self.seen == self.at:
                os.kill(os.getpid(), self.signum)
            yield batch


def signal_at(monkeypatch, at: int, signum=signal.SIGTERM):
    """Make the next ``fit`` receive ``signum`` during its ``at``-th step."""
    real = trainer.build_data

    def build(*args, **kwargs):
        data = real(*args, **kwargs)
        data.train = SignalAtBatch(data.train, at, signum)
        return data

    monkeypatch.setattr(trainer, "build_data", build)
    return lambda: monkeypatch.setattr(trainer, "build_data", real)


_FULL: dict = {}


def uninterrupted(overrides, tmp_path_factory) -> dict:
    """The metrics of an uninterrupted run of ``overrides`` (once per module; its run dir: ``["run_dir"]``)."""
    key = tuple(overrides)
    if key not in _FULL:
        run_dir = tmp_path_factory.mktemp("full")
        _FULL[key] = {**fit(compose_cfg(overrides), run_dir), "run_dir": run_dir}
    return _FULL[key]


def preempt_and_resume(overrides, run_dir, monkeypatch, at: int, signum=signal.SIGTERM) -> dict:
    """Run ``overrides`` in ``run_dir``, signalled at step ``at``; check the stop; resume; the resumed metrics."""
    undo = signal_at(monkeypatch, at, signum)
    with pytest.raises(Preempted) as stop:
        fit(compose_cfg(overrides), run_dir)
    undo()
    assert stop.value.signum == signum and stop.value.step == at
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = load_checkpoint(run_dir / CKPT_NAME)
    assert metrics["status"] == "preempted" and len(metrics["epochs"]) == (at - 1) // STEPS
    assert state["epoch"] == (at - 1) // STEPS and state["progress"]["step"] == at - STEPS * state["epoch"]
    return fit(compose_cfg(overrides), run_dir)


@pytest.mark.parametrize("seed, signum", [(0, signal.SIGTERM), (1, signal.SIGTERM), (2, signal.SIGTERM),
                                          (3, signal.SIGUSR2)])
def test_signal_at_a_random_step_resumes_exactly(seed, signum, tmp_path, tmp_path_factory, monkeypatch):
    at = random.Random(seed).randint(1, EPOCHS * STEPS - 1)
    full = uninterrupted(BASE, tmp_path_factory)
    resumed = preempt_and_resume(BASE, tmp_path / "run", monkeypatch, at, signum)
    assert resumed["status"] == "completed" and history(resumed) == history(full)
    assert any(v > 0 for v in full["epochs"][-1]["max_abs_dev"].values())
    a, b = (torch.load(d / CKPT_NAME, weights_only=True) for d in (full["run_dir"], tmp_path / "run"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("extra", [
    # pure fp16 with a dynamic loss scale that overflows at first (skipped steps) and grows every 2 steps
    ["precision=fp16", "precision.master_weights=true", "precision.growth_interval=2",
     "precision.init_scale=16777216.0", "norm=l1"],
    # a per-step schedule: warmup then cosine, the LR changes at every step
    ["optim.schedule.name=cosine", "optim.schedule.warmup_epochs=1", "optim.schedule.warmup_start_factor=0.1"],
], ids=["fp16_loss_scaler", "per_step_cosine"])
def test_resume_exact_with_scaler_and_per_step_schedule(extra, tmp_path, tmp_path_factory, monkeypatch):
    overrides = BASE + extra
    full = uninterrupted(overrides, tmp_path_factory)
    resumed = preempt_and_resume(overrides, tmp_path / "run", monkeypatch, at=STEPS + 3)
    assert history(resumed) == history(full)
    if "precision=fp16" in extra:
        assert sum(r["skipped_steps"] for r in full["epochs"]) > 0  # the scaler's state and counts were exercised


def test_resume_exact_with_lr_correction(tmp_path, tmp_path_factory, monkeypatch):
    """lr_correction with a linearly interpolated reference: the interpolation's step resumes mid-epoch too."""
    reference = tmp_path / "reference"
    fit(compose_cfg(BASE), reference)
    overrides = BASE + ["optim.mode=lr_correction", f"optim.reference={reference}",
                        "optim.reference_interpolation=linear", "optim.wd_policy=wd_off"]
    full = fit(compose_cfg(overrides), tmp_path / "full")
    resumed = preempt_and_resume(overrides, tmp_path / "run", monkeypatch, at=STEPS + 2)
    assert history(resumed) == history(full)


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs, nothing is saved."""


def test_periodic_checkpoint_survives_a_kill(tmp_path, tmp_path_factory, monkeypatch):
    overrides = BASE + ["train.checkpoint_every_steps=3"]
    real_save, saved = epoch_progress.save_checkpoint, []

    def save_then_die(path, state):
        real_save(path, state)
        saved.append(state["scheduler"]["last_epoch"])
        if state["scheduler"]["last_epoch"] == 6:
            raise Killed

    monkeypatch.setattr(epoch_progress, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        fit(compose_cfg(overrides), tmp_path / "run")
    monkeypatch.setattr(epoch_progress, "save_checkpoint", real_save)
    assert saved == [3, 6]  # every 3 steps, not at an epoch's end (step 5: the epoch's own checkpoint)
    state = load_checkpoint(tmp_path / "run" / CKPT_NAME)
    assert state["epoch"] == 1 and state["progress"]["step"] == 1
    resumed = fit(compose_cfg(overrides), tmp_path / "run")
    assert history(resumed) == history(uninterrupted(BASE, tmp_path_factory))  # periodic saves change nothing


def test_signal_during_the_test_pass_stops_at_the_epoch_end(tmp_path, tmp_path_factory, monkeypatch):
    real_evaluate = trainer.evaluate

    def evaluate_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate_then_signal)
    with pytest.raises(Preempted):
        fit(compose_cfg(BASE), tmp_path / "run")
    monkeypatch.setattr(trainer, "evaluate", real_evaluate)
    state = load_checkpoint(tmp_path / "run" / CKPT_NAME)
    assert state["epoch"] == 1 and state["progress"] is None
    assert history(fit(compose_cfg(BASE), tmp_path / "run")) == history(uninterrupted(BASE, tmp_path_factory))


def test_mid_epoch_checkpoint_still_refuses_another_config(tmp_path, monkeypatch):
    undo = signal_at(monkeypatch, STEPS + 2)
    with pytest.raises(Preempted):
        fit(compose_cfg(BASE), tmp_path / "run")
    undo()
    with pytest.raises(ConfigError, match=r"another config \(optim.lr: 0.1 -> 0.2\)"):
        fit(compose_cfg(BASE + ["optim.lr=0.2"]), tmp_path / "run")
    # a runtime key may differ
    assert fit(compose_cfg(BASE + ["train.checkpoint_every_steps=4"]), tmp_path / "run")["status"] == "completed"


@pytest.mark.parametrize("how, message", [
    (lambda p: p.update(step=-1), "progress: expected ints >= 0"),
    (lambda p: p.update(epoch=7), "progress: epoch 7 in progress after 1 epochs done"),
    (lambda p: p["sums"].pop("loss"), "progress: sums .and rank_sums. is not"),
    (lambda p: p.update(max_dev=[1.0]), "progress: max_dev is not a dict of tensors"),
])
def test_damaged_mid_epoch_checkpoint_is_one_line(how, message, tmp_path, monkeypatch):
    undo = signal_at(monkeypatch, STEPS + 2)
    with pytest.raises(Preempted):
        fit(compose_cfg(BASE), tmp_path)
    undo()
    state = torch.load(tmp_path / CKPT_NAME, weights_only=True)
    how(state["progress"])
    torch.save(state, tmp_path / CKPT_NAME)
    with pytest.raises(ConfigError, match=f"damaged checkpoint .*{message}.*train.resume=false"):
        fit(compose_cfg(BASE), tmp_path)


def test_cli_forwards_to_the_previous_handler_then_exits_4(tmp_path, capsys):
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGUSR2)
        with pytest.raises(SystemExit) as done:
            cli.exit_preempted(Preempted(signal.SIGUSR2, 9, guard), tmp_path, resume=False)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert done.value.code == EXIT_PREEMPTED and seen == [signal.SIGUSR2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("preempted: stopped on SIGUSR2 after step 9")
    assert "with train.resume=true to resume" in err[0]


def test_train_py_sigterm_mid_epoch_exits_4_and_resumes(tmp_path):
    """The real command: SIGTERM while it trains -> exit 4, one line on stderr; the same command completes it."""
    # epochs of up to 179 batches; the periodic checkpoint after step 5 of epoch 1 says the loop is mid-epoch, with
    # the rest of the epoch still to run (a fixed sleep raced a fast machine into the test pass)
    over = TINY + ["train.epochs=2", "train.batch_size=8", "train.max_steps_per_epoch=null", "train.num_threads=1",
                   "train.checkpoint_every_steps=5"]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *over, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (run_dir / CKPT_NAME).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("preempted:")]
    assert len(lines) == 1 and "run the same command again to resume" in lines[0] and "Traceback" not in err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "preempted"
    assert load_checkpoint(run_dir / CKPT_NAME)["progress"]["step"] > 0  # mid-epoch
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert history(resumed) == history(fit(compose_cfg(over), tmp_path / "full"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_guard_records_the_signal_and_restores_the_handlers(signum):
    before = signal.getsignal(signum)
    with PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), signum)  # without the guard SIGTERM/SIGUSR2 would end this process
        assert guard.requested and guard.should_stop() and guard.signum == signum
    assert signal.getsignal(signum) is before


def test_guard_forwards_to_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert seen == []  # recorded only: the loop saves first
        assert guard.forward() and seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert "SIGTERM after step 7" in str(Preempted(signal.SIGTERM, 7))


def test_in_memory_epoch_restarts_at_a_batch():
    b = build_data(dataset_cfg("digits", image_size=8), 64, 64, torch.device("cpu"), seed=5)
    b.train.set_epoch(2)
    full = list(b.train)
    b.train.set_epoch(2, start_batch=3)
    rest = list(b.train)
    assert len(rest) == len(full) - 3 and len(b.train) == len(full)
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(full[3:], rest))
    b.train.set_epoch(3)
    assert len(list(b.train)) == len(full)  # the next epoch starts at its beginning


def test_imagenet_epoch_restarts_at_a_batch(tmp_path):
    write_imagenet(tmp_path, n_train=6, n_val=1, size=(20, 24))
    b = build_data(dataset_cfg("imagenet", root=str(tmp_path), image_size=8, num_workers=0), 3, 2,
                   torch.device("cpu"), seed=5)
    b.train.set_epoch(2)
    full = list(b.train)
    b.train.set_epoch(2, start_batch=2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    rest = list(b.train)
    assert torch.equal(torch.get_rng_state(), before)  # the DataLoader draws from its own generator
    assert len(full) == 4 and len(rest) == 2 and len(b.train) == 4
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(full[2:], rest))


@pytest.mark.slow
def test_torchrun_sigterm_to_the_job_stops_both_ranks_at_one_step(tmp_path):
    """SIGTERM to the whole job (as SLURM sends it): both ranks stop after the same step, rank 0's checkpoint
    resumes both, and the result equals an uninterrupted torchrun run."""
    over = TINY + ["train.epochs=2", "train.batch_size=8", "train.max_steps_per_epoch=100", "train.num_threads=1",
                   "deterministic=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(run_dir, **popen):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *over,
               f"hydra.run.dir={run_dir}"]
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                **popen)

    job = torchrun(tmp_path / "run", start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.json").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(job.pid, signal.SIGTERM)
    _, err = job.communicate(timeout=180)
    assert "preempted: stopped on SIGTERM" in err, err[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "preempted"
    assert load_checkpoint(tmp_path / "run" / CKPT_NAME)["progress"]["step"] > 0
    for run_dir in (tmp_path / "run", tmp_path / "full"):
        proc = torchrun(run_dir)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("run", "full"))
    assert a["status"] == "completed" and history(a) == history(b)
