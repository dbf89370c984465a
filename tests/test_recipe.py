"""recipe=default|authors (issue 11): every experiment composes and trains a step under both recipes; what the authors'
recipe changes is an explicit table of regime, dataset and precision; and each of its settings takes effect: the
classifier penalty's gradient (clipped with the rest), weight decay 0 from the given epoch (resumable), fp16 without
loss scaling, ColorJitter on ImageNet training pixels (deterministic, eval untouched)."""
import copy
import json
import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from normrepro.config_check import check_config
from normrepro.data import build_data
from normrepro.data.imagenet import FolderImages, color_jitter, random_resized_crop_params
from normrepro.optim.regularization import apply_wd_zero_epoch, with_classifier_penalty
from normrepro.precision import build_precision
from normrepro.resume_check import flatten
from normrepro.trainer import build_run, fit, train_one_epoch
from tests.helpers.config import TINY, compose_cfg, group_choices, group_options
from tests.helpers.data import write_cifar, write_imagenet
from tests.helpers.resume import crash_then_resume

EXPERIMENTS = [o.split("=", 1)[1] for o in group_options("experiment")]
CPU = torch.device("cpu")


def authors_changes(experiment: str, default: dict) -> dict:
    """What recipe=authors must change in ``experiment``'s default config (docs/deviations.md, the recipe rows):
    main.py's clip and classifier penalty, then the parts chosen by the run's regime, dataset and precision."""
    choices = group_choices([f"experiment={experiment}"])
    regime, dataset, precision = choices.get("regime"), choices["dataset"], choices["precision"]
    if regime == "wd_lr_80":  # their other script (normmatters_wd): torch 0.3's init of their VGG, own run dirs
        changes = {"model.init": "torch_default", "experiment.root": f"multirun/{experiment}_authors"}
    else:
        changes = {"train.grad_clip": 5.0, "train.classifier_penalty": 1e-4}
    if regime == "cifar_164":
        changes |= {"train.batch_size": 256, "optim.wd_zero_epoch": 122}
    if regime == "bwn_90":
        changes["optim.weight_decay"] = 0.0
    if dataset == "imagenet":
        changes["dataset.color_jitter"] = 0.4
    if precision == "fp16":
        changes |= {"precision.loss_scaling": False, "precision.master_weights": False}
    return {k: v for k, v in changes.items() if default.get(k) != v}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_authors_recipe_changes_exactly_its_table(experiment):
    """recipe=default is the config without a recipe; recipe=authors differs from it in exactly the table's keys."""
    plain = compose_cfg([f"experiment={experiment}"])
    default = flatten(check_config(compose_cfg([f"experiment={experiment}", "recipe=default"])))
    authors = flatten(check_config(compose_cfg([f"experiment={experiment}", "recipe=authors"])))
    assert default == flatten(check_config(plain))
    changed = {k: authors.get(k) for k in set(default) | set(authors) if default.get(k) != authors.get(k)}
    assert changed == authors_changes(experiment, default)


