"""Make the paper's figures: run what they need, then draw them.

    python -m paper_figures.make <figure|all> [--preset smoke|paper] [--runs DIR]

Figures: learning_curves, hds_beta, sim_vs_real, dynamics_models, gradient_norms,
sample_efficiency (`paper_figures.figures`). Without --runs, the runs a figure needs are
trained by `python -m experiments.train -m ...` subprocesses (hydra multiruns) into
`<root>/<figure>/<method>_<task>_seed<seed>/`, and its benchmark measurements by
`python benchmarks/<script>.py --out <root>/<figure>/<file>.json`; a run that already has its
`summary.json` under <root> (in any folder), or a measurement whose file exists, is not made
again, so a killed `make` picks up where it stopped. With --runs DIR, nothing is run: the
figure draws from the runs and measurements under DIR, or, if some are missing, prints one
line for each (with the overrides that make it) and exits with status 1.

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
from pathlib import Path

from paper_figures import figures
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

REPO = Path(__file__).resolve().parent.parent
FIGURES = (
    "learning_curves",
    "hds_beta",
    "sim_vs_real",
    "dynamics_models",
    "gradient_norms",
    "sample_efficiency",
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
    """Draw only these methods (by name), and the normalizer where scores need it."""
    planned: set[frozenset] = dataclasses.field(default_factory=set)
    """Runs a dry run has printed commands for (by facts): later figures share them."""


def sweep_commands(sweep: FigureSweep, specs: list[RunSpec], session: Session) -> list[list[str]]:
    """The hydra multiruns that make `specs`: one per method and task, over its seeds.

    The subdirectory is named by hand (method, task, seed), not by hydra's job number, so a
    run's directory does not depend on which other runs were still missing when it started,
    and a killed run is resumed in place by the next `make`.
    """
    seeds: dict[tuple, list[int]] = {}
    for spec in specs:
        seeds.setdefault((spec.method, spec.env), []).append(spec.seed)
    return [
        [
            sys.executable,
            "-m",
            "experiments.train",
            "-m",
            *method.overrides,
            f"env={env}",
            "seed=" + ",".join(map(str, method_seeds)),
            *session.preset.overrides_for(method),
            *session.extra,
            f"hydra.sweep.dir={session.root / sweep.name}",
            f"hydra.sweep.subdir={method.slug}_{env}_seed${{seed}}",
        ]
        for (method, env), method_seeds in seeds.items()
    ]


def _subprocess_env() -> dict[str, str]:
    # XLA logs a warning on every persistent-compilation-cache hit unless told not to.
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


def _run(command: list[str], session: Session, stdout=None) -> None:
    """Runs a subprocess from the repository root, its output to our stderr (our stdout
    lists the files written). A failure is reported and left to the check for missing
    inputs that follows: one failed sweep should not stop the others."""
    print(f"$ {shlex.join(command)}", file=sys.stderr, flush=True)
    if session.dry_run:
        return
    result = subprocess.run(
        command, cwd=REPO, env=_subprocess_env(), stdout=stdout or sys.stderr, check=False
    )
    if result.returncode != 0:
        print(f"failed (exit {result.returncode}): {shlex.join(command)}", file=sys.stderr)


def gather_runs(sweep: FigureSweep, session: Session) -> dict[RunSpec, Run] | None:
    """The runs a figure sweep needs, found under the root after training the missing ones
    (unless --runs). Raises MissingInputs naming every run still missing; None in a dry run."""
    specs = sweep.specs()
    selection = select(find_runs(session.root), specs)
    to_make = selection.missing if session.run_missing else []
    if session.dry_run:
        to_make = [s for s in to_make if frozenset(s.facts.items()) not in session.planned]
        session.planned.update(frozenset(s.facts.items()) for s in to_make)
    for command in sweep_commands(sweep, to_make, session):
        _run(command, session)
    if session.dry_run:
        return None
    if to_make:
        selection = select(find_runs(session.root), specs)
    missing = [
        spec
        for spec in selection.missing
        if not (
            spec.method == sweep.normalizer
            and scored_without_oracle(selection.found, spec.env, spec.seed)
        )
    ]
    if missing:
        raise MissingInputs([f"missing run ({sweep.name}): {spec.describe()}" for spec in missing])
    return selection.found


def measurement_command(measurement: Measurement, path: Path) -> list[str]:
    return [sys.executable, measurement.script, *measurement.args, "--out", str(path)]


def gather_measurements(name: str, session: Session) -> dict[str, list[dict]] | None:
    """The JSON reports of a figure's measurements, by script name, after running the
    missing ones (unless --runs). A missing report raises MissingInputs. None in a dry run."""
    reports: dict[str, list[dict]] = {}
    missing = []
    for measurement in figure_measurements(session.preset)[name]:
        path = session.root / name / measurement.output
        report = _read_json(path)
        if report is None and session.run_missing:
            if not session.dry_run:
                path.parent.mkdir(parents=True, exist_ok=True)
            # The report goes to --out; the copy a benchmark prints would flood our stderr.
            _run(measurement_command(measurement, path), session, stdout=subprocess.DEVNULL)
            report = None if session.dry_run else _read_json(path)
        if report is not None:
            reports.setdefault(Path(measurement.script).stem, []).append(report)
        elif not session.dry_run:
            command = shlex.join(measurement_command(measurement, path))
            missing.append(f"missing measurement ({name}): {path}  [{command}]")
    if missing:
        raise MissingInputs(missing)
    return None if session.dry_run else reports


def _read_json(path: Path) -> dict | None:
    """A report, or None if absent or unreadable (a benchmark killed while writing)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def make_figure(name: str, session: Session) -> list[Path]:
    """Gathers (or makes) a figure's inputs and draws it; returns the files written."""
    if name in figures.RUN_FIGURES:
        sweep = figure_sweeps(session.preset)[name]
        if session.methods is not None:
            kept = tuple(m for m in sweep.methods if m.name in session.methods)
            sweep = dataclasses.replace(sweep, methods=kept)
        found = gather_runs(sweep, session)
        return [] if found is None else figures.RUN_FIGURES[name](found, session.out_dir)
    reports = gather_measurements(name, session)
    if reports is None:
        return []
    if name == "dynamics_models":
        return figures.dynamics_models(
            reports["dynamics_models"], session.out_dir, reports.get("sysid", [])
        )
    if name == "gradient_norms":
        (report,) = reports["gradient_norms"]
        return figures.gradient_norms(report, session.out_dir)
    raise ValueError(f"unknown figure {name!r}; expected one of {FIGURES}")


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
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
    )
    failed = False
    for name in FIGURES if args.figure == "all" else (args.figure,):
        start = time.perf_counter()
        try:
            paths = make_figure(name, session)
        except MissingInputs as missing:
            print("\n".join(missing.lines), file=sys.stderr)
            failed = True
            continue
        for path in paths:
            print(path)
        if paths:
            print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
