"""Synchronized norms (train.sync_norms=true): 2 gloo ranks on the CPU, each with half the batch, under
DistributedDataParallel, must follow one process trained on the whole batch without sync."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from normrepro.errors import ConfigError
from normrepro.norms import build_norm
from normrepro.norms.sync import convert_sync_norms, is_sync_norm

# (label, norm name, options)
CASES = [
    ("l2", "l2", {}),
    ("l2lp", "l2", {"impl": "lp"}),
    ("l1", "l1", {"track_max_dev": True}),
    ("linf", "linf", {}),
    ("topk", "topk", {}),          # k=10 > the 8 values per rank of the (N, C) layer
    ("mean", "mean", {"track_max_dev": True}),
    ("l2_mom_none", "l2", {"momentum": None, "track_max_dev": True}),
    ("ghost", "topk_ghost", {"k": 4}),
    ("ghost_bug", "topk_ghost", {"ghost_bug": True}),
    ("topk_cl", "topk", {}),        # *_cl: channels_last input
    ("l1_cl", "l1", {}),
]
WORLD, BATCH, STEPS = 2, 16, 3


def _model(name, opts):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), build_norm(name, 4, **opts), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 6), build_norm(name, 6, **opts), nn.ReLU(), nn.Linear(6, 3),
    ).double()


def _data(step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 3, 6, 6, generator=g, dtype=torch.float64) * 2 + 0.5
    y = torch.randint(0, 3, (BATCH,), generator=g)
    return x, y


def _train(model, rank=None, channels_last=False):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    max_devs = []
    for step in range(STEPS):
        x, y = _data(step)
        if rank is not None:
            sl = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
            x, y = x[sl], y[sl]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        net = model.module if hasattr(model, "module") else model
        max_devs.append([None if getattr(m, "last_max_dev", None) is None else float(m.last_max_dev)
                         for m in (net[1], net[6])])
    return max_devs


def _state(model):
    net = model.module if hasattr(model, "module") else model
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for label, name, opts in CASES:
            model = _model(name, opts)
            params = [id(p) for p in model.parameters()]
            model = convert_sync_norms(model)
            assert all(is_sync_norm(model[i]) and "sync=True" in repr(model[i]) for i in (1, 6)), label
            assert [id(p) for p in model.parameters()] == params, label  # same parameters (in place)
            ddp = nn.parallel.DistributedDataParallel(model)
            max_devs = _train(ddp, rank, label.endswith("_cl"))
            results[label] = (_state(ddp), max_devs)
            ddp.eval()
            with torch.no_grad():  # eval: running statistics, no communication (rank 1 alone must not hang)
                if rank == 1:
                    model(_data(0)[0])
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sync_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sync")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("label,name,opts", CASES, ids=[c[0] for c in CASES])
def test_sync_matches_single_process(sync_results, label, name, opts):
    ref = _model(name, opts)
    ref_max_devs = _train(ref, None, label.endswith("_cl"))
    ref_state = _state(ref)
    for rank, res in enumerate(sync_results):
        state, max_devs = res[label]
        assert state.keys() == ref_state.keys()
        for key, want in ref_state.items():
            got = state[key]
            if want.is_floating_point():
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9, msg=f"{label} rank {rank} {key}")
            else:
                assert torch.equal(got, want), f"{label} rank {rank} {key}"
        if opts.get("track_max_dev"):
            torch.testing.assert_close(torch.tensor(max_devs), torch.tensor(ref_max_devs), rtol=1e-9, atol=0)
    # the parameters actually moved (the comparison is not trivially between initial states)
    assert not torch.allclose(ref_state["0.weight"], _state(_model(name, opts))["0.weight"])


def test_convert_without_process_group_raises():
    assert not dist.is_initialized()
    with pytest.raises(ConfigError, match="process group"):
        convert_sync_norms(_model("l1", {}))
