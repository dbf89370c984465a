"""Building blocks of preemption (issue 12, wired into the loop in part 2): signals are recorded, not fatal;
the ImageNet loader restarts an epoch at a batch index without decoding the batches before it."""
import os
import signal

import pytest
import torch

from normrepro.data import build_data
from normrepro.preemption import Preempted, PreemptionGuard
from tests.helpers.config import dataset_cfg
from tests.helpers.data import write_imagenet


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_guard_records_the_signal_and_restores_the_handlers(signum):
    before = signal.getsignal(signum)
    with PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), signum)  # without the guard SIGTERM/SIGUSR2 would end this process
        assert guard.requested and guard.should_stop() and guard.signum == signum
    assert signal.getsignal(signum) is before


def test_guard_forwards_to_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert seen == []  # recorded only: the loop saves first
        assert guard.forward() and seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert "SIGTERM after step 7" in str(Preempted(signal.SIGTERM, 7))


def test_imagenet_epoch_restarts_at_a_batch(tmp_path):
    write_imagenet(tmp_path, n_train=6, n_val=1, size=(20, 24))
    b = build_data(dataset_cfg("imagenet", root=str(tmp_path), image_size=8, num_workers=0), 3, 2,
                   torch.device("cpu"), seed=5)
    b.train.set_epoch(2)
    full = list(b.train)
    b.train.set_epoch(2, start_batch=2)
    rest = list(b.train)
    assert len(full) == 4 and len(rest) == 2 and len(b.train) == 4
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(full[2:], rest))
