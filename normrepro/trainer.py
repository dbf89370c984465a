"""The training loop: ``fit(cfg, run_dir)`` trains one model and writes ``metrics.json`` and ``last.ckpt``.

``build_run`` builds everything a run needs (data, model, precision, optimizer, schedule, recorder, logger) into one
:class:`Run`; ``train_one_epoch`` is the loop itself (nanoGPT style, autocast and the grad scaler visible);
``evaluate`` the test pass; ``fit`` runs the epochs and writes the outputs after each.
"""
from __future__ import annotations

import itertools
import logging
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from normrepro.best import BEST_NAME, is_new_best, selection_metric
from normrepro.channel_norms import WEIGHT_NORMS_NAME, WeightNormRecorder
from normrepro.checkpoint import CKPT_NAME, load_checkpoint, save_checkpoint
from normrepro.console import eval_bar, extra_accuracies, log_start, set_train_postfix
from normrepro.data import DataBundle, build_data
from normrepro.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from normrepro.ema import build_ema
from normrepro.epoch_progress import EpochProgress, begin_epoch, end_of_step, finish_epoch, stop_between_epochs
from normrepro.errors import ConfigError, choice_error
from normrepro.loggers import build_logger
from normrepro.metrics import MetricsWriter, why_diverged
from normrepro.models import build_model, scale_invariant_layers
from normrepro.models.weight_norm import WEIGHT_NORM_KEYS, apply_weight_norm, weight_norm_options
from normrepro.norms import convert_sync_norms, norm_factory
from normrepro.norms.max_dev import MaxDevTracker
from normrepro.optim import build_optimizer, build_scheduler
from normrepro.optim.regularization import with_classifier_penalty
from normrepro.optim.wd_lr import ReferenceTargets
from normrepro.precision import Precision, build_precision, resolve_stats_dtype
from normrepro.preemption import PreemptionGuard
from normrepro.profiling import profile_epoch
from normrepro.run_state import restore, state_of
from normrepro.utils.env import run_env

log = logging.getLogger(__name__)
# a loss scaler's skipped step leaves the per-step schedule one call ahead of the optimizer: intended
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Run:
    """One training run, built by :func:`build_run`: what the loop reads, and ``epochs_done`` (resumed or not)."""
    cfg: DictConfig
    run_dir: Path
    dist: DistInfo
    data: DataBundle
    precision: Precision
    model: torch.nn.Module  # the plain model (checkpoints, evaluation, recorder)
    train_model: torch.nn.Module  # what the loop calls: the model, under DDP and/or torch.compile when asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reference: ReferenceTargets | None
    recorder: WeightNormRecorder
    max_dev: MaxDevTracker
    metrics: MetricsWriter
    resolved: dict
    memory_format: torch.memory_format
    steps_per_epoch: int
    epochs_done: int = 0
    logger: object = field(default=None)
    ema: object = None  # normrepro.ema.WeightEMA when train.ema_decay is set
    profiled: bool = False  # train.profile: the first epoch this process trains was profiled
    guard: PreemptionGuard | None = None  # asked after every step whether a preemption signal arrived
    progress: EpochProgress | None = None  # the epoch in progress (what a mid-epoch checkpoint saves of it)
    resume_progress: dict | None = None  # a mid-epoch checkpoint's epoch, continued by the next begin_epoch

    @property
    def device(self) -> torch.device:
        """The device of this process."""
        return self.dist.device

    @property
    def scaler(self):
        """The precision's loss scaler (torch GradScaler interface; a no-op without loss scaling)."""
        return self.precision.scaler


def resolve_device(name: str) -> torch.device:
    """``device`` (auto | cpu | cuda) as a torch device; cuda without a GPU is a ConfigError."""
    if name not in DEVICES:
        raise choice_error("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is available here; use device=cpu or device=auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with ``deterministic`` also torch's deterministic algorithms and cuDNN."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def validate(cfg: DictConfig) -> None:
    """ConfigError for train.epochs < 0, a batch size <= 0 or optim.lr <= 0."""
    if cfg.train.epochs is None or int(cfg.train.epochs) < 0:
        raise ConfigError(f"train.epochs must be an integer >= 0, got {cfg.train.epochs!r}")
    for key in ("batch_size", "eval_batch_size"):
        if int(cfg.train[key]) <= 0:
            raise ConfigError(f"train.{key} must be > 0, got {cfg.train[key]!r}")
    if float(cfg.optim.lr) <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr!r}")


