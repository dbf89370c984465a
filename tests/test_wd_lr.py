"""Weight decay as an LR schedule (paper §1.1-1.2): recorded norms, lr_correction, norm_schedule, references."""
import subprocess
import sys

import pytest
import torch

from normrepro.channel_norms import WEIGHT_NORMS_NAME
from normrepro.errors import ConfigError
from normrepro.models import build_model, scale_invariant_layers
from normrepro.norms import norm_factory
from normrepro.optim.wd_lr import ScaleInvariantSGD
from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg

ONE_STEP = TINY + ["train.max_steps_per_epoch=1", "train.epochs=3", "optim.schedule.name=constant"]


def _norms(run_dir):
    return torch.load(run_dir / WEIGHT_NORMS_NAME, weights_only=False)


def _params(run_dir):
    return torch.load(run_dir / "last.ckpt", weights_only=False)["model"]


@pytest.mark.parametrize("norm", ["l2", "l1", "topk"])
def test_recorded_layers_are_scale_invariant(norm):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, norm_factory(norm, eps=1e-12), in_channels=3, width=4).double().train()
    layers = scale_invariant_layers(model, (2, 3, 8, 8))
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert [n for n, _ in layers] == convs  # every conv feeds a norm; the classifier feeds none
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    ref = model(x)
    with torch.no_grad():
        for _, m in layers:  # scale every output channel by its own c > 0
            m.weight.mul_(torch.rand(m.weight.shape[0], 1, 1, 1, dtype=torch.float64) * 5 + 0.2)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_norms_recorded_every_epoch_and_in_metrics(tmp_path):
    out = fit(compose_cfg(ONE_STEP), tmp_path)
    rec = _norms(tmp_path)
    assert len(rec["norms"]) == 4 and set(rec["layers"]) == set(rec["norms"][0])
    row = out["epochs"][-1]
    layer = next(iter(rec["layers"]))
    w = float(rec["norms"][3][layer].pow(2).sum()) ** 0.5
    assert row["weight_norm"][layer] == pytest.approx(w)
    assert row["eff_lr"][layer] == pytest.approx(row["lr"] * rec["layers"][layer] / w ** 2)


def test_without_weight_decay_norms_never_shrink(tmp_path):
    fit(compose_cfg(ONE_STEP + ["optim.wd_policy=none", "optim.momentum=0", "train.epochs=4", "optim.lr=0.5"]),
        tmp_path)
    norms = _norms(tmp_path)["norms"]
    grew = 0
    for before, after in zip(norms, norms[1:]):
        for layer in before:
            assert bool((after[layer] >= before[layer] * (1 - 1e-5)).all()), layer
            grew += int((after[layer] > before[layer] * (1 + 1e-4)).sum())
    assert grew > 0


def test_with_weight_decay_norms_shrink(tmp_path):
    """Control for the test above: the same run with strong WD on everything does shrink them."""
    fit(compose_cfg(ONE_STEP + ["optim.wd_policy=wd_on", "optim.weight_decay=0.5", "optim.momentum=0",
                                "optim.lr=0.5"]), tmp_path)
    norms = _norms(tmp_path)["norms"]
    assert sum(float(n.sum()) for n in norms[-1].values()) < sum(float(n.sum()) for n in norms[0].values())


def test_lr_correction_with_itself_as_reference_is_plain_sgd(tmp_path):
    plain = compose_cfg(ONE_STEP + ["optim.wd_policy=wd_off", "optim.weight_decay=5e-4"])
    fit(plain, tmp_path / "plain")
    corrected = compose_cfg(ONE_STEP + ["optim.wd_policy=wd_off", "optim.weight_decay=5e-4",
                                        "optim.mode=lr_correction", f"optim.reference={tmp_path / 'plain'}"])
    fit(corrected, tmp_path / "corrected")
    a, b = _params(tmp_path / "plain"), _params(tmp_path / "corrected")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_lr_correction_follows_a_decayed_reference(tmp_path):
    """With a wd_on reference, the corrected run's steps differ from plain SGD's (the correction is active)."""
    fit(compose_cfg(ONE_STEP + ["optim.wd_policy=wd_on", "optim.weight_decay=0.05"]), tmp_path / "ref")
    fit(compose_cfg(ONE_STEP + ["optim.wd_policy=wd_off"]), tmp_path / "plain")
    fit(compose_cfg(ONE_STEP + ["optim.wd_policy=wd_off", "optim.mode=lr_correction",
                                f"optim.reference={tmp_path / 'ref'}"]), tmp_path / "corrected")
    a, b = _params(tmp_path / "plain"), _params(tmp_path / "corrected")
    assert any(not torch.allclose(a[k], b[k]) for k in a if k.endswith("conv1.weight"))


