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
        """Append and return ‖w_c‖ of every layer now (an epoch boundary), on the CPU."""
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
        """``{"layers": {name: channels}, "norms": [...]}``: the content of weight_norms.pt."""
        return {"layers": {name: int(m.weight.shape[0]) for name, m in self.layers}, "norms": self.norms}

    def save(self) -> None:
        """Write ``state()`` to the recorder's path atomically."""
        atomic_torch_save(self.state(), self.path)

    def load_state(self, state: dict) -> None:
        """Continue from ``state()`` of a checkpoint (resume)."""
        self.norms = list(state["norms"])


def load_reference(run_dir: str | Path, layers: dict[str, int], epochs: int) -> list[dict[str, torch.Tensor]]:
    """The recorded norms of a reference run (``optim.reference``), checked against this run's layers."""
    path = Path(str(run_dir)) / WEIGHT_NORMS_NAME
    if not path.is_file():
        raise ConfigError(f"optim.reference={str(run_dir)!r}: no {WEIGHT_NORMS_NAME} there; train the wd_on "
                          f"reference run first (scripts/run_wd_arms.py does it in order)")
    try:
        ref = torch.load(path, map_location="cpu", weights_only=True)
        ref_layers, norms = dict(ref["layers"]), list(ref["norms"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"optim.reference: cannot read {str(path)!r} ({type(e).__name__})") from None
    if ref_layers != dict(layers):
        diff = sorted(set(ref_layers.items()) ^ set(dict(layers).items()))[:3]
        raise ConfigError(f"optim.reference={str(run_dir)!r} has another architecture: its scale-invariant layers "
                          f"differ from this run's (first differences: {diff})")
    if len(norms) < epochs:
        raise ConfigError(f"optim.reference={str(run_dir)!r} recorded {len(norms)} epoch boundaries, this run needs "
                          f"{epochs} (train the reference for at least as many epochs)")
    return norms
