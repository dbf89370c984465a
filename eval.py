"""Test a trained run: ``python eval.py ckpt=<run dir or .ckpt file> [dataset.<key>=value] [max_batches=N]``.

A thin wrapper of ``normrepro-eval`` (:mod:`normrepro.evaluation`): prints top-1/top-5/loss, writes eval.json
beside the checkpoint. Exit codes: 0 done, 2 bad input (one ``error: ...`` line), 1 a bug (traceback).
"""
from normrepro.evaluation import entry

if __name__ == "__main__":
    entry()
