"""``normrepro-eval ckpt=<run dir or .ckpt> [dataset.<key>=v] [max_batches=N]``: test a trained run's checkpoint.

The model is rebuilt from the resolved config the checkpoint stores (as ``trainer.build_model_for`` builds it), its
weights (``weights=ema``: the EMA of the weights, ``train.ema_decay``) loaded with ``weights_only``
(``normrepro.safe_load``), and ``trainer.evaluate`` runs over the test split (and the validation split of a run with
``train.val_fraction``); a hook on the model counts top-5 in the same pass. Prints loss, top-1 and top-5 and writes
``eval.json`` (atomically) beside the checkpoint. Bad input (no checkpoint, one of another model, an unknown key):
one ``error:`` line, exit 2.
"""
from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from normrepro.checkpoint import CKPT_NAME, checkpoint_problem
from normrepro.errors import ConfigError, choice_error
from normrepro.preflight import exit_with_error
from normrepro.safe_load import safe_torch_load
from normrepro.utils.io import atomic_write_json

EVAL_NAME = "eval.json"
OPTIONS = ("ckpt", "max_batches", "device", "weights")  # the keys of eval itself; the others override the run's config
OVERRIDABLE = ("dataset.", "train.eval_batch_size")  # what of the run's config may be overridden (data location, ...)
WEIGHTS = ("raw", "ema")
USAGE = ("usage: normrepro-eval ckpt=<run dir or .ckpt file> [max_batches=N] [device=auto|cpu|cuda] "
         "[weights=raw|ema] [dataset.<key>=<value> ...] [train.eval_batch_size=N]")


def parse_args(argv: Sequence[str]) -> tuple[dict, dict]:
    """``key=value`` arguments as (eval options, config overrides); values parsed as YAML (like Hydra)."""
    options, overrides = {"max_batches": None, "device": "auto", "weights": "raw"}, {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {arg!r} is not key=value; {USAGE}")
        value = yaml.safe_load(text) if text else ""
        if key in OPTIONS:
            options[key] = value
        elif key.startswith(OVERRIDABLE[0]) or key in OVERRIDABLE[1:]:
            overrides[key] = value
        else:
            raise ConfigError(f"unknown key {key!r}; accepted: {', '.join(OPTIONS)}, dataset.<key>, "
                              f"train.eval_batch_size")
    if not options.get("ckpt"):
        raise ConfigError(f"ckpt=<run dir or .ckpt file> is required; {USAGE}")
    mb = options["max_batches"]
    if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
        raise ConfigError(f"max_batches must be an integer >= 1 (or null: the whole test split), got {mb!r}")
    if options["weights"] not in WEIGHTS:
        raise choice_error("weights", options["weights"], WEIGHTS)
    return options, overrides


def checkpoint_path(ckpt: str | Path) -> Path:
    """``ckpt`` itself (a file) or ``<ckpt>/last.ckpt`` (a run dir); a ConfigError when there is none."""
    path = Path(str(ckpt))
    if path.is_dir():
        if not (path / CKPT_NAME).is_file():
            found = sorted(p.name for p in path.glob("*.ckpt"))
            hint = (f"; it holds {', '.join(found)}: pass ckpt=<that file>" if found
                    else " (train with train.checkpoint=true)")
            raise ConfigError(f"ckpt={str(ckpt)!r}: no checkpoint {CKPT_NAME} in this run dir{hint}")
        return path / CKPT_NAME
    if not path.is_file():
        raise ConfigError(f"ckpt={str(ckpt)!r}: no such run dir or checkpoint file")
    return path


def load_state(path: Path) -> dict:
    """The checkpoint at ``path`` (tensors and plain containers only), its structure checked."""
    state = safe_torch_load(path, "checkpoint", "pass a last.ckpt/best.ckpt written by normrepro-train")
    problem = checkpoint_problem(state)
    if problem:
        raise ConfigError(f"damaged checkpoint {str(path)!r}: {problem}")
    return state


def model_weights(state: dict, weights: str, path: Path) -> dict:
    """The state dict to test: the model's (``raw``) or the EMA's (``ema``, an ``AveragedModel`` state)."""
    if weights == "raw":
        return state["model"]
    ema = state.get("ema")
    if not isinstance(ema, dict):
        raise ConfigError(f"weights=ema: checkpoint {str(path)!r} holds no EMA of the weights (train.ema_decay was "
                          f"off); use weights=raw")
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def run_config(state: dict, overrides: dict):
    """The run's resolved config (stored in its checkpoint) with ``overrides`` applied and checked."""
    from normrepro.config_check import check_config

    cfg = OmegaConf.create(state["config"])
    OmegaConf.set_struct(cfg, True)
    for key, value in overrides.items():
        if OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            section = key.split(".")[0]
            raise choice_error(f"key of the run's {section} config", key, [f"{section}.{k}" for k in cfg[section]])
        OmegaConf.update(cfg, key, value, merge=False)
    check_config(cfg)
    return cfg


class TopkCounter:
    """The test loader (capped at ``max_batches``) that remembers each batch's labels, and a forward hook on the
    model that counts the top-k hits of its logits, so that ``trainer.evaluate`` yields top-5 in its own pass."""

    def __init__(self, model: torch.nn.Module, loader, k: int = 5, max_batches: int | None = None):
        self.loader, self.k, self.max_batches = loader, k, max_batches
        self.hits, self.images, self._labels = 0, 0, None
        self._handle = model.register_forward_hook(self._count)

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self):
        for x, y in itertools.islice(self.loader, self.max_batches):
            self._labels = y
            self.images += y.numel()
            yield x, y

    def _count(self, module, args, logits) -> None:
        top = logits.float().topk(min(self.k, logits.size(1)), dim=1).indices
        self.hits += int((top == self._labels[:, None]).any(1).sum())

    def accuracy(self) -> float:
        """Top-k accuracy (%) of the batches seen; the hook is removed."""
        self._handle.remove()
        return 100.0 * self.hits / max(self.images, 1)


