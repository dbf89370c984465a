"""``metrics.json`` (per-epoch rows, the final summary and the run's environment, written atomically), the
per-epoch training sums behind a row, and the divergence checks that end a run."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from normrepro.best import best_of
from normrepro.distributed import all_reduce_sum
from normrepro.precision import divergence_of_scaler
from normrepro.utils.io import atomic_write_json


def summarize(history: list[dict], select: str = "test_acc") -> dict:
    """final test_acc (val_acc, ema_test_acc when logged), best_test_acc, epochs_done, wall_seconds, training
    images/s of a history, and its best epoch by ``select`` (best_metric, best_epoch, best_value)."""
    if not history:
        return {"test_acc": None, "best_test_acc": None, "epochs_done": 0, "wall_seconds": 0.0,
                "images_per_second": None, **best_of(history, select)}
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None and math.isfinite(r["test_acc"])]
    train_s = sum(r.get("train_seconds", r["seconds"]) for r in history)
    images = sum(r.get("train_images", 0) for r in history)
    extra = {k: history[-1][k] for k in ("val_acc", "ema_test_acc", "ema_val_acc") if k in history[-1]}
    return {"test_acc": history[-1]["test_acc"], **extra, "best_test_acc": max(accs) if accs else None,
            "epochs_done": history[-1]["epoch"], "wall_seconds": sum(r["seconds"] for r in history),
            "images_per_second": images / train_s if train_s > 0 else None, **best_of(history, select)}


class MetricsWriter:
    """Holds the history; ``write(status)`` rewrites ``metrics.json`` atomically and returns its content."""

    def __init__(self, path: str | Path, seed: int, overrides: list[str], env: dict, data: dict | None = None,
                 select: str = "test_acc"):
        self.path, self.seed, self.overrides, self.env, self.data = Path(path), seed, overrides, env, data or {}
        self.select = select  # the column best.ckpt and final.best_* are selected by
        self.history: list[dict] = []

    def write(self, status: str) -> dict:
        """Rewrite ``metrics.json`` with ``status`` and return what it holds."""
        out = {"status": status, "epochs": self.history, "final": summarize(self.history, self.select), "env": self.env,
               "data": self.data, "seed": self.seed, "overrides": self.overrides}
        atomic_write_json(self.path, out)
        return out


class EpochSums:
    """Device-side sums of one training epoch (no host sync per step): the loss over the steps whose loss is
    finite, correct predictions and images; ``totals()`` sums them over all ranks into the row's columns."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.finite_images = torch.zeros((), device=device, dtype=torch.long)
        self.images = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Count one step: its (detached) mean loss, logits and labels."""
        finite = torch.isfinite(loss)
        self.finite_images += finite * y.size(0)
        self.loss += torch.where(finite, loss, 0.0) * y.size(0)
        self.correct += (logits.argmax(1) == y).sum()
        self.images += y.size(0)

    def state(self) -> dict:
        """The sums so far (CPU tensors and an int) for a mid-epoch checkpoint; :meth:`load_state` restores them."""
        return {"loss": self.loss.cpu(), "correct": self.correct.cpu(), "finite_images": self.finite_images.cpu(),
                "images": self.images}

    def load_state(self, state: dict) -> None:
        """Continue from :meth:`state`'s sums (bit-identical: the same tensors, moved to this device)."""
        self.loss, self.correct, self.finite_images = (state[k].to(self.device)
                                                       for k in ("loss", "correct", "finite_images"))
        self.images = int(state["images"])

    def totals(self) -> dict:
        """train_loss (mean over finite steps; nan if none), train_acc (%), train_images, nonfinite_images."""
        sums = all_reduce_sum(torch.stack([self.loss.double(), self.correct.double(), self.finite_images.double(),
                                           torch.tensor(float(self.images), device=self.device,
                                                        dtype=torch.float64)]))
        loss_sum, correct, counted, seen = sums.tolist()
        return {"train_loss": loss_sum / counted if counted > 0 else float("nan"),
                "train_acc": 100.0 * correct / max(seen, 1), "train_images": int(seen),
                "nonfinite_images": int(seen - counted)}


def why_diverged(row: dict, steps: int, model: torch.nn.Module) -> str | None:
    """Why the run cannot go on after epoch ``row`` (non-finite loss, the loss scaler gave up, non-finite
    weights), or None."""
    if not math.isfinite(row["train_loss"]):
        return f"training loss is {row['train_loss']} (every batch's loss was non-finite)"
    why = divergence_of_scaler(row.get("loss_scale"), row["skipped_steps"], steps)
    if why:
        return why
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "non-finite weights"
    return None