def test_norm_schedule_rescales_channels_to_the_target():
    conv = torch.nn.Conv2d(2, 3, 3)
    opt = ScaleInvariantSGD([{"params": [conv.weight], "names": ["conv.weight"], "scale_invariant": True},
                             {"params": [conv.bias], "names": ["conv.bias"]}], mode="norm_schedule", lr=0.1,
                            momentum=0.9)
    target = torch.tensor([0.5, 1.0, 2.0])
    opt.set_targets({"conv": target}, multiplier=10 ** 0.5)
    for _ in range(3):
        conv(torch.randn(4, 2, 5, 5)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(conv.weight.detach().flatten(1).norm(dim=1), target * 10 ** 0.5)


def test_norm_schedule_run_keeps_reference_norms(tmp_path):
    fit(compose_cfg(ONE_STEP + ["optim.wd_policy=wd_on", "optim.weight_decay=0.05"]), tmp_path / "ref")
    fit(compose_cfg(ONE_STEP + ["optim.wd_policy=wd_off", "optim.mode=norm_schedule",
                                f"optim.reference={tmp_path / 'ref'}"]), tmp_path / "ns")
    ref, ns = _norms(tmp_path / "ref")["norms"], _norms(tmp_path / "ns")["norms"]
    for layer in ref[0]:  # after epoch e's steps the norms equal the reference's at the start of epoch e
        torch.testing.assert_close(ns[3][layer], ref[2][layer], rtol=1e-4, atol=1e-6)


def test_missing_reference_is_a_clear_error(tmp_path):
    cfg = compose_cfg(ONE_STEP + ["optim.mode=lr_correction", f"optim.reference={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="no weight_norms.pt there"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(ConfigError, match="needs optim.reference"):
        fit(compose_cfg(ONE_STEP + ["optim.mode=norm_schedule"]), tmp_path / "run2")


class _Payload:
    """An arbitrary pickled object: unpickling it would run its ``__setstate__``."""
    unpickled = False

    def __setstate__(self, state):
        type(self).unpickled = True


def test_reference_file_is_not_unpickled(tmp_path):
    (tmp_path / "ref").mkdir()
    torch.save({"layers": {}, "norms": [], "payload": _Payload()}, tmp_path / "ref" / WEIGHT_NORMS_NAME)
    cfg = compose_cfg(ONE_STEP + ["optim.mode=lr_correction", f"optim.reference={tmp_path / 'ref'}"])
    with pytest.raises(ConfigError, match="optim.reference: cannot read"):
        fit(cfg, tmp_path / "run")
    assert not _Payload.unpickled


def test_reference_with_other_architecture_is_a_clear_error(tmp_path):
    fit(compose_cfg(ONE_STEP + ["train.epochs=1"]), tmp_path / "ref")
    cfg = compose_cfg(ONE_STEP + ["model.width=8", "optim.mode=lr_correction", f"optim.reference={tmp_path / 'ref'}"])
    with pytest.raises(ConfigError, match="another architecture"):
        fit(cfg, tmp_path / "run")
    short = compose_cfg(ONE_STEP + ["train.epochs=5", "optim.mode=lr_correction",
                                    f"optim.reference={tmp_path / 'ref'}"])
    with pytest.raises(ConfigError, match="recorded 2 epoch boundaries"):
        fit(short, tmp_path / "run")


def test_unknown_mode_names_choices(tmp_path):
    with pytest.raises(ConfigError, match="'sideways'.*lr_correction"):
        fit(compose_cfg(ONE_STEP + ["optim.mode=sideways"]), tmp_path)


def test_run_wd_arms_runs_the_four_arms_in_order(tmp_path):
    """scripts/run_wd_arms.py: the reference first, then the three arms reading it; a table and two plots."""
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "scripts/run_wd_arms.py", "--experiment", "wd_lr_digits_vgg11",
                           "--seeds", "0", "--out", str(out), "--", "train.epochs=2", "train.max_steps_per_epoch=1",
                           "dataset.image_size=8", "model.width_mult=0.125", "train.num_threads=1",
                           f"experiment.root={tmp_path / 'runs'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arm in ("wd_on", "wd_off", "lr_correction", "norm_schedule"):
        assert (tmp_path / "runs" / arm / "seed0" / "metrics.json").is_file(), arm
    table = (tmp_path / "report.md").read_text()
    assert "wd_arm=norm_schedule" in table and "90.44" in table  # paper's lr_correction value beside
    for arm in ("wd_on", "wd_off", "lr_correction", "norm_schedule"):  # each arm's row found its paper cell
        assert f"wd_arm={arm}` | 1 |" in table and f"wd_lr_vgg11_cifar10: arm={arm} |" in table, arm
    assert (tmp_path / "report_acc.png").stat().st_size > 0 and (tmp_path / "report_weight_norm.png").is_file()


def test_run_wd_arms_names_a_missing_experiment():
    """--prefix is the old spelling of --experiment; an unknown one stops before any run."""
    proc = subprocess.run([sys.executable, "scripts/run_wd_arms.py", "--prefix", "wd_lr_nowhere"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "error: no experiment wd_lr_nowhere in normrepro/conf/experiment" in proc.stderr


def test_reference_interpolation_moves_the_target_within_the_epoch():
    conv = torch.nn.Conv2d(2, 3, 3)
    opt = ScaleInvariantSGD([{"params": [conv.weight], "names": ["conv.weight"], "scale_invariant": True}],
                            mode="norm_schedule", lr=0.1)
    start, end = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([3.0, 5.0, 1.0])
    opt.set_targets({"conv": start}, 1.0, end={"conv": end}, steps=4)
    seen = []
    for _ in range(4):
        conv(torch.randn(4, 2, 5, 5)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        seen.append(conv.weight.detach().flatten(1).norm(dim=1))
    for i, norms in enumerate(seen):  # step i rescales to the target at fraction i/4
        torch.testing.assert_close(norms, start + (end - start) * i / 4)


def test_bad_reference_interpolation_names_choices(tmp_path):
    fit(compose_cfg(ONE_STEP + ["train.epochs=1"]), tmp_path / "ref")
    cfg = compose_cfg(ONE_STEP + ["train.epochs=1", "optim.mode=lr_correction", f"optim.reference={tmp_path / 'ref'}",
                                  "optim.reference_interpolation=cubic"])
    with pytest.raises(ConfigError, match="'cubic'.*linear"):
        fit(cfg, tmp_path / "run")
