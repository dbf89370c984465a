"""Per-channel weight norms of the scale-invariant layers (paper §1.1-1.2), recorded at every epoch boundary.

A conv/linear layer whose output goes straight into a normalization layer is scale invariant: the loss is the
same for w and c·w, its gradient scales as 1/‖w‖, and the direction of each output channel w_c moves with the
effective step η/‖w_c‖². The recorder keeps ‖w_c‖ for every such layer at epoch boundaries 0 (initialization),
1, ..., E in ``<run dir>/weight_norms.pt``: ``{"layers": {name: num_channels}, "norms": [{name: tensor[C]}, ...]}``
(index e = the start of epoch e). A ``wd_on`` run's file is the reference of the ``lr_correction`` and
``norm_schedule`` arms (``optim.reference=<run dir>``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from normrepro.errors import ConfigError
from normrepro.safe_load import safe_torch_load
from normrepro.utils.io import atomic_torch_save

WEIGHT_NORMS_NAME = "weight_norms.pt"


def channel_norms(weight: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """‖w_c‖₂ of every output channel c (dim 0) of a weight, in float32 at least; differentiable (detach to record).
    ``keepdim``: shape (C, 1, ..., 1) instead of (C,)."""
    dims = tuple(range(1, weight.dim()))
    return torch.linalg.vector_norm(weight, ord=2, dim=dims, keepdim=keepdim,
                                    dtype=torch.promote_types(weight.dtype, torch.float32))


class WeightNormRecorder:
    """Records ‖w_c‖ of ``layers`` (list of (name, module)) at each epoch boundary; saves atomically."""

    def __init__(self, layers: list[tuple[str, nn.Module]], path: str | Path):
        self.layers, self.path = list(layers), Path(path)
        self.norms: list[dict[str, torch.Tensor]] = []

    def record(self) -> dict[str, torch.Tensor]:
        """Record every layer's per-channel norms now (one epoch boundary); returns them."""
        norms = {name: channel_norms(m.weight.detach()).cpu() for name, m in self.layers}
        self.norms.append(norms)
        return norms

    @staticmethod
    def summary(norms: dict[str, torch.Tensor], lr: float) -> dict:
        """Per layer ‖w‖ (all channels) and the mean effective step lr/‖w_c‖² = lr·C/‖w‖²; ``si_weight_norm``:
        the norm of all scale-invariant weights together (one number per epoch, for plots)."""
        total = {name: float(n.pow(2).sum()) for name, n in norms.items()}
        return {"si_weight_norm": sum(total.values()) ** 0.5,
                "weight_norm": {name: t ** 0.5 for name, t in total.items()},
                "eff_lr": {name: lr * norms[name].numel() / t if t > 0 else float("inf") for name, t in total.items()}}

    def state(self) -> dict:
        """The recorded norms with each layer's channel count (what weight_norms.pt holds)."""
        return {"layers": {name: int(m.weight.shape[0]) for name, m in self.layers}, "norms": self.norms}

    def save(self) -> None:
        """Write weight_norms.pt atomically."""
        atomic_torch_save(self.state(), self.path)

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint's recorded norms."""
        self.norms = list(state["norms"])


def load_reference(run_dir: str | Path, layers: dict[str, int], epochs: int) -> list[dict[str, torch.Tensor]]:
    """The recorded norms of a reference run (``optim.reference``), checked against this run's layers. The file
    is loaded with ``weights_only=True`` (a crafted file is refused, nothing from it runs)."""
    path = Path(str(run_dir)) / WEIGHT_NORMS_NAME
    if not path.is_file():
        raise ConfigError(f"optim.reference={str(run_dir)!r}: no {WEIGHT_NORMS_NAME} there; train the wd_on "
                          f"reference run first (scripts/run_wd_arms.py does it in order)")
    ref = safe_torch_load(path, "optim.reference file", "point optim.reference at a wd_on run dir of this project")
    problem = reference_problem(ref)
    if problem:
        raise ConfigError(f"optim.reference: damaged {str(path)!r} ({problem}); retrain the reference run")
    ref_layers, norms = dict(ref["layers"]), list(ref["norms"])
    if ref_layers != dict(layers):
        diff = sorted(set(ref_layers.items()) ^ set(dict(layers).items()))[:3]
        raise ConfigError(f"optim.reference={str(run_dir)!r} has another architecture: its scale-invariant layers "
                          f"differ from this run's (first differences: {diff})")
    if len(norms) < epochs:
        raise ConfigError(f"optim.reference={str(run_dir)!r} recorded {len(norms)} epoch boundaries, this run needs "
                          f"{epochs} (train the reference for at least as many epochs)")
    return norms


def reference_problem(ref) -> str | None:
    """What is wrong with a loaded ``weight_norms.pt`` (``{"layers": {name: C}, "norms": [{name: tensor[C]}]}``):
    wrong types, a boundary missing a layer, a tensor of another length, negative or non-finite norms; else None."""
    if not isinstance(ref, dict) or not isinstance(ref.get("layers"), dict) or not isinstance(ref.get("norms"), list):
        return "expected {layers: {name: channels}, norms: [{name: tensor}, ...]}"
    layers = ref["layers"]
    if not all(isinstance(k, str) and isinstance(c, int) and not isinstance(c, bool) and c > 0
               for k, c in layers.items()):
        return "layers is not {name: number of channels}"
    for e, norms in enumerate(ref["norms"]):
        if not isinstance(norms, dict) or set(norms) != set(layers):
            return f"epoch boundary {e} does not hold exactly the recorded layers"
        for name, t in norms.items():
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() != layers[name]:
                return f"epoch boundary {e}, layer {name!r}: not a tensor of {layers[name]} channel norms"
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                return f"epoch boundary {e}, layer {name!r}: norms must be finite and >= 0"
    return None