def build_model_for(cfg: DictConfig, num_classes: int, in_channels: int) -> torch.nn.Module:
    """The configured model with the configured norm (config -> ``norm_factory`` -> layer), its statistics dtype
    from :func:`~normrepro.precision.resolve_stats_dtype`, and the conv weight parametrization ``model.weight_norm``."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.norm, resolve=True).items() if k != "name"}
    stats_dtype = resolve_stats_dtype(cfg.norm, cfg.precision).dtype
    if stats_dtype is not None:
        options["stats_dtype"] = stats_dtype
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in WEIGHT_NORM_KEYS}
    model = build_model(kwargs.pop("name"), num_classes, norm_factory(cfg.norm.name, **options),
                        in_channels=in_channels, **kwargs)
    return apply_weight_norm(model, cfg.model.get("weight_norm", "none") or "none", **weight_norm_options(cfg.model))


def build_run(cfg: DictConfig, run_dir: str | Path) -> Run:
    """Everything one run needs, built by the factories in a fixed order (it fixes the random stream), resumed
    from ``<run_dir>/last.ckpt`` when there is one and ``train.resume`` is on."""
    run_dir, tc = Path(run_dir), cfg.train
    dist_info = init_distributed(resolve_device(cfg.device))
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    epochs, world, device = int(tc.epochs), dist_info.world_size, dist_info.device
    if int(tc.batch_size) % world:
        raise ConfigError(f"train.batch_size={tc.batch_size} is the global batch and must be divisible by the "
                          f"world size {world}")
    data = build_data(cfg.dataset, int(tc.batch_size) // world, int(tc.eval_batch_size), device, int(cfg.seed),
                      dist_info.rank, world, **_data_options(tc))
    precision = build_precision(cfg.precision, device)
    model = build_model_for(cfg, data.num_classes, data.in_channels)
    si_layers = scale_invariant_layers(model, (2, data.in_channels, data.image_size, data.image_size))
    if tc.sync_norms:
        model = convert_sync_norms(model)
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    model = precision.prepare_model(model.to(device, memory_format=memory_format))
    steps = min(len(data.train), int(tc.max_steps_per_epoch or len(data.train)))
    optimizer = build_optimizer(model, cfg.optim, scale_invariant={f"{n}.weight" for n, _ in si_layers})
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, epochs, steps)
    precision.prepare_optimizer(optimizer)  # fp32 master weights for pure fp16 when asked
    reference = ReferenceTargets.from_config(cfg.optim, si_layers, epochs, steps)
    run = Run(cfg, run_dir, dist_info, data, precision, model, _wrap_for_training(model, dist_info, tc.compile),
              optimizer, scheduler, reference, WeightNormRecorder(si_layers, run_dir / WEIGHT_NORMS_NAME),
              MaxDevTracker(model, device), _metrics_writer(cfg, run_dir, data, precision, dist_info),
              OmegaConf.to_container(cfg, resolve=True), memory_format, steps,
              ema=build_ema(model, tc.get("ema_decay")))
    ckpt_path = run_dir / CKPT_NAME
    if tc.resume and ckpt_path.exists():
        restore(run, load_checkpoint(ckpt_path), str(ckpt_path))
    else:
        run.recorder.record()  # epoch boundary 0: the initial norms
    run.logger = build_logger(cfg.logger, run.resolved, run_dir, rank=dist_info.rank, history=run.metrics.history)
    if dist_info.is_main:
        log_start(cfg, model, data, device)
    return run


def _data_options(tc) -> dict:
    """build_data's ``val_fraction`` and ``train_limit`` (``train.overfit_batches`` batches of the global batch)."""
    limit = int(tc.overfit_batches) * int(tc.batch_size) if tc.get("overfit_batches") else None
    return {"val_fraction": float(tc.get("val_fraction") or 0.0), "train_limit": limit}


def _wrap_for_training(model: torch.nn.Module, dist_info: DistInfo, compile_: bool) -> torch.nn.Module:
    """The model under DistributedDataParallel (torchrun) and torch.compile (``train.compile``) when asked."""
    if dist_info.enabled:
        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if compile_ else model


