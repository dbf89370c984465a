#!/usr/bin/env python
"""Run every registered small-scale experiment from a clean tree and regenerate every table, figure and the README's
results summary from the per-run records (``make reproduce``).

    python scripts/reproduce.py                         # every default experiment (normrepro/report/experiments.yaml)
    python scripts/reproduce.py --only lp_bn_mnist5k    # one (or a comma-separated list)
    python scripts/reproduce.py --list                  # the experiments, their outputs and measured cost
    python scripts/reproduce.py --no-run                # only regenerate from the committed results/runs/

Each experiment's runs (its ``experiment=`` config's pre-registered sweep) go to ``multirun/reproduce/<name>/``,
``--jobs`` at a time; then their records (metrics.json + resolved config.yaml) replace
``results/runs/<name>/``, and ``results/<name>.{md,csv}``, ``results/figures/<name>_*.png``,
``results/figures/<table>_vs_paper.png`` and ``results/summary.md`` (spliced into README.md between
``<!-- results:start -->`` and ``<!-- results:end -->``) are regenerated. A tree with uncommitted changes is
refused unless ``--allow-dirty`` (its runs are then stamped ``-dirty`` and every table says DIRTY TREE).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from normrepro.errors import ConfigError  # noqa: E402
from normrepro.report import records  # noqa: E402
from normrepro.report.registry import Experiment, PlannedRun, load_registry, plan, select  # noqa: E402
from normrepro.report.summary import describe  # noqa: E402
from normrepro.report.values import display_path  # noqa: E402

FINAL_STATUSES = ("completed", "diverged")
NOTEBOOK = REPO / "notebooks" / "reproduce_tables.ipynb"


def tree_changes() -> list[str]:
    """Tracked files with uncommitted changes (``["<not a git checkout>"]`` outside git)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ["<not a git checkout>"]
    return [line[3:] for line in out.splitlines() if line.strip()]


def _done(run_dir: Path) -> bool:
    import json

    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status") in FINAL_STATUSES
    except (OSError, ValueError):
        return False


def _command(exp: Experiment, run: PlannedRun, run_dir: Path, scratch: Path, threads: int) -> list[str]:
    extra = [o.replace("{runs}", str(scratch)) for o in exp.stages[run.stage].overrides]
    return [sys.executable, "train.py", f"experiment={exp.config}", *run.overrides, *extra, "train.progress=false",
            f"train.num_threads={threads}", f"hydra.run.dir='{run_dir}'"]


