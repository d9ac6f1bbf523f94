"""S seeds as one program against S runs one after another, through the command line;
prints JSON.

For each S in `--seeds`, the same `python -m experiments.train -m seed=0,...,S-1` multirun
(the bare defaults on `--env`, `--epochs` epochs; `--set` adds overrides) twice, each from
an empty compilation cache: with hydra's basic launcher (the seeds one after another in one
process: the first compiles the epoch, the later ones trace it again and load it from the
cache) and with `launcher=seed_batch` (one trace, one compile, the epoch vmapped over the
seeds). S = 1 runs once: the batch launcher runs a single seed as the basic one does. Per
multirun:
- `process_s`: the whole command, Python's start to its exit (imports, compiles, training,
  the evaluations and summaries);
- `first_epoch_s`: per seed, `train/wall_clock_s` of its epoch 0 (a batch's clock counts
  from the batch's start): the trace and compile, and the first epoch;
- `training_s`: the sum over the multirun's runs of their last `train/wall_clock_s` for
  the basic launcher, the batch's own for the batch;
- `return_sim`: per seed, the final policy's return in sim (`summary.json`).
`ratio` is the batch's `process_s` over the basic launcher's, and `return_sim_max_difference`
the largest difference of a seed's return between the two (float rounding: the batch sums
some products in another order, and training amplifies the last digits).

    .venv/bin/python benchmarks/seed_batch.py [--seeds 1 3 5] [--epochs 20]
        [--env cartpole_swingup] [--set algo.num_trajectories=64 ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def multirun(seeds: int, launcher: str | None, args, root: Path) -> dict:
    sweep = root / f"{launcher or 'basic'}_{seeds}"
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        f"env={args.env}",
        "seed=" + ",".join(str(s) for s in range(seeds)),
        f"algo.num_epochs={args.epochs}",
        "run.animation=false",
        "run.progress_bar=false",
        *([f"launcher={launcher}"] if launcher else []),
        *args.set,
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=seed${seed}",
    ]
    env = {**os.environ, "PODS_JAX_CACHE": tempfile.mkdtemp(prefix="seed_batch_cache_")}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    first, last, returns = [], [], []
    for s in range(seeds):
        run = sweep / f"seed{s}"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        first.append(round(metrics[0]["train/wall_clock_s"], 2))
        last.append(metrics[-1]["train/wall_clock_s"])
        returns.append(json.loads((run / "summary.json").read_text())["eval/return_sim"])
    return {
        "seeds": seeds,
        "launcher": launcher or "basic",
        "process_s": round(process_s, 1),
        "first_epoch_s": first,
        "training_s": round(max(last) if launcher else sum(last), 1),
        "return_sim": returns,
        "load_average_1m_before": round(load, 2),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--env", default="cartpole_swingup")
    parser.add_argument("--set", nargs="*", default=[], metavar="OVERRIDE")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if any(s < 1 for s in args.seeds) or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be positive, got {args.seeds}, {args.epochs}")

    root = Path(tempfile.mkdtemp(prefix="seed_batch_runs_"))
    results = []
    for seeds in args.seeds:
        basic = multirun(seeds, None, args, root)
        entry = {"seeds": seeds, "basic": basic}
        print(json.dumps(basic), file=sys.stderr, flush=True)
        if seeds > 1:
            batch = multirun(seeds, "seed_batch", args, root)
            print(json.dumps(batch), file=sys.stderr, flush=True)
            entry["seed_batch"] = batch
            entry["ratio"] = round(batch["process_s"] / basic["process_s"], 3)
            entry["return_sim_max_difference"] = max(
                abs(a - b) for a, b in zip(basic["return_sim"], batch["return_sim"], strict=True)
            )
        results.append(entry)
    report = {
        "benchmark": "seed_batch",
        "env": args.env,
        "epochs": args.epochs,
        "overrides": args.set,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