def _metrics_writer(cfg, run_dir: Path, data: DataBundle, precision: Precision, dist_info: DistInfo) -> MetricsWriter:
    """The run's ``metrics.json`` writer, with its environment (machine, precision, statistics dtype, data)."""
    env = {**run_env(dist_info.device), **precision.describe(),
           "stats_dtype": resolve_stats_dtype(cfg.norm, cfg.precision).record, "norm": cfg.norm.name,
           "world_size": dist_info.world_size}
    return MetricsWriter(run_dir / "metrics.json", seed=int(cfg.seed), overrides=_overrides(), env=env,
                         data={"name": data.name, "image_size": data.image_size, "num_train": data.num_train,
                               "num_test": data.num_test, "num_val": data.num_val, "num_classes": data.num_classes},
                         select=selection_metric(cfg))


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One epoch of SGD: forward under autocast, scaled backward, optional clipping, the scaler's step (skipped on
    inf/nan gradients), the per-step LR schedule; after each step a periodic or preemption checkpoint when due
    (``normrepro/epoch_progress.py``). Returns the epoch's training columns of its metrics row."""
    tc, model, opt, scaler, precision = run.cfg.train, run.train_model, run.optimizer, run.scaler, run.precision
    run.model.train()
    progress = begin_epoch(run, epoch)  # data position, this epoch's targets and WD; the sums so far on a resume
    params = [p for g in opt.param_groups for p in g["params"]]
    for x, y in _progress(run, epoch, progress):
        x = precision.prepare_input(x).contiguous(memory_format=run.memory_format)
        with precision.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=float(tc.label_smoothing))
        opt.zero_grad(set_to_none=True)
        scaler.scale(with_classifier_penalty(loss, run.model, tc.get("classifier_penalty", 0.0))).backward()
        if tc.grad_clip and tc.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, float(tc.grad_clip))
        scaler.step(opt)  # skipped when a gradient is inf/nan
        scaler.update()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update()
        progress.add(loss.detach(), logits.detach(), y)
        end_of_step(run, progress)  # checkpoint every train.checkpoint_every_steps; SIGTERM/SIGUSR2: save, stop
    return finish_epoch(run, progress)


def _progress(run: Run, epoch: int, progress: EpochProgress):
    """The epoch's training batches ``progress.step`` .. ``steps_per_epoch`` - 1 (the loader starts there), behind a
    tqdm bar (``train.progress``, rank 0) showing the loss so far and the lr (every ``console.POSTFIX_EVERY`` steps)."""
    start = progress.step
    bar = tqdm(run.data.train, total=run.steps_per_epoch, initial=start,
               desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}", leave=False,
               disable=not (run.cfg.train.progress and run.dist.is_main), dynamic_ncols=True)
    try:
        for step, batch in enumerate(itertools.islice(bar, max(run.steps_per_epoch - start, 0)), start):
            set_train_postfix(bar, step, progress.sums, run.optimizer.param_groups[0]["lr"])
            yield batch
    finally:
        bar.close()


@torch.no_grad()
def evaluate(model, loader, precision, memory_format, max_batches=None, bar=False, desc="eval") -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over ``loader``'s first ``max_batches`` batches (all if None),
    summed over all ranks under torchrun; ``bar``: a tqdm bar."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, seen
    total = len(loader) if max_batches is None else min(len(loader), int(max_batches))
    for x, y in eval_bar(itertools.islice(loader, total), total, bar, desc):
        x = precision.prepare_input(x).contiguous(memory_format=memory_format)
        with precision.autocast():
            logits = model(x).float()
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             (logits.argmax(1) == y).sum().double(), torch.tensor(y.numel(), device=device).double()])
    loss_sum, correct, seen = all_reduce_sum(sums).tolist()
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def _epoch_row(run: Run, epoch: int) -> dict:
    """Epoch ``epoch``'s metrics row: training, the test pass, wall time, the weight norms (and max |x - mu|)."""
    t0 = time.perf_counter()
    profile, run.profiled = bool(run.cfg.train.get("profile")) and not run.profiled, True
    with profile_epoch(profile, run.run_dir, run.device):  # debug=profile: this process's first epoch
        train = train_one_epoch(run, epoch)
    evals = _evaluations(run)
    norms = run.recorder.record()
    row = {"epoch": epoch + 1, "lr": train["lr"], "train_loss": train["train_loss"], "train_acc": train["train_acc"],
           **evals, "seconds": time.perf_counter() - t0 + train["seconds_before"],
           **{k: train[k] for k in ("train_seconds", "train_images", "nonfinite_images", "skipped_steps",
                                    "loss_scale")}, **run.recorder.summary(norms, train["lr"])}
    if run.max_dev:
        row["max_abs_dev"] = run.max_dev.summary()
    return row


