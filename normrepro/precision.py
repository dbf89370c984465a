"""Numeric precision of a run: autocast context, loss scaler, model dtype."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from normrepro.errors import choice_error

PRECISIONS = ("fp32",)


@dataclass
class Precision:
    name: str
    model_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    device_type: str

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.model_dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == self.model_dtype else x.to(self.model_dtype)

    def describe(self) -> dict:
        return {"precision": self.name, "model_dtype": str(self.model_dtype).replace("torch.", "")}


def build_precision(cfg, device: torch.device) -> Precision:
    name = cfg.get("name", "fp32")
    if name not in PRECISIONS:
        raise choice_error("precision", name, PRECISIONS)
    return Precision(name, torch.float32, None, torch.amp.GradScaler(device.type, enabled=False), device.type)
