"""The training loop: ``fit(cfg, run_dir)`` trains one model and writes ``metrics.json`` and ``last.ckpt``.

One readable loop (nanoGPT style): autocast and the grad scaler are visible in it; everything else
(data, model, norms, optimizer, precision) is built by small factories.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from normrepro.channel_norms import WEIGHT_NORMS_NAME, WeightNormRecorder, load_reference
from normrepro.checkpoint import CKPT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from normrepro.data import build_data
from normrepro.distributed import all_reduce_sum, barrier, cleanup, init_distributed
from normrepro.errors import ConfigError, choice_error
from normrepro.loggers import build_logger
from normrepro.metrics import MetricsWriter
from normrepro.models import build_model, scale_invariant_layers
from normrepro.norms import norm_factory
from normrepro.optim import build_optimizer, build_scheduler, lr_factor
from normrepro.precision import build_precision, scaler_stats
from normrepro.resume_check import check_resume_config
from normrepro.utils.env import run_env

log = logging.getLogger(__name__)
# a loss scaler's skipped step leaves the per-step schedule one call ahead of the optimizer: intended
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")

DEVICES = ("auto", "cpu", "cuda")
NORM_KEYS_NOT_FOR_LAYER = ("name", "sync", "weight_norm")


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise choice_error("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is available here; use device=cpu or device=auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def norm_options(norm_cfg) -> dict:
    """The norm config group minus the keys that are not layer options; ``stats_dtype`` as a torch dtype."""
    opts = {k: v for k, v in dict(norm_cfg).items() if k not in NORM_KEYS_NOT_FOR_LAYER}
    if opts.get("stats_dtype") is not None:
        name = str(opts["stats_dtype"]).replace("torch.", "")
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise choice_error("norm.stats_dtype", opts["stats_dtype"], ("null", "float32", "float16", "bfloat16"))
        opts["stats_dtype"] = dtype
    return opts


def validate(cfg: DictConfig) -> None:
    if cfg.train.epochs is None or int(cfg.train.epochs) < 0:
        raise ConfigError(f"train.epochs must be an integer >= 0, got {cfg.train.epochs!r}")
    for key in ("batch_size", "eval_batch_size"):
        if int(cfg.train[key]) <= 0:
            raise ConfigError(f"train.{key} must be > 0, got {cfg.train[key]!r}")
    if float(cfg.optim.lr) <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr!r}")


def build_model_for(cfg: DictConfig, num_classes: int, in_channels: int,
                    stats_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The configured model with the configured norm; ``stats_dtype`` (from the precision) is used unless the
    norm config sets its own. ``norm.weight_norm`` (bwn | wn | bwn_gain) reparametrizes the conv weights."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    opts = norm_options(cfg.norm)
    if opts.get("stats_dtype") is None and stats_dtype is not None and cfg.norm.name != "none":
        opts["stats_dtype"] = stats_dtype
    model = build_model(cfg.model.name, num_classes, norm_factory(cfg.norm.name, **opts), in_channels=in_channels,
                        **kwargs)
    weight_norm = cfg.norm.get("weight_norm", "none") or "none"
    if weight_norm != "none":
        from normrepro.models.weight_norm import apply_weight_norm

        model = apply_weight_norm(model, weight_norm)
    return model


@torch.no_grad()
def evaluate(model, loader, precision, memory_format) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over ``loader`` (summed over all ranks under torchrun)."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, seen
    for x, y in loader:
        x = precision.prepare_input(x).contiguous(memory_format=memory_format)
        with precision.autocast():
            logits = model(x).float()
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             (logits.argmax(1) == y).sum().double(), torch.tensor(y.numel(), device=device).double()])
    loss_sum, correct, seen = all_reduce_sum(sums).tolist()
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def max_deviations(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Norm layers that track the largest |x - mu| of each training batch (``norm.track_max_dev=true``)."""
    return {n: m for n, m in model.named_modules() if getattr(m, "track_max_dev", False)}


