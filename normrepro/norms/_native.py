"""Build and load the CPU kernels of ``_kernels.cpp`` (float32/float64) through ctypes.

The library is compiled on first use with the system C++ compiler (the same one torch.compile's CPU
backend needs), cached under ``$NORMREPRO_CACHE_DIR`` (default ``~/.cache/normrepro``, or the temp
dir when that is not writable) in a file named by a hash of the source, the flags and the CPU, and
reused afterwards. When it cannot be built (no compiler: ``lib()`` returns None and warns once), or
with ``NORMREPRO_NATIVE=0`` in the environment, the layers use their torch-ops path instead (same
results, slower on the CPU).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c++17", "-fno-math-errno", "-fno-trapping-math",
         "-fassociative-math", "-fno-signed-zeros"]
ABI_VERSION = 4

_lock = threading.Lock()
_FUNCS: dict = {}
_lib = None
_tried = False
_error: str | None = None

_f = ctypes.c_void_p
_i64 = ctypes.c_int64
_int = ctypes.c_int
_SIGNATURES = {
    # x, A, C, B, out, nt
    "nr_sums": [_f, _i64, _i64, _i64, _f, _int],
    # x, A, C, B, mu, sum|d|, sum sign(d), sum d*d, max|d| (null: not wanted), nt
    "nr_dev_stats": [_f, _i64, _i64, _i64, _f, _f, _f, _f, _f, _int],
    # x, A, C, B, mu, k, dev, idx, nt
    "nr_topk": [_f, _i64, _i64, _i64, _f, _int, _f, _f, _int],
    # x (may be null), dy, A, C, B, mu, sum dy, sum dy*d, nt
    "nr_grad_sums": [_f, _f, _i64, _i64, _i64, _f, _f, _f, _int],
    # x, A, C, B, mu, scale, shift (may be null), y, nt
    "nr_affine": [_f, _i64, _i64, _i64, _f, _f, _f, _f, _int],
    # x, dy, A, C, B, mu, a, kd, ks (may be null), c0, dx, nt
    "nr_input_grad": [_f, _f, _i64, _i64, _i64, _f, _f, _f, _f, _f, _f, _int],
    # dx, A, C, B, k, idx, w
    "nr_scatter_add": [_f, _i64, _i64, _i64, _int, _f, _f],
    # kind, x, A, C, B, gamma, beta, f0, eps, cscale, k, y, mu, f, s, aux1, aux2, max_abs, stat, nt
    "nr_fwd": [_int, _f, _i64, _i64, _i64, _f, _f, _f, "T", "T", _int, _f, _f, _f, _f, _f, _f, _f, _f, _int],
    # kind, x, dy, A, C, B, mu, s, gamma, cscale, k, aux1, aux2, dx, sum_dy, sum_dyd, nt
    "nr_bwd": [_int, _f, _f, _i64, _i64, _i64, _f, _f, _f, "T", _int, _f, _f, _f, _f, _f, _int],
}
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_SCALAR = {"f32": ctypes.c_float, "f64": ctypes.c_double}


def _cpu_tag() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return platform.machine() + flags


def _cache_dir() -> Path:
    env = os.environ.get("NORMREPRO_CACHE_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path.home() / ".cache" / "normrepro", Path(tempfile.gettempdir()) / f"normrepro-{os.getuid()}"]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError("no writable cache directory for the normrepro kernels")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cxx, *FLAGS]).encode() + _cpu_tag().encode()).hexdigest()[:16]
    target = _cache_dir() / f"normrepro_norms_{key}.so"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            cmd = [cxx, *FLAGS, "-fopenmp", str(SOURCE), "-o", tmp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:  # no OpenMP: build single-threaded
                cmd.remove("-fopenmp")
                res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()[-2000:]}")
            os.replace(tmp, target)  # atomic: concurrent builders agree on the result
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _prune(target.parent, keep=target)
    lib = ctypes.CDLL(str(target))
    if lib.nr_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{target} has a different ABI version")
    for base, argtypes in _SIGNATURES.items():
        for dtype, suf in SUFFIX.items():
            fn = getattr(lib, f"{base}_{suf}")
            fn.argtypes = [_SCALAR[suf] if a == "T" else a for a in argtypes]
            fn.restype = None
            _FUNCS[(base, dtype)] = fn
    return lib


def _prune(directory: Path, keep: Path, newest: int = 4) -> None:
    """Delete all but the ``newest`` builds of older sources (a loaded library stays mapped when deleted)."""
    try:
        builds = sorted(directory.glob("normrepro_norms_*.so"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in builds[newest:]:
            if old != keep:
                old.unlink()
    except OSError:
        pass


def enabled() -> bool:
    """False when the environment variable NORMREPRO_NATIVE is 0/false/no/off."""
    return os.environ.get("NORMREPRO_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def lib():
    """The loaded kernel library, or None when it cannot be built (the reason is in ``error()``)."""
    global _lib, _tried, _error
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            try:
                _lib = _build()
            except Exception as exc:  # noqa: BLE001 - any failure means: use the torch-ops path
                _error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"normrepro.norms: native CPU kernels unavailable, using torch ops ({_error})",
                              RuntimeWarning, stacklevel=2)
            _tried = True
    return _lib


def error() -> str | None:
    """Why the library could not be built (None when it was, or was not tried yet)."""
    return _error


def call(name: str, dtype: torch.dtype, *args) -> None:
    """Call kernel ``name`` for ``dtype``; tensor arguments are passed as their data pointers (the caller
    guarantees dense layouts and sizes), None as a null pointer."""
    _FUNCS[(name, dtype)](*[a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args])
