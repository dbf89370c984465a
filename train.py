"""Train one model: ``python train.py norm=l1 precision=fp16``; sweep: ``python train.py -m norm=l2,l1 seed=0,1,2``.

A thin wrapper of ``normrepro-train`` (:func:`normrepro.cli.train_entry`; configs in normrepro/conf). Exit codes:
0 completed, 2 bad input (one ``error: ...`` line), 3 diverged, 4 preempted
(rerun to resume), 1 a bug (traceback); see normrepro/cli.py.
"""
from normrepro.cli import train_entry

if __name__ == "__main__":
    train_entry()
