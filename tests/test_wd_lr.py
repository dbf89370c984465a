"""Weight decay as an LR schedule (paper §1.1-1.2): recorded norms, lr_correction, norm_schedule, references."""
import os
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
    return torch.load(run_dir / WEIGHT_NORMS_NAME, weights_only=True)


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


@pytest.mark.parametrize("correction", ["after_momentum", "before_momentum"])
def test_lr_correction_with_itself_as_reference_is_plain_sgd(tmp_path, correction):
    """One step per epoch and reference_epoch=start: the ratio is exactly 1 at every step."""
    plain = compose_cfg(ONE_STEP + ["optim.wd_policy=wd_off", "optim.weight_decay=5e-4"])
    fit(plain, tmp_path / "plain")
    corrected = compose_cfg(ONE_STEP + ["optim.wd_policy=wd_off", "optim.weight_decay=5e-4",
                                        "optim.mode=lr_correction", f"optim.reference={tmp_path / 'plain'}",
                                        "optim.reference_epoch=start", f"optim.correction={correction}"])
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
    """Boundary e+1 of a norm_schedule run = the reference's boundary e+1 (reference_epoch=end; e with start)
    times the schedule's multiplier m(e) = (base lr / lr(e))^0.5: here lr x0.1 from epoch 2, so m = 1, 1, sqrt(10)."""
    drop = ONE_STEP + ["optim.schedule.name=multistep", "optim.schedule.milestones=[2]"]
    fit(compose_cfg(drop + ["optim.wd_policy=wd_on", "optim.weight_decay=0.05"]), tmp_path / "ref")
    ref = _norms(tmp_path / "ref")["norms"]
    multiplier = [1.0, 1.0, 10 ** 0.5]
    for reference_epoch, offset in (("end", 1), ("start", 0)):
        run = tmp_path / f"ns_{reference_epoch}"
        fit(compose_cfg(drop + ["optim.wd_policy=wd_off", "optim.mode=norm_schedule",
                                f"optim.reference_epoch={reference_epoch}", f"optim.reference={tmp_path / 'ref'}"]),
            run)
        ns = _norms(run)["norms"]
        for e in range(3):
            for layer in ref[0]:
                torch.testing.assert_close(ns[e + 1][layer], ref[e + offset][layer] * multiplier[e],
                                           rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ns[3][layer], ref[3][layer], rtol=1e-3)  # the multiplier is applied


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
    with pytest.raises(ConfigError, match="refusing optim.reference file .* not loaded"):
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
    # reference_epoch=end reads boundary E in epoch E: a 1-epoch reference (2 boundaries) serves 1 epoch, not 2
    fit(compose_cfg(ONE_STEP + ["train.epochs=1", "optim.mode=lr_correction", f"optim.reference={tmp_path / 'ref'}"]),
        tmp_path / "one")
    with pytest.raises(ConfigError, match="recorded 2 epoch boundaries, this run needs 3"):
        fit(compose_cfg(ONE_STEP + ["train.epochs=2", "optim.mode=lr_correction",
                                    f"optim.reference={tmp_path / 'ref'}"]), tmp_path / "two")
    fit(compose_cfg(ONE_STEP + ["train.epochs=2", "optim.mode=lr_correction", "optim.reference_epoch=start",
                                f"optim.reference={tmp_path / 'ref'}"]), tmp_path / "two_start")


@pytest.mark.parametrize("override,match", [
    ("optim.mode=sideways", r"unknown optim.mode 'sideways'; choose one of: lr_correction, norm_schedule, standard"),
    ("optim.correction=sideways", r"unknown optim.correction 'sideways'; choose one of: after_momentum, "
                                  r"before_momentum"),
    ("optim.reference_epoch=middle", r"unknown optim.reference_epoch 'middle'; choose one of: end, start"),
])
def test_unknown_choices_are_named(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        fit(compose_cfg(ONE_STEP + [override]), tmp_path)  # checked whatever optim.mode is
    assert not (tmp_path / "metrics.json").exists()


def test_cli_bad_correction_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", *ONE_STEP, "optim.correction=sideways",
                           f"hydra.run.dir={tmp_path}/run"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: optim.correction must be one of: after_momentum, before_momentum, "
                                   "got 'sideways'")


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
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| L2 · ")}
    papers = {"WD on": "90.50", "WD off": "89.22", "LR correction": "90.44", "norm schedule": "90.28"}
    for label, paper in papers.items():  # each arm's row (one seed) found its paper cell
        row = rows[f"| L2 · {label}"]
        assert f"wd_arm={label.lower().replace(' ', '_')}`" in row and row.split(" | ")[1] == "1", row
        assert f"| {paper} ±0.05" in row, row
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


