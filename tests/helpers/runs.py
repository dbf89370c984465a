"""Fake run dirs with the schema the trainer writes (docs/ARCHITECTURE.md), for the report and notebook tests."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

NORMS = ("l2", "l1", "linf")
SEEDS = (0, 1, 2)
EPOCHS = 4
DEVICE = "cpu x86_64 (2 threads, 2 cores)"


def final_acc(norm: str, seed: int) -> float:
    """Deterministic fake final accuracy of (norm, seed)."""
    base = {"l2": 90.0, "l1": 89.5, "linf": 85.0, "topk": 87.0}[norm]
    return base + 0.37 * seed - 0.11 * seed * seed


def write_run(run_dir: Path, norm: str, seed: int, *, status: str = "completed", model: str = "resnet18",
              dataset: str = "digits", epochs: int = EPOCHS, metrics: bool = True, extra_overrides=(),
              precision: str = "fp32") -> Path:
    """A schema-correct run dir (docs/ARCHITECTURE.md): .hydra/{overrides,config}.yaml, config.yaml, metrics.json."""
    overrides = [f"norm={norm}", f"model={model}", f"seed={seed}", "train.progress=false", *extra_overrides]
    cfg = {"seed": seed, "device": "cpu", "model": {"name": model}, "norm": {"name": norm, "eps": 1e-5},
           "dataset": {"name": dataset, "image_size": 8, "num_train": 1500}, "precision": {"name": precision},
           "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4}, "train": {"epochs": epochs, "batch_size": 128,
                                                                               "progress": False},
           "logger": {"name": "none"}}
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if not metrics:
        return run_dir
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    acc = final_acc(norm, seed)
    done = epochs if status == "completed" else max(1, epochs // 2)
    rows = []
    for e in range(1, done + 1):
        test_acc = acc - 5.0 * (epochs - e) if status != "diverged" else 10.0
        rows.append({"epoch": e, "lr": 0.1, "train_loss": 1.0 / e if status != "diverged" else float("nan"),
                     "train_acc": test_acc + 1, "test_loss": 0.5, "test_acc": test_acc, "seconds": 1.5})
    accs = [r["test_acc"] for r in rows]
    m = {"status": status, "epochs": rows,
         "final": {"test_acc": rows[-1]["test_acc"], "best_test_acc": max(accs) + 0.1 * seed, "epochs_done": done,
                   "wall_seconds": 1.5 * done, "images_per_second": 1000.0},
         "env": {"git_commit": "abc1234", "torch": "2.4.0", "device": DEVICE, "precision": precision},
         "seed": seed, "overrides": overrides}
    # json.dumps writes NaN for a diverged loss, as the trainer's writer does
    (run_dir / "metrics.json").write_text(json.dumps(m))
    return run_dir


def make_sweep(root: Path) -> Path:
    """multirun/<date>/<time>/<num>: 3 norms x 3 seeds completed, 1 crash without metrics, 1 failed, 1 diverged."""
    sweep = root / "multirun" / "2024-01-01" / "12-00-00"
    num = 0
    for norm in NORMS:
        for seed in SEEDS:
            write_run(sweep / str(num), norm, seed)
            num += 1
    write_run(sweep / str(num), "topk", 0, metrics=False)                 # crashed before writing metrics
    write_run(sweep / str(num + 1), "topk", 1, status="failed")
    write_run(sweep / str(num + 2), "l2", 0, status="diverged", precision="fp16", extra_overrides=("precision=fp16",))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep
