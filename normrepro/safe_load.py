"""Loading files a user hands us without running code from them.

- :func:`safe_torch_load`: ``torch.load(weights_only=True)``: tensors and plain containers only (dict, list, tuple,
  str, numbers, None, torch dtypes/sizes); a file naming any other global (a crafted ``__reduce__``, a numpy array,
  an arbitrary class) is refused with one line and nothing from it runs.
- :func:`restricted_pickle_load`: for formats that are pickles by definition (the CIFAR python batches): an
  unpickler whose ``find_class`` admits only what numpy arrays need; dicts, lists, bytes, str and numbers need no
  globals at all.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

from normrepro.errors import ConfigError

# (module, name) a pickled numpy array needs; numpy 2 writes numpy._core, numpy 1 numpy.core
NUMPY_ARRAY_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
})
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` admits only ``allowed`` (module, name) pairs."""

    def __init__(self, file, allowed=NUMPY_ARRAY_GLOBALS, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = frozenset(allowed)

    def find_class(self, module, name):
        """The allowed global ``module.name``; anything else raises UnpicklingError (and nothing is imported)."""
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def restricted_pickle_load(path: str | Path, what: str, encoding: str = "latin1"):
    """Unpickle ``path`` admitting only numpy arrays and plain data; else a one-line ConfigError naming ``what``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding=encoding).load()
    except pickle.UnpicklingError as e:
        if "is not allowed" in str(e):
            raise ConfigError(f"refusing {what} {str(path)!r}: it names {str(e).split(' is ')[0]}, which a "
                              f"data file never needs (crafted or foreign file); nothing from it was run") from None
        raise ConfigError(f"could not read {what} {str(path)!r} (UnpicklingError); re-download it") from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign file: one user-facing message
        raise ConfigError(f"could not read {what} {str(path)!r} ({type(e).__name__}); re-download it") from None


def safe_torch_load(path: str | Path, what: str, hint: str):
    """``torch.load(path, weights_only=True)`` on the CPU; an unreadable or unsafe file raises a one-line
    ConfigError: ``<what> <path> ...; <hint>``."""
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # a plain pickle: torch warns about its protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _GLOBAL.findall(str(e))
        if not names:  # not a pickle of known opcodes at all: damaged, not crafted
            raise ConfigError(f"corrupt {what} {str(path)!r} (UnpicklingError); {hint}") from None
        raise ConfigError(f"refusing {what} {str(path)!r}: it holds objects other than tensors and plain "
                          f"containers ({names[0]}), so it was not loaded (a crafted file, or one written by an "
                          f"older normrepro); {hint}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"corrupt {what} {str(path)!r} ({type(e).__name__}); {hint}") from None