def _run_one(cmd: list[str], run_dir: Path) -> tuple[int, str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "reproduce.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    lines = (run_dir / "reproduce.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return proc.returncode, next((x for x in reversed(lines) if x.startswith("error: ")), lines[-1] if lines else "")


def run_experiment(exp: Experiment, scratch: Path, jobs: int, resume: bool, bar) -> list[str]:
    """Run ``exp``'s stages in order, ``jobs`` runs at a time; returns failure lines. ConfigError on a config error."""
    from tqdm.auto import tqdm

    runs = plan(exp)
    if not resume:
        shutil.rmtree(scratch, ignore_errors=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures = []
    for stage in sorted({r.stage for r in runs}):
        todo = [r for r in runs if r.stage == stage]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {}
            for r in todo:
                run_dir = scratch / r.name
                if resume and _done(run_dir):
                    bar.update(1)
                    continue
                futures[pool.submit(_run_one, _command(exp, r, run_dir, scratch, threads), run_dir)] = r
            for fut in as_completed(futures):
                r, (code, last) = futures[fut], fut.result()
                bar.update(1)
                if code == 2 and last.startswith("error: "):
                    raise ConfigError(f"experiment {exp.name}, run {r.name}: {last[len('error: '):]}")
                if code != 0:
                    failures.append(f"{exp.name}/{r.name}: exit {code}: {last}")
                    tqdm.write(f"run {exp.name}/{r.name} failed (exit {code}); log: "
                               f"{display_path(scratch / r.name / 'reproduce.log')}")
    return failures


def execute_notebook(path: Path = NOTEBOOK) -> str:
    """Run the notebook in place on the committed records, keeping its outputs (without execution timestamps)."""
    try:
        import nbclient
        import nbformat
    except ImportError:
        return "notebook not executed: pip install -e '.[test]' (nbclient, nbformat, ipykernel)"
    nb = nbformat.read(path, as_version=4)
    env = {k: os.environ.pop(k) for k in ("NORMREPRO_RUNS", "NORMREPRO_FIG_DIR") if k in os.environ}
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.update(env)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    from normrepro.utils.io import atomic_write_text

    atomic_write_text(path, nbformat.writes(nb) + "\n")
    return f"notebook: {display_path(path)} executed"


def list_experiments(registry: dict[str, Experiment]) -> None:
    """Print every registered experiment with its outputs and cost."""
    total = 0.0
    for e in registry.values():
        total += (e.minutes or 0.0) if e.default else 0.0
        cost = f"~{e.minutes:g} min" if e.minutes is not None else "cost not measured"
        print(f"{e.name} ({'default' if e.default else 'only with --only'}; {cost}): {e.claim}")
        print(f"    experiment={e.config}, {len(plan(e))} runs -> results/runs/{e.name}/, "
              + ", ".join(p.as_posix() for p in e.outputs()))
    print(f"default set: ~{total:g} min on 2 cores (--jobs 2)")


def build_parser() -> argparse.ArgumentParser:
    """The command line of scripts/reproduce.py."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated experiment names (default: every default experiment)")
    p.add_argument("--allow-dirty", action="store_true", help="run from a tree with uncommitted changes (tables are "
                                                              "marked DIRTY TREE)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cpu_count/jobs threads)")
    p.add_argument("--root", default=str(REPO), help="where results/ and multirun/reproduce/ go (default: the repo)")
    p.add_argument("--resume", action="store_true", help="keep finished runs of an interrupted reproduce")
    p.add_argument("--no-run", action="store_true", help="only regenerate the outputs from results/runs/")
    p.add_argument("--list", action="store_true", help="list the experiments, their outputs and cost, and exit")
    p.add_argument("--registry", help="experiment registry (default normrepro/report/experiments.yaml)")
    p.add_argument("--no-notebook", action="store_true", help="do not re-execute notebooks/reproduce_tables.ipynb "
                                                              "(only done when --root is the repo)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    """Entry point: 0 when every run finished, 1 when some failed, 2 on bad input."""
    from tqdm.auto import tqdm

    args = build_parser().parse_args(argv)
    try:
        registry = load_registry(args.registry)
        if args.list:
            list_experiments(registry)
            return 0
        chosen = select(registry, [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None)
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        root = Path(args.root).resolve()
        changes = tree_changes()
        if changes and not args.allow_dirty and not args.no_run:
            raise ConfigError(f"the tree has uncommitted changes ({len(changes)} file(s): {', '.join(changes[:3])}"
                              f"{' ...' if len(changes) > 3 else ''}); commit them, or pass --allow-dirty to run "
                              "anyway (every table is then marked DIRTY TREE)")
        failures, costs = [], {}
        if not chosen:
            print("note: no default experiment is registered in normrepro/report/experiments.yaml: nothing to run")
        if not args.no_run:
            plans = {e.name: plan(e) for e in chosen}
            with tqdm(total=sum(map(len, plans.values())), desc="runs", unit="run", disable=args.no_progress) as bar:
                for exp in chosen:
                    t0 = time.perf_counter()
                    failures += run_experiment(exp, root / "multirun" / "reproduce" / exp.name, args.jobs,
                                               args.resume, bar)
                    costs[exp.name] = time.perf_counter() - t0
            for exp in chosen:
                scratch = root / "multirun" / "reproduce" / exp.name
                records.publish_records([(r.name, scratch / r.name) for r in plans[exp.name]],
                                        root / "results" / "runs" / exp.name, roots=[root])
        reports, summary = records.regenerate(chosen, root, every=list(registry.values()), readme=root / "README.md")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, rep in reports.items():
        cost = f", {costs[name] / 60:.1f} min" if name in costs else ""
        print(f"{describe(rep.summary(registry[name].claim))}{cost}")
        print("    wrote " + ", ".join(display_path(p, [root]) for p in (rep.md, rep.csv, *rep.figures.values())))
    print(f"summary: {display_path(summary, [root])}")
    if root == REPO.resolve() and not args.no_notebook:
        print(execute_notebook())
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
