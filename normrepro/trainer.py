"""The training loop: ``fit(cfg, run_dir)`` trains one model and writes ``metrics.json`` and ``last.ckpt``.

One readable loop (nanoGPT style): autocast and the grad scaler are visible in it; everything else
(data, model, norms, optimizer, precision) is built by small factories.
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from normrepro.checkpoint import CKPT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from normrepro.data import build_data
from normrepro.errors import ConfigError, choice_error
from normrepro.loggers import build_logger
from normrepro.metrics import MetricsWriter
from normrepro.models import build_model
from normrepro.norms import norm_factory
from normrepro.optim import build_optimizer, build_scheduler
from normrepro.precision import build_precision
from normrepro.utils.env import run_env

log = logging.getLogger(__name__)

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


def build_model_for(cfg: DictConfig, num_classes: int, in_channels: int) -> torch.nn.Module:
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    norm_layer = norm_factory(cfg.norm.name, **norm_options(cfg.norm))
    return build_model(cfg.model.name, num_classes, norm_layer, in_channels=in_channels, **kwargs)


@torch.no_grad()
def evaluate(model, loader, precision, memory_format) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over ``loader``."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x = precision.prepare_input(x).contiguous(memory_format=memory_format)
        with precision.autocast():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += y.numel()
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def fit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train ``cfg`` in ``run_dir`` (resuming from its checkpoint if any); returns the metrics dict."""
    run_dir = Path(run_dir)
    validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    tc = cfg.train
    epochs = int(tc.epochs)

    data = build_data(cfg.dataset, int(tc.batch_size), int(tc.eval_batch_size), device, int(cfg.seed))
    model = build_model_for(cfg, data.num_classes, data.in_channels)
    precision = build_precision(cfg.precision, device)
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    model = precision.prepare_model(model.to(device, memory_format=memory_format))
    steps_per_epoch = min(len(data.train), int(tc.max_steps_per_epoch or len(data.train)))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, epochs, steps_per_epoch)
    scaler = precision.scaler
    train_model = torch.compile(model) if tc.compile else model

    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics = MetricsWriter(run_dir / "metrics.json", seed=int(cfg.seed), overrides=_overrides(),
                            env={**run_env(device), **precision.describe(), "norm": cfg.norm.name},
                            data={"name": data.name, "image_size": data.image_size, "num_train": data.num_train,
                                  "num_test": data.num_test, "num_classes": data.num_classes})
    start_epoch, ckpt_path = 0, run_dir / CKPT_NAME
    if tc.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"checkpoint {str(ckpt_path)!r} does not match this config ({first}); "
                              f"use another hydra.run.dir or train.resume=false") from None
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        metrics.history = state["history"]
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    logger = build_logger(cfg.logger, resolved, run_dir)
    metrics.write(status="running")

    status = "completed"
    for epoch in range(start_epoch, epochs):
        data.train.set_epoch(epoch)
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = tqdm(data.train, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not tc.progress, dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x = precision.prepare_input(x).contiguous(memory_format=memory_format)
            with precision.autocast():
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=float(tc.label_smoothing))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip and tc.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * y.size(0)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.size(0)
        bar.close()
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc = evaluate(model, data.test, precision, memory_format)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / max(seen, 1),
               "train_acc": 100.0 * correct.item() / max(seen, 1), "test_loss": test_loss, "test_acc": test_acc,
               "seconds": time.perf_counter() - t0, "train_seconds": train_seconds, "train_images": seen}
        metrics.history.append(row)
        logger.log_epoch(row)
        log.info("epoch %d/%d lr %.4g train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1fs",
                 epoch + 1, epochs, lr, row["train_loss"], row["train_acc"], test_loss, test_acc, row["seconds"])
        if not math.isfinite(row["train_loss"]):
            status = "diverged"
            log.warning("training loss is %s at epoch %d: stopping (status=diverged)", row["train_loss"], epoch + 1)
            break
        metrics.write(status="running")
        if tc.checkpoint:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                "history": metrics.history, "rng": rng_state(), "config": resolved})

    result = metrics.write(status=status)
    logger.log_final(result["final"])
    logger.finish(status)
    return result


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []
