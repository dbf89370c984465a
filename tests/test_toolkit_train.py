"""Issue 13, trainer side: capped evaluation, the validation split, best.ckpt, the EMA of the weights, resumed."""
import json

import pytest
import torch

from normrepro import cli
from normrepro.best import best_of, is_new_best
from normrepro.checkpoint import load_checkpoint
from normrepro.data import build_data
from normrepro.data.split import stratified_split
from normrepro.ema import WeightEMA
from normrepro.precision import build_precision
from normrepro.trainer import evaluate, fit
from tests.helpers.config import TINY, compose_cfg, dataset_cfg
from tests.helpers.resume import crash_then_resume

CPU = torch.device("cpu")


class CountingLoader:
    """A loader of ``n`` random batches that counts the batches drawn."""

    def __init__(self, n, batch=4):
        self.batches = [(torch.randn(batch, 3), torch.randint(0, 2, (batch,))) for _ in range(n)]
        self.drawn = 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.drawn += 1
            yield b


def test_max_eval_batches_caps_evaluation():
    model, prec = torch.nn.Linear(3, 2), build_precision(compose_cfg([]).precision, CPU)
    full, capped = CountingLoader(5), CountingLoader(5)
    loss_all, _ = evaluate(model, full, prec, torch.contiguous_format)
    loss_two, _ = evaluate(model, capped, prec, torch.contiguous_format, max_batches=2)
    assert (full.drawn, capped.drawn) == (5, 2)
    two = CountingLoader(0)
    two.batches = capped.batches[:2]
    assert loss_two == pytest.approx(evaluate(model, two, prec, torch.contiguous_format)[0]) and loss_two != loss_all


def test_stratified_split_is_disjoint_stratified_and_fixed():
    labels = torch.arange(1000) % 7
    keep, held = stratified_split(labels, 0.2)
    assert set(keep.tolist()).isdisjoint(held.tolist()) and len(keep) + len(held) == 1000
    counts = torch.bincount(labels[held], minlength=7)
    assert all(abs(int(c) - 0.2 * int((labels == k).sum())) <= 1 for k, c in enumerate(counts))
    assert torch.equal(stratified_split(labels, 0.2)[1], held)  # same images every time
    assert not torch.equal(stratified_split(labels, 0.2, seed=1)[1], held)


def test_val_split_independent_of_the_run_seed_and_disjoint_from_train():
    cfg = dataset_cfg("digits", image_size=8)
    a = build_data(cfg, 64, 1000, CPU, seed=0, val_fraction=0.1)
    b = build_data(cfg, 64, 1000, CPU, seed=5, val_fraction=0.1)
    plain = build_data(cfg, 64, 1000, CPU, seed=0)
    assert a.num_val == b.num_val > 0 and a.num_train + a.num_val == plain.num_train
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.test.images, plain.test.images)
    train_rows = {tuple(r.tolist()) for r in a.train.images.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in a.val.images.flatten(1)[:50])


def test_val_columns_best_ckpt_and_cli_returns_val_acc(tmp_path, monkeypatch):
    over = TINY + ["train.epochs=3", "train.val_fraction=0.2", "optim.schedule.name=constant"]
    monkeypatch.setattr(cli, "run_dir_of", lambda cfg: tmp_path)
    returned = cli.main(compose_cfg(over))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert all({"val_loss", "val_acc"} <= set(r) for r in m["epochs"])
    assert returned == m["final"]["val_acc"] == m["epochs"][-1]["val_acc"] != m["final"]["test_acc"]
    assert m["final"]["best_metric"] == "val_acc" and m["data"]["num_val"] > 0
    accs = [r["val_acc"] for r in m["epochs"]]
    assert m["final"]["best_epoch"] == accs.index(max(accs)) + 1 and m["final"]["best_value"] == max(accs)
    best = load_checkpoint(tmp_path / "best.ckpt")
    assert best["epoch"] == m["final"]["best_epoch"] and best["history"][-1]["val_acc"] == max(accs)


def test_best_selection_rules():
    h = [{"epoch": 1, "test_acc": 50.0}, {"epoch": 2, "test_acc": 60.0}, {"epoch": 3, "test_acc": 60.0},
         {"epoch": 4, "test_acc": float("nan")}]
    assert best_of(h, "test_acc") == {"best_metric": "test_acc", "best_epoch": 2, "best_value": 60.0}
    assert [is_new_best(h[:i], "test_acc") for i in range(1, 5)] == [True, True, False, False]


def test_best_ckpt_by_test_acc_without_val_split(tmp_path):
    result = fit(compose_cfg(TINY + ["train.epochs=2"]), tmp_path)
    assert result["final"]["best_metric"] == "test_acc"
    assert load_checkpoint(tmp_path / "best.ckpt")["epoch"] == result["final"]["best_epoch"]


def test_weight_ema_update_rule_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, 0.9)
    w0 = model[0].weight.detach().clone()
    ema.update()  # first update copies
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(8, 2))  # changes the running statistics
    ema.update()
    assert torch.allclose(ema.module[0].weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # buffers copied from the raw model


def test_ema_columns_and_exact_resume(tmp_path, monkeypatch):
    over = TINY + ["train.epochs=2", "train.max_steps_per_epoch=3", "train.ema_decay=0.8"]
    cfg = compose_cfg(over)
    full = fit(cfg, tmp_path / "full")
    assert all({"ema_test_loss", "ema_test_acc"} <= set(r) for r in full["epochs"])
    resumed = crash_then_resume(cfg, tmp_path / "resumed", monkeypatch, 1)
    keys = ("train_loss", "test_acc", "ema_test_loss", "ema_test_acc")
    assert [[r[k] for k in keys] for r in resumed["epochs"]] == [[r[k] for k in keys] for r in full["epochs"]]
    a, b = (load_checkpoint(tmp_path / d / "last.ckpt")["ema"] for d in ("full", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["n_averaged"]) == 6
    raw = load_checkpoint(tmp_path / "full" / "last.ckpt")["model"]
    assert any(not torch.equal(raw[k], a[f"module.{k}"]) for k in raw if raw[k].is_floating_point())


def test_checkpoint_without_the_new_keys_still_resumes():
    from normrepro.resume_check import config_differences

    current = {"train": {"epochs": 2, "val_fraction": 0.0, "ema_decay": None, "overfit_batches": None}}
    assert config_differences({"train": {"epochs": 2}}, current) == []
    ema_on = {"train": {**current["train"], "ema_decay": 0.9}}
    assert config_differences({"train": {"epochs": 2}}, ema_on) == [("train.ema_decay", None, 0.9)]


def test_imagenet_val_split_is_a_stratified_subset_of_train(tmp_path):
    from tests.helpers.data import write_imagenet

    write_imagenet(tmp_path, n_train=5, n_val=2)
    cfg = dataset_cfg("imagenet", root=str(tmp_path), image_size=16, num_workers=0)
    b = build_data(cfg, 2, 4, CPU, 0, val_fraction=0.2)
    assert (b.num_train, b.num_val, b.num_test) == (8, 2, 4)
    held = {p for p, _ in b.val.loader.dataset.samples}
    assert held.isdisjoint(p for p, _ in b.train.loader.dataset.samples) and not b.val.loader.dataset.train
    assert sorted(label for _, label in b.val.loader.dataset.samples) == [0, 1]  # one image of each class
    assert held == {p for p, _ in build_data(cfg, 2, 4, CPU, 7, val_fraction=0.2).val.loader.dataset.samples}
