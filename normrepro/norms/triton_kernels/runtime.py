"""Where the Triton kernels can run, and their launch in compiled or interpreted form.

When triton 3.8 reads ``TRITON_INTERPRET``: (1) when ``triton.language`` is first imported, its own library
functions (``tl.sum``, ``tl.max``, ``tl.zeros``, ``tl.cdiv``, ...) are decorated once, as compiled or as interpreted
functions for the rest of the process (``import torch._inductor``, e.g. by torch.compile, imports triton); (2) when
``@triton.jit`` decorates a kernel; the launch itself reads nothing. This package therefore (a) loads its kernel
module once per mode, on the first launch in the mode the environment asks for *at that launch* (``kernels()``),
decorating its kernels and helpers explicitly in that mode, and (b) calls no triton.language library function from
a kernel: reductions go through the builtin ``tl.reduce`` with the library's combine functions, which the
interpreter recognises by identity. So setting ``TRITON_INTERPRET=1`` any time before a launch (a test fixture's
``monkeypatch.setenv``) suffices, whether or not triton was imported before. The reverse is triton's own limit:
once triton was imported under TRITON_INTERPRET=1, compiling for a GPU later in the same process fails inside triton
(its gluon package asserts at import), so a process that launches compiled kernels must import triton without it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from normrepro.errors import ConfigError

BACKEND_HINT = "use NORMREPRO_NORM_BACKEND=torch|native"
NEEDS = ("backend 'triton' needs a CUDA GPU, or TRITON_INTERPRET=1 to run its kernels on the CPU through Triton's "
         f"interpreter; {BACKEND_HINT}")

MIN_CAPABILITY = (7, 0)  # the oldest NVIDIA GPUs Triton 3 compiles for (Volta)

_import_error: str | None = None
_triton = None


def triton_module():
    """The ``triton`` package, or None when it cannot be imported (the reason: ``import_error()``)."""
    global _triton, _import_error
    if _triton is None and _import_error is None:
        try:
            import triton
            import triton.language  # noqa: F401
        except Exception as e:  # ImportError, or a broken install
            _import_error = f"{type(e).__name__}: {e}"
        else:
            _triton = triton
    return _triton


def import_error() -> str | None:
    """Why ``import triton`` failed, or None."""
    triton_module()
    return _import_error


def interpreting() -> bool:
    """Whether a launch now would run in Triton's interpreter (TRITON_INTERPRET, read at this call)."""
    triton = triton_module()
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _device_type(device) -> str | None:
    if device is None:
        return None
    return torch.device(device).type


def unavailable_reason(device=None) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None: on any device) now, or None when they can."""
    if triton_module() is None:
        return f"backend 'triton' needs the triton package ({_import_error}); {BACKEND_HINT}"
    kind = _device_type(device)
    if interpreting():
        if kind in (None, "cpu", "cuda"):
            return None
        return f"backend 'triton' runs on CUDA or (interpreted) CPU tensors, not on {kind!r}; {BACKEND_HINT}"
    if kind in (None, "cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device if kind == "cuda" else None)
        if major < MIN_CAPABILITY[0]:
            return (f"backend 'triton' needs a GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or "
                    f"newer (Triton's minimum), found {major}.{minor}; {BACKEND_HINT}")
        return None
    if kind in (None, "cpu", "cuda"):
        return NEEDS
    return f"backend 'triton' runs on CUDA tensors, not on {kind!r}; {BACKEND_HINT}"


def available(device=None) -> bool:
    """Whether the Triton kernels can run on ``device`` (None: on some device) now."""
    return unavailable_reason(device) is None


def check_launch(t: torch.Tensor) -> None:
    """Raise ConfigError unless a kernel can be launched on t's device now."""
    reason = unavailable_reason(t.device)
    if reason is not None:
        raise ConfigError(reason)


_MODULES: dict[bool, ModuleType] = {}
_LOAD_LOCK = threading.Lock()


def jit_decorator(interpret: bool):
    """``triton.jit`` for kernels in a fixed mode: interpreted (InterpretedFunction) or compiled (JITFunction)."""
    triton_module()
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction
    from triton.runtime.jit import JITFunction
    return JITFunction


def device_fn_decorator(interpret: bool):
    """``triton.jit`` for functions the kernels call: compiled (JITFunction), or, interpreted, the plain Python
    function (the interpreter runs kernels as Python with triton.language patched; an InterpretedFunction helper
    would re-patch it on every call, which makes the kernels many times slower)."""
    if interpret:
        return lambda fn: fn
    return jit_decorator(False)


def kernels() -> ModuleType:
    """The kernels of ``_kernels.py`` jitted in the mode TRITON_INTERPRET asks for now: one copy of the module per
    mode (``..._kernels_interp`` / ``..._kernels_jit``), loaded on first use."""
    mode = interpreting()
    with _LOAD_LOCK:
        if mode not in _MODULES:
            name = f"{__package__}._kernels_{'interp' if mode else 'jit'}"
            spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_kernels.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            _MODULES[mode] = module
    return _MODULES[mode]


def launch(kernel: str, programs: int, *args, num_warps: int = 4, **constexprs) -> None:
    """Run ``kernel`` on a 1-D grid of ``programs`` programs, on the device of the first tensor argument."""
    first = next(a for a in args if isinstance(a, torch.Tensor))
    check_launch(first)
    fn = getattr(kernels(), kernel)
    if first.is_cuda and not interpreting():
        with torch.cuda.device(first.device):
            fn[(programs,)](*args, num_warps=num_warps, **constexprs)
    else:
        fn[(programs,)](*args, **constexprs)


def tl_dtype(dtype: torch.dtype):
    """The triton.language dtype of a floating torch dtype."""
    tl = triton_module().language
    table = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
             torch.float64: tl.float64}
    if dtype not in table:
        raise TypeError(f"triton norm kernels: compute dtype must be one of float32, float16, bfloat16, float64; "
                        f"got {dtype}")
    return table[dtype]


def acc_dtype(cd: torch.dtype) -> torch.dtype:
    """acc(cd): float64 for float64, else float32 (primitives.md)."""
    return torch.float64 if cd == torch.float64 else torch.float32