def test_recipe_interplay_is_per_regime_dataset_and_precision():
    """The parts follow the groups, not the experiment: a regime's part with any model, fp16 only under fp16."""
    cifar = compose_cfg(["regime=cifar_164", "recipe=authors"])
    assert (cifar.train.batch_size, cifar.optim.wd_zero_epoch, cifar.train.grad_clip) == (256, 122, 5.0)
    imagenet_regime = compose_cfg(["regime=imagenet_90", "recipe=authors"])
    assert (imagenet_regime.train.batch_size, imagenet_regime.optim.wd_zero_epoch) == (256, None)
    no_regime = compose_cfg(["recipe=authors"])
    assert (no_regime.train.batch_size, no_regime.optim.wd_zero_epoch, no_regime.model.init) == (128, None, "he")
    assert "color_jitter" not in compose_cfg(["recipe=authors", "dataset=synthetic_imagenet"]).dataset
    assert compose_cfg(["recipe=authors", "precision=fp32"]).precision == compose_cfg(["precision=fp32"]).precision
    assert compose_cfg(["recipe=authors", "precision=fp16"]).precision.loss_scaling is False
    # the command line still wins over the recipe
    assert compose_cfg(["recipe=authors", "regime=cifar_164", "train.batch_size=64"]).train.batch_size == 64


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    """Tiny CIFAR-10/100 files and an ImageNet tree, shared by the experiment runs."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, "cifar10", 2, 4)
    write_cifar(root, "cifar100", 10, 4)
    write_imagenet(root / "imagenet", n_train=4, n_val=2)
    return root


def tiny_overrides(experiment: str, root) -> list[str]:
    """One step of 8 images with a small model and the data of ``data_roots``."""
    choices = group_choices([f"experiment={experiment}"])
    model, dataset = choices["model"], choices["dataset"]
    over = ["train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=8", "train.progress=false",
            "train.checkpoint=false"]
    if dataset == "imagenet":
        over += [f"dataset.root={root / 'imagenet'}", "dataset.image_size=16", "dataset.num_workers=0"]
    elif dataset.startswith("cifar"):
        over += [f"dataset.root={root}"]
    elif dataset == "mnist5k":
        over += ["dataset.image_size=16"]
    if model.startswith("vgg"):
        over += ["model.width_mult=0.0625"]
    elif model == "wrn28_10":
        over += ["model.depth=10", "model.widen_factor=1", "model.width=4"]
    elif model not in ("resnet18", "resnet50"):
        over += ["model.width=4"]
    return over


@pytest.mark.parametrize("recipe", ["default", "authors"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains_a_step_with_each_recipe(experiment, recipe, data_roots, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}", f"recipe={recipe}", *tiny_overrides(experiment, data_roots)])
    check_config(cfg)
    result = fit(cfg, tmp_path)
    assert result["status"] == "completed" and result["epochs"][0]["train_images"] == 8


# ------------------------------------------------------------------------------------- the classifier penalty
def test_classifier_penalty_gradient_is_clipped_with_the_rest(tmp_path):
    """One step of the trainer's loop equals θ − lr·c·(∇CE + λ·θ_fc on fc), c = min(1, clip / ‖∇CE + λ·θ_fc‖),
    computed here independently (momentum 0, no weight decay, constant lr)."""
    lam, clip, lr = 0.5, 0.05, 0.1
    cfg = compose_cfg(TINY + ["train.max_steps_per_epoch=1", "optim.momentum=0", "optim.weight_decay=0",
                              "optim.schedule.name=constant", f"optim.lr={lr}", f"train.classifier_penalty={lam}",
                              f"train.grad_clip={clip}"])
    run = build_run(cfg, tmp_path)
    run.data.train.set_epoch(0)
    x, y = next(iter(run.data.train))
    ref = copy.deepcopy(run.model).train()
    names, params = zip(*ref.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
    g = {n: gr + (lam * p.detach() if n.startswith("fc.") else 0.0) for n, p, gr in zip(names, params, grads)}
    total = torch.sqrt(sum(v.pow(2).sum() for v in g.values()))
    assert total > clip  # the clip binds
    coef = clip / (float(total) + 1e-6)
    expected = {n: p.detach() - lr * coef * g[n] for n, p in zip(names, params)}
    without_penalty = {n: p.detach() - lr * min(1.0, clip / (float(torch.sqrt(sum(v.pow(2).sum() for v in grads)))
                                                             + 1e-6)) * gr for n, p, gr in zip(names, params, grads)}
    train_one_epoch(run, 0)
    got = dict(run.model.named_parameters())
    for n in names:
        torch.testing.assert_close(got[n].detach(), expected[n], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got["fc.weight"], without_penalty["fc.weight"], rtol=1e-5, atol=1e-7)


def test_penalty_is_half_lambda_times_the_squared_fc_norm():
    model = torch.nn.Module()
    model.fc = torch.nn.Linear(3, 2)
    loss = torch.tensor(1.25)
    squares = model.fc.weight.pow(2).sum() + model.fc.bias.pow(2).sum()
    assert torch.allclose(with_classifier_penalty(loss, model, 1e-2), loss + 0.5e-2 * squares)
    assert with_classifier_penalty(loss, model, 0.0) is loss


# -------------------------------------------------------------------------------- weight decay off from epoch E
def test_weight_decay_is_zero_from_the_given_epoch(tmp_path):
    cfg = compose_cfg(TINY + ["train.epochs=3", "train.max_steps_per_epoch=1", "optim.weight_decay=0.01",
                              "optim.wd_zero_epoch=2"])
    run = build_run(cfg, tmp_path)
    seen = []
    for epoch in range(3):
        train_one_epoch(run, epoch)
        seen.append(sorted({g["weight_decay"] for g in run.optimizer.param_groups}))
    assert seen == [[0.01], [0.01], [0.0]]


@pytest.mark.parametrize("zero_epoch, epochs, off_from", [(2, 4, 2), (0.5, 4, 2), (0, 4, 0), (None, 4, 99)])
def test_wd_zero_epoch_step_is_plain_sgd(zero_epoch, epochs, off_from):
    """Before E a step is p − lr·(g + wd·p), from E on p − lr·g (epochs < 1: fractions of train.epochs)."""
    lr, wd = 0.1, 0.5
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=lr, weight_decay=wd)
    for epoch in range(epochs):
        before = p.detach().clone()
        apply_wd_zero_epoch(opt, zero_epoch, epoch, epochs)
        p.grad = torch.full((3,), 0.25)
        opt.step()
        decay = 0.0 if epoch >= off_from else wd
        torch.testing.assert_close(p.detach(), before - lr * (0.25 + decay * before))


def test_wd_zero_epoch_resumes_exactly(tmp_path, monkeypatch):
    cfg = compose_cfg(TINY + ["train.epochs=3", "train.max_steps_per_epoch=1", "optim.weight_decay=0.05",
                              "optim.wd_zero_epoch=1", "optim.schedule.name=constant"])
    full = fit(cfg, tmp_path / "full")
    resumed = crash_then_resume(cfg, tmp_path / "resumed", monkeypatch, 2)
    assert [r["train_loss"] for r in resumed["epochs"]] == [r["train_loss"] for r in full["epochs"]]
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert {g["weight_decay"] for g in b["optimizer"]["param_groups"]} == {0.0}
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["status"] == "completed"


# ------------------------------------------------------------------------------------------- fp16, ColorJitter
def test_authors_fp16_has_no_loss_scaling():
    loss = torch.tensor(3.0)
    authors = build_precision(compose_cfg(["precision=fp16", "recipe=authors"]).precision, CPU)
    default = build_precision(compose_cfg(["precision=fp16"]).precision, CPU)
    assert authors.scaler.scale(loss).item() == 3.0 and default.scaler.scale(loss).item() == 3.0 * 65536
    assert authors.describe()["master_weights"] is False and authors.describe()["loss_scaling"] != \
        default.describe()["loss_scaling"]


def imagenet_batches(root, recipe: str, seed: int = 0, epoch: int = 0):
    """(first training batch, first eval batch) of the tiny ImageNet tree under ``recipe``."""
    cfg = compose_cfg(["dataset=imagenet", f"dataset.root={root}", "dataset.image_size=16", "dataset.num_workers=0",
                       f"recipe={recipe}"])
    data = build_data(cfg.dataset, 8, 8, CPU, seed)
    data.train.set_epoch(epoch)
    return next(iter(data.train))[0], next(iter(data.test))[0]


def test_color_jitter_changes_imagenet_training_pixels_deterministically(tmp_path):
    write_imagenet(tmp_path / "im", n_train=4, n_val=2)
    plain, plain_eval = imagenet_batches(tmp_path / "im", "default")
    jittered, jittered_eval = imagenet_batches(tmp_path / "im", "authors")
    again, _ = imagenet_batches(tmp_path / "im", "authors")
    other_epoch, _ = imagenet_batches(tmp_path / "im", "authors", epoch=1)
    assert not torch.equal(plain, jittered) and torch.equal(jittered, again)
    assert not torch.equal(jittered, other_epoch)
    assert torch.equal(plain_eval, jittered_eval)  # evaluation has no jitter


def test_color_jitter_follows_the_same_crop_and_flip(tmp_path):
    """The jittered image is the unjittered crop + flip passed through color_jitter with the image's own stream."""
    write_imagenet(tmp_path / "im", n_train=2, n_val=1)
    samples = sorted((str(p), 0) for p in (tmp_path / "im" / "train").rglob("*.JPEG"))
    seed, epoch, size = 3, 1, 16
    plain = FolderImages(samples, size, True, seed, True, 0.08, 0.0)
    jit = FolderImages(samples, size, True, seed, True, 0.08, 0.4)
    for index in range(len(samples)):
        rng = random.Random(f"{seed}/{epoch}/{index}")
        img = Image.open(samples[index][0]).convert("RGB")
        random_resized_crop_params(img.width, img.height, rng, (0.08, 1.0))
        rng.random()  # the flip's draw
        crop = TF.to_pil_image(plain[(index, epoch)][0])
        expected = TF.pil_to_tensor(color_jitter(crop, 0.4, rng))
        assert torch.equal(jit[(index, epoch)][0], expected)


def test_color_jitter_brightness_range_on_gray():
    """On a uniform gray image contrast and saturation are the identity, so the output is gray · b with the
    brightness factor b ~ U(0.6, 1.4) (torchvision's ColorJitter(0.4, 0.4, 0.4))."""
    gray = Image.new("RGB", (4, 4), (100, 100, 100))
    ratios = []
    for i in range(300):
        out = TF.pil_to_tensor(color_jitter(gray, 0.4, random.Random(i))).double()
        assert (out == out[0, 0, 0]).all()  # still uniform and gray
        ratios.append(out[0, 0, 0].item() / 100)
    assert 0.59 <= min(ratios) < 0.65 and 1.35 < max(ratios) <= 1.41
