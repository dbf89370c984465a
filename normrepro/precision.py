"""Numeric precision of a run (config group ``precision``): model dtype, autocast, loss scaler, norm statistics dtype.

- ``fp32``: everything in float32.
- ``amp``: float32 weights, ``torch.autocast(float16)`` + ``torch.amp.GradScaler``. Autocast leaves batch norm in
  its input dtype (fp16) while it casts pow/norm/sum to fp32, so the statistics dtype of every norm is set
  explicitly and identically (``precision.stats_dtype``, default float32) and recorded in ``metrics.json``.
- ``bf16``: autocast bfloat16, no scaler.
- ``fp16``: the paper's setting: model, inputs, activations and norm statistics in float16 (``stats_dtype`` follows
  the input), dynamic loss scaling (:class:`DynamicLossScaler`; torch's GradScaler refuses fp16 gradients);
  ``precision.master_weights=true`` keeps fp32 master weights that the optimizer updates.
- ``bf16_pure``: the same in bfloat16 (no loss scaling needed: bf16 has fp32's exponent range).

The norms' statistics dtype has one resolver, :func:`resolve_stats_dtype`: ``norm.stats_dtype`` when set, else
``precision.stats_dtype``; it also says what ``metrics.json`` records.

Nothing falls back silently: when this torch cannot run a precision on the device, a one-line ConfigError says so.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from normrepro.errors import ConfigError, choice_error

PRECISIONS = ("fp32", "amp", "bf16", "fp16", "bf16_pure")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_INPUT = ("input", "null", "none", "None")  # the statistics follow each norm's input
# (model dtype, autocast dtype) of each precision
COMPUTE_DTYPES = {"fp32": (torch.float32, None), "amp": (torch.float32, torch.float16),
                  "bf16": (torch.float32, torch.bfloat16), "fp16": (torch.float16, None),
                  "bf16_pure": (torch.bfloat16, None)}
# precision.stats_dtype when the config leaves it out: autocast leaves batch norm in half precision, so the
# autocast precisions set it explicitly
_STATS_DEFAULTS = {"amp": "float32", "bf16": "float32"}
MIN_LOSS_SCALE = 2.0 ** -14  # ~30 skips in a row below the initial 2^16: the run cannot recover


class DynamicLossScaler:
    """Dynamic loss scaling for pure half-precision training, with the ``torch.amp.GradScaler`` interface
    (``scale``, ``unscale_``, ``step``, ``update``, ``state_dict``).

    loss is multiplied by S before backward; grads are divided by S before the step. A step whose gradients
    hold inf/nan is skipped and S ← S·backoff; after ``growth_interval`` finite steps S ← S·growth.
    With master weights, ``unscale_`` first copies the half-precision grads into the fp32 masters (which the
    optimizer holds) and ``step`` copies the updated masters back into the model.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        self.enabled = enabled
        self._scale = float(init_scale) if enabled else 1.0
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (model param, fp32 master)
        self._growth_tracker = 0
        self._unscaled = False
        self._found_inf = False
        self.skipped_steps = 0
        self.total_steps = 0

    def get_scale(self) -> float:
        """The current loss scale S."""
        return self._scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """loss · S (loss unchanged when disabled)."""
        return loss * self._scale if self.enabled else loss

    def attach_master_weights(self, optimizer: torch.optim.Optimizer) -> None:
        """Replace every parameter the optimizer holds by an fp32 master copy (call before any step)."""
        for group in optimizer.param_groups:
            masters = []
            for p in group["params"]:
                m = p.detach().clone().float().requires_grad_(True)
                self.pairs.append((p, m))
                masters.append(m)
            group["params"] = masters

    def _params(self, optimizer):
        return [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by S (into the fp32 masters first, if any); note whether any is inf/nan."""
        if self._unscaled:
            return
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.detach().float()
            p.grad = None
        grads = [p.grad for p in self._params(optimizer)]
        # one host sync per step: needed to decide whether to skip it
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        self._found_inf = not finite
        if finite and self._scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / self._scale)
        self._unscaled = True

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (if not done), then step unless a gradient is non-finite. Returns whether it stepped."""
        self.unscale_(optimizer)
        self.total_steps += 1
        if self._found_inf:
            self.skipped_steps += 1
            return False
        optimizer.step()
        for p, m in self.pairs:
            p.copy_(m)
        return True

    def update(self) -> None:
        """S ← S·backoff after a skipped step; S ← S·growth after ``growth_interval`` finite steps."""
        if self.enabled:
            if self._found_inf:
                self._scale = max(self._scale * self.backoff_factor, 2.0 ** -24)
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker >= self.growth_interval:
                    self._scale *= self.growth_factor
                    self._growth_tracker = 0
        self._unscaled = False

    def state_dict(self) -> dict:
        """Scale, growth tracker, step counts and the fp32 masters (for checkpoints)."""
        return {"scale": self._scale, "growth_tracker": self._growth_tracker, "skipped_steps": self.skipped_steps,
                "total_steps": self.total_steps, "masters": [m.detach().clone() for _, m in self.pairs]}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; a different number of master weights is a ValueError."""
        self._scale = float(state["scale"])
        self._growth_tracker = int(state["growth_tracker"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.total_steps = int(state.get("total_steps", 0))
        masters = state.get("masters") or []
        if len(masters) != len(self.pairs):
            raise ValueError(f"checkpoint holds {len(masters)} master weights, this run has {len(self.pairs)}")
        with torch.no_grad():
            for (_, m), saved in zip(self.pairs, masters):
                m.copy_(saved)


class _GradScalerStats(torch.amp.GradScaler):
    """torch's GradScaler, counting the steps it skips (scale decreased = the step was skipped)."""

    skipped_steps = 0
    total_steps = 0

    def update(self, new_scale=None):
        """torch's update, counting a decreased scale as a skipped step."""
        before = self.get_scale() if self.is_enabled() else None
        super().update(new_scale)
        if self.is_enabled():
            self.total_steps += 1
            self.skipped_steps += int(self.get_scale() < before)

    def state_dict(self):
        """torch's state plus the step counts."""
        return {**super().state_dict(), "skipped_steps": self.skipped_steps, "total_steps": self.total_steps}

    def load_state_dict(self, state):
        """Restore ``state_dict()`` (torch's part only when present: a disabled scaler saves none)."""
        state = dict(state)
        self.skipped_steps = int(state.pop("skipped_steps", 0))
        self.total_steps = int(state.pop("total_steps", 0))
        if state:
            super().load_state_dict(state)


@dataclass
class Precision:
    """A run's numeric precision: model and autocast dtypes, the loss scaler, fp32 master weights or not."""
    name: str
    model_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    scaler: object
    device_type: str
    master_weights: bool = False
    notes: list = field(default_factory=list)

    def autocast(self):
        """``torch.autocast`` in the autocast dtype, or a null context without autocast."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model cast to the model dtype."""
        return model.to(self.model_dtype)

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer, holding fp32 master weights when ``precision.master_weights=true``."""
        if self.master_weights:
            self.scaler.attach_master_weights(optimizer)
        return optimizer

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input batch in the model dtype."""
        return x if x.dtype == self.model_dtype else x.to(self.model_dtype)

    def describe(self) -> dict:
        """What ``metrics.json`` records of the precision (the statistics dtype: :func:`resolve_stats_dtype`)."""
        return {"precision": self.name, "model_dtype": _dtype_name(self.model_dtype),
                "autocast_dtype": _dtype_name(self.autocast_dtype), "master_weights": self.master_weights,
                "loss_scaling": _scaler_kind(self.scaler)}


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class StatsDtype:
    """The norms' statistics dtype (None = each norm's input dtype) and how ``metrics.json`` records it."""
    dtype: torch.dtype | None
    record: str


def _parse_stats_dtype(value, key: str) -> torch.dtype | None:
    name = None if value is None else str(value).replace("torch.", "")
    if name is None or name in _INPUT:
        return None
    if name not in _DTYPES:
        raise choice_error(key, value, ("input",) + tuple(_DTYPES))
    return _DTYPES[name]


def resolve_stats_dtype(norm_cfg, precision_cfg) -> StatsDtype:
    """The statistics dtype of every norm layer: ``norm.stats_dtype`` when set, else ``precision.stats_dtype``
    (left out: float32 under amp/bf16, else the input's dtype); ``norm=none`` has no statistics (dtype None).
    Recorded as the dtype's name, ``input (<compute dtype>)``, or, for torch's batch_norm (norm=l2, impl=torch)
    in half precision, the float32 it accumulates in internally."""
    name = precision_cfg.get("name", "fp32")
    if name not in PRECISIONS:
        raise choice_error("precision", name, PRECISIONS)
    dtype = _parse_stats_dtype(precision_cfg.get("stats_dtype", _STATS_DEFAULTS.get(name)), "precision.stats_dtype")
    norm = norm_cfg.get("name")
    if norm != "none" and norm_cfg.get("stats_dtype") is not None:
        dtype = _parse_stats_dtype(norm_cfg.get("stats_dtype"), "norm.stats_dtype")
    model_dtype, autocast_dtype = COMPUTE_DTYPES[name]
    compute = autocast_dtype or model_dtype
    record = _dtype_name(dtype) or f"input ({_dtype_name(compute)})"
    if dtype is None and norm == "l2" and norm_cfg.get("impl", "torch") == "torch" and compute != torch.float32:
        record = "float32 inside torch's batch_norm (norm=l2_lp computes them in the input dtype)"
    return StatsDtype(None if norm == "none" else dtype, record)


def divergence_of_scaler(loss_scale: float | None, skipped_steps: int, steps: int) -> str | None:
    """Why the loss scaler ends a run (the scale collapsed, or every step of a long epoch was skipped), or None."""
    if loss_scale is not None and loss_scale < MIN_LOSS_SCALE:
        return f"loss scale collapsed to {loss_scale:.3g} ({skipped_steps} steps skipped: non-finite gradients)"
    if steps >= 32 and skipped_steps >= steps:
        return f"all {steps} steps of the epoch were skipped (non-finite gradients)"
    return None


def scaler_stats(scaler) -> dict:
    """Steps skipped so far (non-finite gradients) and the current loss scale (None without scaling)."""
    enabled = scaler.enabled if isinstance(scaler, DynamicLossScaler) else scaler.is_enabled()
    return {"skipped_steps": int(getattr(scaler, "skipped_steps", 0)),
            "loss_scale": scaler.get_scale() if enabled else None}


def _scaler_kind(scaler) -> str:
    if isinstance(scaler, DynamicLossScaler):
        return "dynamic" if scaler.enabled else "none"
    return "dynamic (torch GradScaler)" if scaler.is_enabled() else "none"


def _check_half_support(device: torch.device, dtype: torch.dtype, name: str) -> None:
    """Run a conv + backward in ``dtype`` on ``device``: torch lacks some half kernels on some devices."""
    try:
        conv = torch.nn.Conv2d(2, 2, 3, padding=1).to(device, dtype)
        x = torch.randn(2, 2, 4, 4, device=device, dtype=dtype, requires_grad=True)
        conv(x).float().sum().backward()
    except (RuntimeError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"precision={name} needs {dtype} convolutions, which torch {torch.__version__} cannot run "
                          f"on {device.type} ({first}); use precision=fp32 or a GPU") from None


def build_precision(cfg, device: torch.device) -> Precision:
    """The :class:`Precision` of config group ``precision`` on ``device`` (a ConfigError when torch cannot run it)."""
    name = cfg.get("name", "fp32")
    if name not in PRECISIONS:
        raise choice_error("precision", name, PRECISIONS)
    dev = device.type
    if name == "fp32":
        return Precision(name, torch.float32, None, _GradScalerStats(dev, enabled=False), dev)
    if name in ("amp", "bf16"):
        dtype = torch.float16 if name == "amp" else torch.bfloat16
        if not torch.amp.is_autocast_available(dev):
            raise ConfigError(f"precision={name}: torch has no autocast for device {dev!r}; use precision=fp32")
        _check_half_support(device, dtype, name)
        scaler = _GradScalerStats(dev, enabled=(name == "amp"),
                                  init_scale=float(cfg.get("init_scale", 2.0 ** 16)),
                                  growth_interval=int(cfg.get("growth_interval", 2000)))
        return Precision(name, torch.float32, dtype, scaler, dev)
    # pure half precision: the model itself in fp16 / bf16
    dtype = torch.float16 if name == "fp16" else torch.bfloat16
    _check_half_support(device, dtype, name)
    init = cfg.get("init_scale", 2.0 ** 16)
    if not math.isfinite(float(init)) or float(init) <= 0:
        raise ConfigError(f"precision.init_scale must be a finite number > 0, got {init!r}")
    scaler = DynamicLossScaler(init_scale=float(init), growth_interval=int(cfg.get("growth_interval", 2000)),
                               enabled=bool(cfg.get("loss_scaling", name == "fp16")))
    return Precision(name, dtype, None, scaler, dev, master_weights=bool(cfg.get("master_weights", False)))