def evaluate_checkpoint(ckpt: str | Path, overrides: dict | None = None, max_batches: int | None = None,
                        device: str = "auto", weights: str = "raw") -> dict:
    """Rebuild the run's model, load ``ckpt`` and test it: {"test_loss", "test_acc", "test_top5", "images", ...};
    a run with a validation split also gets val_loss, val_acc, val_top5."""
    from normrepro.data import build_data
    from normrepro.precision import build_precision
    from normrepro.trainer import build_model_for, evaluate, resolve_device, seed_everything

    path = checkpoint_path(ckpt)
    state = load_state(path)
    cfg = run_config(state, overrides or {})
    dev = resolve_device(str(device))
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    split = {"val_fraction": float(cfg.train.val_fraction)} if cfg.train.get("val_fraction") else {}  # its statistics
    data = build_data(cfg.dataset, int(cfg.train.batch_size), int(cfg.train.eval_batch_size), dev, int(cfg.seed),
                      **split)
    precision = build_precision(cfg.precision, dev)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = precision.prepare_model(build_model_for(cfg, data.num_classes, data.in_channels)
                                    .to(dev, memory_format=memory_format))
    weights_state = model_weights(state, weights, path)
    try:
        model.load_state_dict(weights_state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"checkpoint {str(path)!r} does not match the model of its config "
                          f"({str(e).strip().splitlines()[0]}); was it written by another model?") from None
    result = {"ckpt": path.name, "weights": weights, "epoch": int(state["epoch"])}
    splits = {"test": data.test, **({"val": data.val} if getattr(data, "val", None) is not None else {})}
    for split_name, loader in splits.items():
        counter = TopkCounter(model, loader, 5, max_batches)
        loss, acc = evaluate(model, counter, precision, memory_format)
        result.update({f"{split_name}_loss": loss, f"{split_name}_acc": acc, f"{split_name}_top5": counter.accuracy()})
        result["images" if split_name == "test" else "val_images"] = counter.images
    return {**result, "num_test": data.num_test, "max_batches": max_batches,
            "overrides": [f"{k}={v}" for k, v in (overrides or {}).items()]}


def main(argv: Sequence[str]) -> Path:
    """Evaluate as ``argv`` asks, print the numbers and write ``eval.json`` beside the checkpoint; its path."""
    from normrepro.utils.env import git_commit

    options, overrides = parse_args(argv)
    result = evaluate_checkpoint(options["ckpt"], overrides, options["max_batches"], options["device"],
                                 options["weights"])
    out = checkpoint_path(options["ckpt"]).parent / EVAL_NAME
    atomic_write_json(out, {**result, "git_commit": git_commit()})
    val = f"val_acc {result['val_acc']:.2f} " if "val_acc" in result else ""
    print(f"{result['ckpt']} ({result['weights']} weights, epoch {result['epoch']}): {val}test_acc "
          f"{result['test_acc']:.2f} top5 {result['test_top5']:.2f} loss {result['test_loss']:.4f} on "
          f"{result['images']} images -> {out}")
    return out


def entry(argv: Sequence[str] | None = None) -> None:
    """Console script ``normrepro-eval`` (and ``python eval.py``); bad input: one ``error:`` line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.split("\n\n")[0] + "\n" + USAGE)
        return
    try:
        main(argv)
    except ConfigError as e:
        exit_with_error(e)
