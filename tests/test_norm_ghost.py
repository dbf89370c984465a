"""The ghost Top-k norm (issue 11, ``norm=topk_ghost``): the authors' "Top10" layer, correct and ``ghost_bug``
variants, against an independent implementation of its formula written here (fp64, several steps)."""
from __future__ import annotations

import math

import pytest
import torch

from normrepro.errors import ConfigError
from normrepro.norms import GhostTopkBatchNorm, backend, build_norm

BACKENDS = ["native", "torch"]


def c_n(n: int) -> float:
    """C(n) = (1 + sqrt(pi ln 4)) / (2 sqrt(2 ln n)), docs/paper.md §1.3 (written out again, on purpose)."""
    return (1.0 + math.sqrt(math.pi * math.log(4.0))) / (2.0 * math.sqrt(2.0 * math.log(n)))


def ghost_reference(x, w, b, h, k, beta, eps, bug):
    """(y, next history, s - eps, batch mean): autograd differentiates y through T, not through the history."""
    c = x.shape[1]
    dims = (0, 2, 3)
    n = x.numel() // c
    mu = x.mean(dims, keepdim=True)
    d = x - mu
    t = d.abs().transpose(0, 1).reshape(c, -1).topk(k, dim=1).values.mean(1)
    h = h.detach()
    if bug:  # the authors' code: the stored history is already multiplied by C(n)
        h_next = c_n(n) * (beta * h + (1 - beta) * t)
        s = h_next + eps
    else:
        h_next = beta * h + (1 - beta) * t
        s = c_n(n) * h_next + eps
    y = d / s.view(1, -1, 1, 1) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    return y, h_next.detach(), (s - eps).detach(), mu.flatten().detach()


def batch(step, channels_last=False):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(6, 3, 5, 4, generator=g, dtype=torch.float64) * (1 + step) + step
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("bug", [False, True], ids=["correct", "ghost_bug"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_ghost_matches_independent_formula_over_steps(bug, channels_last, be):
    k, beta, eps, mom = 4, 0.75, 1e-5, 0.1
    with backend(be):
        m = build_norm("topk_ghost", 3, k=k, beta=beta, ghost_bug=bug).double()
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            m.weight.copy_(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
            m.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        h = torch.zeros(3, dtype=torch.float64)  # the authors' buffer starts at 0
        rm, rs = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        for step in range(4):
            x = batch(step, channels_last).requires_grad_(True)
            xr = x.detach().clone().requires_grad_(True)
            wr = m.weight.detach().clone().requires_grad_(True)
            br = m.bias.detach().clone().requires_grad_(True)
            y = m(x)
            yr, h, f, mu = ghost_reference(xr, wr, br, h, k, beta, eps, bug)
            dy = batch(10 + step)
            m.zero_grad()
            y.backward(dy)
            yr.backward(dy)
            torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(m.weight.grad, wr.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(m.bias.grad, br.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(m.topk_history, h, rtol=1e-12, atol=1e-12)
            rm, rs = (1 - mom) * rm + mom * mu, (1 - mom) * rs + mom * f
            torch.testing.assert_close(m.running_mean, rm, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m.running_scale, rs, rtol=1e-12, atol=1e-12)
        m.eval()
        before = m.topk_history.clone()
        x = batch(7, channels_last)
        want = (x - rm.view(1, -1, 1, 1)) / (rs.view(1, -1, 1, 1) + eps) * m.weight.view(1, -1, 1, 1) \
            + m.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(m(x), want)
        assert torch.equal(m.topk_history, before)  # eval leaves the history alone


def test_history_fixed_points():
    """Repeating one batch: h -> T (correct) and h -> C(n)(1 - beta)T / (1 - beta C(n)) (the authors' bug)."""
    x = batch(0)
    c = x.shape[1]
    n = x.numel() // c
    d = x - x.mean((0, 2, 3), keepdim=True)
    t = d.abs().transpose(0, 1).reshape(c, -1).topk(10, dim=1).values.mean(1)
    for bug, want in ((False, t), (True, c_n(n) * 0.25 * t / (1 - 0.75 * c_n(n)))):
        m = build_norm("topk_ghost", c, ghost_bug=bug).double()
        for _ in range(80):
            m(x)
        torch.testing.assert_close(m.topk_history, want, rtol=1e-9, atol=0)


def test_state_dict_options_and_bad_beta():
    m = build_norm("topk_ghost", 4)
    assert isinstance(m, GhostTopkBatchNorm) and m.k == 10 and m.beta == 0.75 and not m.ghost_bug
    assert set(m.state_dict()) == {"weight", "bias", "running_mean", "running_scale", "num_batches_tracked",
                                   "topk_history"}
    m(torch.randn(8, 4, 3, 3))
    fresh = build_norm("topk_ghost", 4)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.topk_history, m.topk_history) and fresh.topk_history.abs().sum() > 0
    assert "beta=0.75" in repr(m) and "ghost_bug=True" in repr(build_norm("topk_ghost", 4, ghost_bug=True))
    for bad in (0, 1, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ConfigError) as e:
            build_norm("topk_ghost", 4, beta=bad)
        assert str(e.value) == f"norm 'topk_ghost': beta must be a number in (0, 1), got {bad!r}"
    with pytest.raises(ConfigError, match="beta must be a number in"):
        GhostTopkBatchNorm(4, beta=2.0)
    with pytest.raises(ConfigError, match="ghost_bug must be true or false"):
        build_norm("topk_ghost", 4, ghost_bug="yes")
    with pytest.raises(ConfigError, match="has no option 'beta'"):
        build_norm("topk", 4, beta=0.5)


def test_ghost_float16_and_stats_dtype():
    x = batch(1).float()
    ref = build_norm("topk_ghost", 3)
    y_ref = ref(x)
    for sd in (None, torch.float32):
        m = build_norm("topk_ghost", 3, stats_dtype=sd).half()
        xh = x.half().requires_grad_(True)
        y = m(xh)
        y.float().sum().backward()
        assert y.dtype == torch.float16 and torch.isfinite(y).all() and torch.isfinite(xh.grad).all()
        torch.testing.assert_close(y.float(), y_ref, rtol=0.02, atol=0.02)
        torch.testing.assert_close(m.topk_history.float(), ref.topk_history, rtol=0.01, atol=0.01)