# --- the authors' update, checked against an independent implementation written from its description ----------
# docs/paper.md §6 (their SGDWDMimic / norm schedule), restated here without our optimizer:
#   during 0-based epoch e the reference norm is t = ref[e + 1] (reference_epoch=end: the end of epoch e; our
#   recorder's entry 0 is the initialization) or t = ref[e] (start); per output channel c, at every step,
#   ratio_c = ||w_c||^2 / t_c^2 with w the weight before the update;
#   after_momentum:  buf = g (first step) else mu*buf + g;  w -= lr * ratio * (g + mu*buf if nesterov else buf)
#   before_momentum: g' = ratio * g, then plain SGD with momentum on g'
#   norm_schedule:   plain SGD at the base lr, then w_c *= m * t_c / ||w_c||; buf untouched
# Every other parameter: plain SGD with momentum and its weight decay (d = g + wd*w) at the scheduled lr.

EPOCHS, STEPS, LR, MU, WD_FC = 3, 3, 0.1, 0.9, 5e-4
LR_FACTOR = [1.0, 1.0, 0.1]  # the schedule per epoch: x0.1 from epoch 2


def _problem(seed=0):
    """Conv weight W (4, 3, 3, 3) -> batch norm -> fixed pooling -> readout R (trained, decayed); float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) * 0.5
    r = torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.3
    batches = [(torch.randn(6, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (6,), generator=g))
               for _ in range(EPOCHS * STEPS)]
    ref = [torch.rand(4, generator=g, dtype=torch.float64) * 1.5 + 0.5 for _ in range(EPOCHS + 1)]
    return w, r, batches, ref


def _loss(w, r, x, y):
    h = torch.nn.functional.conv2d(x, w)
    h = torch.nn.functional.batch_norm(h, None, None, training=True, eps=1e-12)
    return torch.nn.functional.cross_entropy(torch.relu(h).mean((2, 3)) @ r.T, y)


def _independent(mode, correction, reference_epoch, nesterov=False, interpolation="none"):
    """Weights and conv momentum buffer after every step, computed from the description above."""
    w, r, batches, ref = _problem()
    buf_w = buf_r = None
    seen = []
    for e in range(EPOCHS):
        lr = LR * LR_FACTOR[e]
        k = e + 1 if reference_epoch == "end" else e
        for i in range(STEPS):
            x, y = batches[e * STEPS + i]
            w_, r_ = w.clone().requires_grad_(True), r.clone().requires_grad_(True)
            g_w, g_r = torch.autograd.grad(_loss(w_, r_, x, y), (w_, r_))
            t = ref[k] if interpolation == "none" or k + 1 >= len(ref) else ref[k] + (ref[k + 1] - ref[k]) * i / STEPS
            ratio = (w.flatten(1).norm(dim=1) ** 2 / t ** 2).view(-1, 1, 1, 1)
            if mode == "lr_correction" and correction == "before_momentum":
                g_w = ratio * g_w
            buf_w = g_w.clone() if buf_w is None else MU * buf_w + g_w
            step_w = g_w + MU * buf_w if nesterov else buf_w
            if mode == "lr_correction" and correction == "after_momentum":
                w = w - lr * ratio * step_w
            elif mode == "lr_correction":
                w = w - lr * step_w
            else:  # norm_schedule: the base lr, then every channel back to m * t
                w = w - LR * step_w
                w = w * (LR_FACTOR[e] ** -0.5 * t / w.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
            d_r = g_r + WD_FC * r
            buf_r = d_r.clone() if buf_r is None else MU * buf_r + d_r
            r = r - lr * (d_r + MU * buf_r if nesterov else buf_r)
            seen.append((w.clone(), r.clone(), buf_w.clone()))
    return seen


def _ours(mode, correction, reference_epoch, nesterov=False, interpolation="none"):
    w0, r0, batches, ref = _problem()
    w, r = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(r0.clone())
    opt = ScaleInvariantSGD([{"params": [w], "names": ["conv.weight"], "scale_invariant": True, "weight_decay": 0.0,
                              "fixed_lr": mode == "norm_schedule"},
                             {"params": [r], "names": ["fc.weight"], "weight_decay": WD_FC}],
                            mode=mode, correction=correction, reference_epoch=reference_epoch,
                            reference_interpolation=interpolation, lr=LR, momentum=MU, nesterov=nesterov)
    reference = [{"conv": t} for t in ref]
    seen = []
    for e in range(EPOCHS):
        for group in opt.param_groups:
            group["lr"] = LR if group.get("fixed_lr") else LR * LR_FACTOR[e]
        opt.begin_epoch(e, reference, LR_FACTOR[e] ** -0.5, STEPS)
        for i in range(STEPS):
            x, y = batches[e * STEPS + i]
            opt.zero_grad()
            _loss(w, r, x, y).backward()
            grad = w.grad.clone()
            opt.step()
            if correction == "after_momentum":  # the gradient stays as backward wrote it (before_momentum scales it)
                assert torch.equal(w.grad, grad)
            seen.append((w.detach().clone(), r.detach().clone(), opt.state[w]["momentum_buffer"].clone()))
    return seen


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs) == EPOCHS * STEPS
    for step, ((w, r, buf), (w_ref, r_ref, buf_ref)) in enumerate(zip(ours, theirs)):
        for name, a, b in (("w", w, w_ref), ("r", r, r_ref), ("momentum buffer", buf, buf_ref)):
            err = float((a - b).abs().max())
            assert err < 1e-10, f"step {step}: {name} differs by {err:.3g}"


@pytest.mark.parametrize("correction", ["after_momentum", "before_momentum"])
@pytest.mark.parametrize("reference_epoch", ["end", "start"])
def test_lr_correction_matches_the_authors_update(correction, reference_epoch):
    _assert_same(_ours("lr_correction", correction, reference_epoch),
                 _independent("lr_correction", correction, reference_epoch))


def test_lr_correction_with_nesterov_scales_the_whole_step():
    """Their SGDWDMimic with Nesterov: w -= lr * ratio * (g + mu * buf), the buffer holding the plain gradient."""
    _assert_same(_ours("lr_correction", "after_momentum", "end", nesterov=True),
                 _independent("lr_correction", "after_momentum", "end", nesterov=True))


@pytest.mark.parametrize("reference_epoch,interpolation", [("end", "none"), ("start", "none"), ("end", "linear"),
                                                           ("start", "linear")])
def test_norm_schedule_matches_the_authors_update(reference_epoch, interpolation):
    _assert_same(_ours("norm_schedule", "after_momentum", reference_epoch, interpolation=interpolation),
                 _independent("norm_schedule", "after_momentum", reference_epoch, interpolation=interpolation))


def test_the_variants_take_different_steps():
    """Control for the tests above: each switch changes the trajectory (the comparisons could fail)."""
    final = {args: _ours("lr_correction", *args)[-1][0] for args in
             [("after_momentum", "end"), ("before_momentum", "end"), ("after_momentum", "start")]}
    base = final[("after_momentum", "end")]
    for args, w in final.items():
        if args != ("after_momentum", "end"):
            assert float((w - base).abs().max()) > 1e-6, args


def test_reference_entries_needed():
    from normrepro.optim.wd_lr import reference_entries_needed, reference_index

    assert [reference_index(e, "end") for e in range(3)] == [1, 2, 3]
    assert [reference_index(e, "start") for e in range(3)] == [0, 1, 2]
    assert reference_entries_needed(3, "end") == 4 and reference_entries_needed(3, "start") == 3
    with pytest.raises(ConfigError, match="unknown optim.reference_epoch 'middle'"):
        reference_index(0, "middle")