def _evaluations(run: Run) -> dict:
    """The row's evaluation columns: test_loss/test_acc, val_loss/val_acc (a validation split), ema_test_loss/
    ema_test_acc (and ema_val_*: an EMA of the weights), each capped at ``train.max_eval_batches`` batches."""
    tc, out = run.cfg.train, {}
    models = {"": run.model, **({"ema_": run.ema.module} if run.ema is not None else {})}
    splits = {"test": run.data.test, **({"val": run.data.val} if run.data.val is not None else {})}
    for prefix, model in models.items():
        for split, loader in splits.items():
            loss, acc = evaluate(model, loader, run.precision, run.memory_format, tc.get("max_eval_batches"),
                                 bar=bool(tc.progress and run.dist.is_main), desc=f"{prefix}{split}")
            out[f"{prefix}{split}_loss"], out[f"{prefix}{split}_acc"] = loss, acc
    return out


def fit(cfg: DictConfig, run_dir: str | Path, on_epoch=None) -> dict:
    """Train ``cfg`` in ``run_dir`` (resuming from its checkpoint if any); returns the metrics dict.
    ``on_epoch(row)`` is called after every epoch's row is logged (benchmarks run other loops in between).
    SIGTERM/SIGUSR2 meanwhile: a checkpoint after the current step, then :class:`~normrepro.preemption.Preempted`."""
    validate(cfg)
    try:
        with PreemptionGuard() as guard:
            run = build_run(cfg, run_dir)
            run.guard = guard
            return _train(run, on_epoch)
    finally:
        cleanup()


def _train(run: Run, on_epoch) -> dict:
    """The epochs from ``run.epochs_done`` on; metrics.json, weight norms and the checkpoint after each."""
    main, epochs, status = run.dist.is_main, int(run.cfg.train.epochs), "completed"
    if main:
        run.metrics.write(status="running")
    for epoch in range(run.epochs_done, epochs):
        row = _epoch_row(run, epoch)
        run.metrics.history.append(row)
        run.epochs_done = epoch + 1
        run.logger.log_epoch(row)
        if on_epoch is not None:
            on_epoch(row)
        log.info("epoch %d/%d lr %.4g train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%%%s | %.1fs%s",
                 epoch + 1, epochs, row["lr"], row["train_loss"], row["train_acc"], row["test_loss"],
                 row["test_acc"], extra_accuracies(row), row["seconds"],
                 f" | {row['skipped_steps']} steps skipped" if row["skipped_steps"] else "")
        why = why_diverged(row, run.steps_per_epoch, run.model)
        if why:
            status = "diverged"
            log.warning("%s at epoch %d: stopping (status=diverged)", why, epoch + 1)
            run.metrics.env["diverged"] = why
            break
        if main:
            run.recorder.save()
            run.metrics.write(status="running")
        if run.cfg.train.checkpoint and main:
            _save_checkpoints(run)
        if epoch + 1 < epochs:
            stop_between_epochs(run, saved=bool(run.cfg.train.checkpoint))  # a signal during the test pass
    result = run.metrics.write(status=status) if main else {"status": status, "epochs": run.metrics.history}
    if main:
        run.recorder.save()
    run.logger.log_final(result.get("final", {}))
    run.logger.finish(status)
    barrier()
    return result


def _save_checkpoints(run: Run) -> None:
    """``last.ckpt``, and ``best.ckpt`` (the same state) when this epoch is the best so far (``normrepro.best``)."""
    state = state_of(run)
    save_checkpoint(run.run_dir / CKPT_NAME, state)
    if is_new_best(run.metrics.history, run.metrics.select):
        save_checkpoint(run.run_dir / BEST_NAME, state)


def _overrides() -> list[str]:
    """The Hydra command-line overrides of this run ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []
