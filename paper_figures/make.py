"""Make the paper's figures: run what they need, then draw them.

    python -m paper_figures.make <figure|all> [--preset smoke|paper] [--runs DIR] [--jobs N]

Figures: learning_curves, hds_beta, sim_vs_real, dynamics_models, gradient_norms,
sample_efficiency (`paper_figures.figures`), study (`paper_figures.study_figure`). A `make` works in three steps:

1. plan: every run and measurement the chosen figures need and the root lacks, each once
   though several figures draw it. A run that already has its `summary.json` under the root
   (in any folder), or a measurement whose file exists, is not made again, so a killed `make`
   picks up where it stopped.
2. execute: the planned jobs, `--jobs` subprocesses at a time, each logging to
   `<root>/logs/<job>.log`. A run is trained by `python -m experiments.train -m ...` (one
   hydra multirun per method and task, over its seeds, under `launcher=seed_batch`: the seeds
   of PODS, the oracle and HDS train as one program) into
   `<root>/<figure>/<method>_<task>_seed<seed>/`; a measurement by
   `python benchmarks/<script>.py --out <root>/<figure>/<file>.json`. Compiling dominates
   small runs and XLA compiles on one thread, so two jobs keep two cores busy (the smoke
   preset: 14.7 min of wall-clock for 26 min of CPU).
3. draw: each figure from the runs and measurements under the root, or, if some are
   missing (a job failed), one line for each with the overrides that make it.

With --runs DIR, steps 1 and 2 are skipped: the figures draw from DIR or name what it lacks
(exit status 1).

This process never trains or measures anything itself (`paper_figures` only reads and
draws): training happens in the experiments entry point, measurement in the benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from paper_figures import figures, provenance, study_figure
from paper_figures.runs import Run, RunSpec, find_runs, select
from paper_figures.scores import scored_without_oracle
from paper_figures.sweeps import (
    PRESETS,
    FigureSweep,
    Measurement,
    Preset,
    figure_measurements,
    figure_sweeps,
)
from pods.runtime import filter_known_xla_logs

REPO = Path(__file__).resolve().parent.parent
FIGURES = (
    "learning_curves",
    "hds_beta",
    "sim_vs_real",
    "dynamics_models",
    "gradient_norms",
    "sample_efficiency",
    "study",
)


METHOD_NAMES = frozenset(
    method.name
    for preset in PRESETS.values()
    for sweep in figure_sweeps(preset).values()
    for method in sweep.methods
)


class MissingInputs(Exception):
    """Runs or measurements a figure needs and does not have; one line per missing input."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclasses.dataclass
class Session:
    """What one `make` does: which runs and measurements it may make, and where."""

    preset: Preset
    root: Path
    """Where runs and measurements are found (and, if `run_missing`, made)."""
    out_dir: Path
    run_missing: bool = True
    """False with --runs: draw from what exists, run nothing."""
    dry_run: bool = False
    """Print the commands that would run; draw nothing."""
    extra: tuple[str, ...] = ()
    """Hydra overrides added to every sweep (a launcher, a partition)."""
    methods: frozenset[str] | None = None
    """Draw only these methods (by name), and the sweep's normalizer (the oracle)."""
    jobs: int = 2
    """Subprocesses run at once."""

    def sweep(self, name: str) -> FigureSweep:
        """A run figure's sweep, restricted to `methods`."""
        sweep = figure_sweeps(self.preset)[name]
        if self.methods is not None:
            kept = tuple(m for m in sweep.methods if m.name in self.methods)
            sweep = dataclasses.replace(sweep, methods=kept)
        return sweep


@dataclasses.dataclass(frozen=True)
class Job:
    """One subprocess of a `make`: a hydra multirun or a benchmark."""

    name: str
    """Unique within a `make`: its log's file name (`learning_curves-pods_order1_cartpole_balance`)."""
    command: tuple[str, ...]
    folder: Path
    """Where it writes (a sweep's folder, a report's); made before it starts."""


def sweep_jobs(sweep: FigureSweep, specs: list[RunSpec], session: Session) -> list[Job]:
    """The hydra multiruns that make `specs`: one per method and task, over its seeds.

    The subdirectory is named by hand (method, task, seed), not by hydra's job number, so a
    run's directory does not depend on which other runs were still missing when it started,
    and a killed run is resumed in place by the next `make`.
    """
    seeds: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        seeds.setdefault((spec.method, spec.env, spec.profile), []).append(spec)
    # The seeds of a PODS, oracle or HDS multirun train as one program (experiments.seed_batch;
    # the other methods' run one after another there), unless the caller picks a launcher.
    chosen = any(_override_key(o) in ("launcher", "hydra/launcher") for o in session.extra)
    launcher = () if chosen else ("launcher=seed_batch",)
    jobs = []
    for (method, env, profile), method_specs in seeds.items():
        first = method_specs[0]
        name = f"{method.slug}_{env}" + ("" if profile is None else f"_{profile}")
        command = (
            sys.executable,
            "-m",
            "experiments.train",
            "-m",
            *first.overrides,
            "seed=" + ",".join(str(spec.seed) for spec in method_specs),
            *session.preset.overrides_for(method),
            *launcher,
            *session.extra,
            f"hydra.sweep.dir={session.root / sweep.name}",
            f"hydra.sweep.subdir={name}_seed${{seed}}",
        )
        jobs.append(Job(f"{sweep.name}-{name}", command, session.root / sweep.name))
    return jobs


def _override_key(override: str) -> str:
    """`launcher` of `launcher=slurm`, `+launcher=slurm` or `~launcher`."""
    return override.lstrip("+~").split("=", 1)[0]


def measurement_command(measurement: Measurement, path: Path) -> list[str]:
    return [sys.executable, measurement.script, *measurement.args, "--out", str(path)]


def _measurement_path(name: str, measurement: Measurement, session: Session) -> Path:
    return session.root / name / measurement.output


def plan(names: Sequence[str], session: Session) -> list[Job]:
    """Every job the figures `names` need and the root lacks. A run several figures draw
    (PODS in both the learning curves and the sim-vs-real bars) is made once, by the first
    figure that needs it, and found there by the others."""
    runs = find_runs(session.root)
    planned: set[frozenset] = set()
    jobs = []
    for name in names:
        if name in figures.RUN_FIGURES:
            sweep = session.sweep(name)
            to_make = [
                spec
                for spec in select(runs, sweep.specs()).missing
                if frozenset(spec.facts.items()) not in planned
            ]
            planned.update(frozenset(spec.facts.items()) for spec in to_make)
            jobs.extend(sweep_jobs(sweep, to_make, session))
            continue
        for measurement in figure_measurements(session.preset)[name]:
            path = _measurement_path(name, measurement, session)
            if _read_json(path) is None:
                command = measurement_command(measurement, path)
                job_name = f"{name}-{Path(measurement.output).stem}"
                jobs.append(Job(job_name, tuple(command), path.parent))
    return jobs


def execute(jobs: Sequence[Job], session: Session) -> list[Job]:
    """Runs `jobs`, `session.jobs` at a time, from the repository root; each one's output
    goes to `<root>/logs/<job>.log`, and a line per start and end to our stderr (our stdout
    lists the files written). Returns the jobs that failed: a failure does not stop the
    others, and the figures that needed it say what is missing."""
    for job in jobs:
        print(f"$ {shlex.join(job.command)}", file=sys.stderr, flush=True)
    if session.dry_run or not jobs:
        return []
    logs = session.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def run(numbered: tuple[int, Job]) -> Job | None:
        number, job = numbered
        log = logs / f"{job.name}.log"
        tag = f"[{number}/{len(jobs)}] {job.name}"
        print(f"{tag}: started (log: {log})", file=sys.stderr, flush=True)
        job_start = time.perf_counter()
        job.folder.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            result = subprocess.run(job.command, cwd=REPO, stdout=out, stderr=out, check=False)
        seconds = time.perf_counter() - job_start
        if result.returncode != 0:
            print(
                f"{tag}: FAILED (exit {result.returncode}) after {seconds:.0f} s; see {log}",
                file=sys.stderr,
            )
            return job
        print(f"{tag}: done in {seconds:.0f} s", file=sys.stderr, flush=True)
        return None

    with ThreadPoolExecutor(max_workers=session.jobs) as pool:
        failed = [job for job in pool.map(run, enumerate(jobs, 1)) if job is not None]
    print(
        f"{len(jobs)} jobs, {session.jobs} at a time: {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    return failed


def gather_runs(sweep: FigureSweep, session: Session) -> dict[RunSpec, Run]:
    """The runs a figure sweep draws, found under the root. Raises MissingInputs naming every
    run missing (a normalizer is not missing where the runs carry their own scores)."""
    selection = select(find_runs(session.root), sweep.specs())
    missing = [
        spec
        for spec in selection.missing
        if not (
            spec.method == sweep.normalizer
            and scored_without_oracle(selection.found, spec.task, spec.seed)
        )
    ]
    if missing:
        raise MissingInputs([f"missing run ({sweep.name}): {spec.describe()}" for spec in missing])
    return selection.found


def gather_measurements(name: str, session: Session) -> dict[str, list[dict]]:
    """The JSON reports of a figure's measurements, by script name. Raises MissingInputs
    naming each missing report and the command that makes it."""
    reports: dict[str, list[dict]] = {}
    missing = []
    for measurement in figure_measurements(session.preset)[name]:
        path = _measurement_path(name, measurement, session)
        report = _read_json(path)
        if report is not None:
            reports.setdefault(Path(measurement.script).stem, []).append(report)
        else:
            command = shlex.join(measurement_command(measurement, path))
            missing.append(f"missing measurement ({name}): {path}  [{command}]")
    if missing:
        raise MissingInputs(missing)
    return reports


def _read_json(path: Path) -> dict | None:
    """A report, or None if absent or unreadable (a benchmark killed while writing)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def drawing(name: str) -> Callable:
    """The function that draws figure `name`: its docstring is the figure's caption."""
    return study_figure.study if name == "study" else getattr(figures, name)


def draw(name: str, session: Session) -> list[Path]:
    """Draws a figure from the inputs under the root; returns the files written."""
    if name in figures.RUN_FIGURES:
        return figures.RUN_FIGURES[name](gather_runs(session.sweep(name), session), session.out_dir)
    reports = gather_measurements(name, session)
    if name == "dynamics_models":
        return figures.dynamics_models(
            reports["dynamics_models"], session.out_dir, reports.get("sysid", [])
        )
    if name == "gradient_norms":
        (report,) = reports["gradient_norms"]
        return figures.gradient_norms(report, session.out_dir)
    if name == "study":
        (report,) = reports["study"]
        return study_figure.study(report, session.out_dir)
    raise ValueError(f"unknown figure {name!r}; expected one of {FIGURES}")


def _parser() -> argparse.ArgumentParser:
    """The command line of `python -m paper_figures.make`."""
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures.make",
        description=__doc__.split("\n\n")[0],
        epilog="Figures: " + ", ".join(FIGURES),
    )
    parser.add_argument("figure", choices=(*FIGURES, "all"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--runs",
        type=Path,
        metavar="DIR",
        help="draw from the runs and measurements under DIR only; run nothing",
    )
    source.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="where missing runs and measurements go (default outputs/figure_runs/<preset>)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="default outputs/figures/<preset>")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        metavar="N",
        help="runs and measurements made at once (default: 2, or 1 on a one-core machine)",
    )
    parser.add_argument(
        "--methods",
        metavar="NAME,...",
        help=f"only these methods in run figures ({', '.join(sorted(METHOD_NAMES))})",
    )
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a hydra override added to every sweep, e.g. launcher=local_parallel",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands that would run; draw nothing"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(raw_argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    methods = None
    if args.methods is not None:
        methods = frozenset(args.methods.split(","))
        if unknown := methods - METHOD_NAMES:
            parser.error(
                f"unknown methods {sorted(unknown)}; expected some of {sorted(METHOD_NAMES)}"
            )

    preset = PRESETS[args.preset]
    session = Session(
        preset=preset,
        root=(args.runs or args.root or Path("outputs/figure_runs") / preset.name).resolve(),
        out_dir=args.out or Path("outputs/figures") / preset.name,
        run_missing=args.runs is None,
        dry_run=args.dry_run,
        extra=tuple(args.extra),
        methods=methods,
        jobs=args.jobs,
    )
    names = FIGURES if args.figure == "all" else (args.figure,)
    if session.run_missing:
        execute(plan(names, session), session)
    if session.dry_run:
        return 0
    failed = False
    for name in names:
        try:
            paths = draw(name, session)
        except MissingInputs as missing:
            print("\n".join(missing.lines), file=sys.stderr)
            failed = True
            continue
        paths.append(
            provenance.write_sidecar(
                session.out_dir,
                name,
                caption=provenance.caption_of(drawing(name)),
                command=shlex.join(["python", "-m", "paper_figures.make", *raw_argv]),
                preset=preset.name,
                runs=str(session.root),
            )
        )
        for path in paths:
            print(path)
    return 1 if failed else 0


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    sys.exit(main())
