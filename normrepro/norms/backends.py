"""Which implementation of the norm primitives runs: ``NORMREPRO_NORM_BACKEND=auto|native|torch|triton``.

    auto    native (the C++ kernels) for CPU tensors in float32/float64 when they build, triton on CUDA when Triton
            is importable, torch ops otherwise
    native  the C++ kernels for CPU float32/float64 (torch ops for other dtypes and devices); an error when the
            kernels cannot be built
    torch   torch ops everywhere
    triton  the Triton kernels (on a CPU tensor only with TRITON_INTERPRET=1: Triton's interpreter); an error when
            Triton cannot run

A backend is a module with the primitives of ``compose.py``; ``PRIMITIVE_MODULES`` is the table (one line per
backend). The Triton module also has ``available()`` / ``unavailable_reason()`` and may have ``supports(t, cd)``
(False: torch ops for that tensor and dtype, e.g. float64). The environment variable is read when a norm first
runs; ``set_backend`` / ``with backend(name):`` override it for this process (``set_backend(None)`` reads the
variable again). The choice is looked up whenever a norm runs, so it also applies inside compiled graphs (the norm
ops are opaque to torch.compile).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from types import ModuleType

import torch

from normrepro.errors import ConfigError, choice_error

BACKENDS = ("auto", "native", "torch", "triton")
ENV = "NORMREPRO_NORM_BACKEND"

#: backend name -> module implementing the primitives (imported on first use)
PRIMITIVE_MODULES = {
    "torch": "normrepro.norms.prims_torch",
    "native": "normrepro.norms.prims_native",
    "triton": "normrepro.norms.triton_kernels",
}

_override: str | None = None  # set_backend's choice, else the environment's (read once)
_native_usable: bool | None = None  # whether the native kernels run here (checked once)


def get_backend() -> str:
    """The configured backend name (``set_backend``'s, else the environment variable's, default auto)."""
    global _override
    if _override is None:
        name = os.environ.get(ENV, "auto").strip() or "auto"
        if name not in BACKENDS:
            raise choice_error(ENV, name, BACKENDS)
        _override = name
    return _override


def set_backend(name: str | None) -> None:
    """Use backend ``name`` (one of BACKENDS) from now on; None: the environment variable's (read again, and
    NORMREPRO_NATIVE and the native library checked again)."""
    global _override, _native_usable
    if name is not None and name not in BACKENDS:
        raise choice_error("norm backend", name, BACKENDS)
    _override = name
    if name is None:
        _native_usable = None


@contextlib.contextmanager
def backend(name: str):
    """Context manager: ``with backend("torch"): ...`` runs the norms on that backend."""
    global _override
    old = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = old


@functools.cache
def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(PRIMITIVE_MODULES[name])
    except ImportError:
        return None


def _triton(t: torch.Tensor, cd: torch.dtype) -> ModuleType:
    mod = _module("triton")
    if mod is None:
        raise ConfigError(f"norm backend 'triton' is not available ({PRIMITIVE_MODULES['triton']} cannot be "
                          f"imported); use {ENV}=torch or native")
    available = getattr(mod, "available", lambda: True)
    if not available():
        reason = getattr(mod, "unavailable_reason", lambda: "")()
        raise ConfigError(f"norm backend 'triton' cannot run: {reason or 'Triton is not usable here'}; "
                          f"use {ENV}=torch or native")
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ConfigError(f"norm backend 'triton' needs a CUDA GPU, or TRITON_INTERPRET=1 to run its kernels on the "
                          f"CPU through Triton's interpreter; use {ENV}=torch or native")
    supports = getattr(mod, "supports", None)  # optional: e.g. no float64 kernels -> torch ops for those
    return mod if supports is None or supports(t, cd) else _module("torch")


def _native_ok(strict: bool) -> bool:
    global _native_usable
    if _native_usable is None:
        _native_usable = _module("native").usable()
    if _native_usable:
        return True
    if strict:
        raise ConfigError(f"norm backend 'native' cannot run: {_module('native').unusable_reason()}; "
                          f"use {ENV}=torch or auto")
    return False


def primitives(t: torch.Tensor, cd: torch.dtype) -> ModuleType:
    """The primitive module that computes on tensor t in dtype cd under the configured backend."""
    name = get_backend()
    if name == "torch" or torch.compiler.is_compiling():  # code that dynamo traces runs as torch ops
        return _module("torch")
    if name == "triton":
        return _triton(t, cd)
    native = _module("native")
    if name == "native":
        return native if native.supports(t, cd) and _native_ok(strict=True) else _module("torch")
    # auto
    if native.supports(t, cd) and _native_ok(strict=False):
        return native
    if t.device.type == "cuda":
        mod = _module("triton")
        if mod is not None and getattr(mod, "available", lambda: False)() and \
                getattr(mod, "supports", lambda *_: True)(t, cd):
            return mod
    return _module("torch")