def fit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train ``cfg`` in ``run_dir`` (resuming from its checkpoint if any); returns the metrics dict."""
    run_dir = Path(run_dir)
    validate(cfg)
    dist_info = init_distributed(resolve_device(cfg.device))
    device, main = dist_info.device, dist_info.is_main
    try:
        return _fit(cfg, run_dir, dist_info, device, main)
    finally:
        cleanup()


def _fit(cfg, run_dir, dist_info, device, main) -> dict:
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    tc, oc = cfg.train, cfg.optim
    epochs, world = int(tc.epochs), dist_info.world_size
    if int(tc.batch_size) % world:
        raise ConfigError(f"train.batch_size={tc.batch_size} is the global batch and must be divisible by the "
                          f"world size {world}")

    # data, model, precision, optimizer: built by the factories
    data = build_data(cfg.dataset, int(tc.batch_size) // world, int(tc.eval_batch_size), device, int(cfg.seed),
                      dist_info.rank, world)
    precision = build_precision(cfg.precision, device)
    model = build_model_for(cfg, data.num_classes, data.in_channels, precision.stats_dtype)
    si_layers = scale_invariant_layers(model, (2, data.in_channels, data.image_size, data.image_size))
    if cfg.norm.get("sync", False):
        from normrepro.norms.sync import convert_sync_norms

        model = convert_sync_norms(model)
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    model = precision.prepare_model(model.to(device, memory_format=memory_format))
    steps_per_epoch = min(len(data.train), int(tc.max_steps_per_epoch or len(data.train)))
    optimizer = build_optimizer(model, oc, scale_invariant={f"{n}.weight" for n, _ in si_layers})
    scheduler = build_scheduler(optimizer, oc.schedule, epochs, steps_per_epoch)
    precision.prepare_optimizer(optimizer)  # fp32 master weights for pure fp16 when asked
    scaler = precision.scaler
    reference = _reference(oc, si_layers, epochs)
    interpolate = _choice(oc.get("reference_interpolation", "none"), "optim.reference_interpolation",
                          ("none", "linear")) == "linear"
    train_model = model
    if dist_info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if tc.compile:
        train_model = torch.compile(train_model)
    tracked = max_deviations(model)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    env = {**run_env(device), **precision.describe(), "norm": cfg.norm.name, "world_size": world}
    if (cfg.norm.name == "l2" and cfg.norm.get("impl", "torch") == "torch" and precision.stats_dtype is None
            and precision.model_dtype != torch.float32):
        # torch's batch_norm accumulates half-precision statistics in float32 internally (CPU and cuDNN)
        env["stats_dtype"] = "float32 inside torch's batch_norm (norm=l2_lp computes them in the input dtype)"
    metrics = MetricsWriter(run_dir / "metrics.json", seed=int(cfg.seed), overrides=_overrides(), env=env,
                            data={"name": data.name, "image_size": data.image_size, "num_train": data.num_train,
                                  "num_test": data.num_test, "num_classes": data.num_classes})
    recorder = WeightNormRecorder(si_layers, run_dir / WEIGHT_NORMS_NAME)
    start_epoch, ckpt_path = 0, run_dir / CKPT_NAME
    if tc.resume and ckpt_path.exists():
        start_epoch = _resume(ckpt_path, model, optimizer, scheduler, scaler, recorder, metrics, resolved)
    else:
        recorder.record()  # epoch boundary 0: the initial norms
    logger = build_logger(cfg.logger, resolved, run_dir, rank=dist_info.rank)
    if main:
        metrics.write(status="running")

    status = "completed"
    for epoch in range(start_epoch, epochs):
        data.train.set_epoch(epoch)
        model.train()
        if reference is not None:  # lr_correction / norm_schedule: this epoch's reference norms
            end = reference[epoch + 1] if interpolate and epoch + 1 < len(reference) else None
            optimizer.set_targets(reference[epoch], lr_factor(epoch, dict(oc.schedule), epochs) ** -0.5, end,
                                  steps_per_epoch)
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        finite_seen = torch.zeros((), device=device, dtype=torch.long)
        max_dev = {n: torch.zeros((), device=device) for n in tracked}
        skipped_before, seen = scaler_stats(scaler)["skipped_steps"], 0
        bar = tqdm(data.train, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not (tc.progress and main), dynamic_ncols=True)
        for x, y in itertools.islice(bar, steps_per_epoch):
            x = precision.prepare_input(x).contiguous(memory_format=memory_format)
            with precision.autocast():
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=float(tc.label_smoothing))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip and tc.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                               float(tc.grad_clip))
            scaler.step(optimizer)  # skipped when a gradient is inf/nan
            scaler.update()
            scheduler.step()
            finite = torch.isfinite(loss.detach())
            finite_seen += finite * y.size(0)
            loss_sum += torch.where(finite, loss.detach(), 0.0) * y.size(0)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.size(0)
            for n, m in tracked.items():
                if m.last_max_dev is not None:
                    max_dev[n] = torch.maximum(max_dev[n], m.last_max_dev.float())
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # count the kernels still queued in this epoch's training time
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc = evaluate(model, data.test, precision, memory_format)
        sums = all_reduce_sum(torch.stack([loss_sum.double(), correct.double(), finite_seen.double(),
                                           torch.tensor(float(seen), device=device, dtype=torch.float64)]))
        loss_sum_all, correct_all, counted, seen_all = sums.tolist()
        stats = scaler_stats(scaler)
        norms = recorder.record()
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum_all / counted if counted > 0 else float("nan"),
               "train_acc": 100.0 * correct_all / max(seen_all, 1), "test_loss": test_loss, "test_acc": test_acc,
               "seconds": time.perf_counter() - t0, "train_seconds": train_seconds, "train_images": int(seen_all),
               "nonfinite_images": int(seen_all - counted), "skipped_steps": stats["skipped_steps"] - skipped_before,
               "loss_scale": stats["loss_scale"], **recorder.summary(norms, lr)}
        if tracked:
            row["max_abs_dev"] = {n: float(v) for n, v in max_dev.items()}
        metrics.history.append(row)
        logger.log_epoch(row)
        log.info("epoch %d/%d lr %.4g train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1fs%s",
                 epoch + 1, epochs, lr, row["train_loss"], row["train_acc"], test_loss, test_acc, row["seconds"],
                 f" | {row['skipped_steps']} steps skipped" if row["skipped_steps"] else "")
        why = _diverged(row, steps_per_epoch, model)
        if why:
            status = "diverged"
            log.warning("%s at epoch %d: stopping (status=diverged)", why, epoch + 1)
            metrics.env["diverged"] = why
            break
        if main:
            recorder.save()
            metrics.write(status="running")
        if tc.checkpoint and main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                "history": metrics.history, "rng": rng_state(), "config": resolved,
                "weight_norms": recorder.state()})

    result = metrics.write(status=status) if main else {"status": status, "epochs": metrics.history}
    if main:
        recorder.save()
    logger.log_final(result.get("final", {}))
    logger.finish(status)
    barrier()
    return result


def _diverged(row: dict, steps: int, model: torch.nn.Module) -> str | None:
    """Why the run cannot go on (non-finite loss or weights, every step skipped), or None."""
    if not math.isfinite(row["train_loss"]):
        return f"training loss is {row['train_loss']} (every batch's loss was non-finite)"
    scale = row.get("loss_scale")
    if scale is not None and scale < 2.0 ** -14:  # ~30 skips in a row below the initial 2^16
        return f"loss scale collapsed to {scale:.3g} ({row['skipped_steps']} steps skipped: non-finite gradients)"
    if steps >= 32 and row["skipped_steps"] >= steps:
        return f"all {steps} steps of the epoch were skipped (non-finite gradients)"
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "non-finite weights"
    return None


def _choice(value, key: str, choices: tuple) -> str:
    if value not in choices:
        raise choice_error(key, value, choices)
    return value


def _reference(oc, si_layers, epochs):
    """The reference run's per-epoch norms for optim.mode lr_correction / norm_schedule (else None)."""
    mode = oc.get("mode", "standard") or "standard"
    if mode == "standard":
        return None
    if not oc.get("reference"):
        raise ConfigError(f"optim.mode={mode} needs optim.reference=<run dir of a wd_on run> (its weight_norms.pt)")
    if not si_layers:
        raise ConfigError(f"optim.mode={mode}: this model has no scale-invariant layers (conv/linear before a norm)")
    for name, m in si_layers:
        if not isinstance(getattr(m, "weight", None), torch.nn.Parameter):
            raise ConfigError(f"optim.mode={mode} needs plain weights; layer {name!r} is reparametrized "
                              f"(norm.weight_norm) — use norm.weight_norm=none")
    return load_reference(oc.reference, {n: int(m.weight.shape[0]) for n, m in si_layers}, epochs)


def _resume(ckpt_path, model, optimizer, scheduler, scaler, recorder, metrics, config) -> int:
    state = load_checkpoint(ckpt_path)
    check_resume_config(state, config, ckpt_path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"checkpoint {str(ckpt_path)!r} does not match this config ({first}); "
                          f"use another hydra.run.dir or train.resume=false") from None
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    metrics.history = state["history"]
    if "weight_norms" in state:
        recorder.load_state(state["weight_norms"])
    log.info("resumed from %s at epoch %d", ckpt_path, int(state["epoch"]))
    return int(state["epoch"])


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []
