"""Reading run directories, and finding among them the runs a figure needs.

A run directory (written by `experiments.train`, see `experiments/run_dir.py`) holds
`summary.json` (headline numbers, written last: a run without it is unfinished),
`metrics.jsonl` (one object per epoch) and `.hydra/config.yaml` (the resolved config). This
module reads them with nothing but the standard library and PyYAML: drawing a figure needs
no JAX, and never imports the layers that train (`experiments/` sits above this package).

A run is recognized by its *facts* (algorithm, task, seed, order, beta, model, real budget),
not by its directory name, so runs made by hand in any layout serve a figure as well as runs
made by `paper_figures.make`. Each fact is read from `summary.json` where the run wrote it,
else from the config; `FACTS` is the one table that says where, and which hydra override
sets it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import yaml


class MethodLike(Protocol):
    """What a spec needs of a method (`paper_figures.sweeps.Method`, which imports this
    module): its legend label, its hydra overrides and the facts they pin."""

    label: str
    overrides: tuple[str, ...]

    @property
    def facts(self) -> dict[str, str]: ...


@dataclasses.dataclass(frozen=True)
class Fact:
    """Where one identifying property of a run lives."""

    override: str
    """The hydra override key that sets it (`algo.order` in `algo.order=2`)."""
    summary: str | None
    """Its key in summary.json, if runs write it there."""
    config: tuple[str, ...]
    """Dotted paths in .hydra/config.yaml; several are joined with `_` (system_task)."""


FACTS: dict[str, Fact] = {
    "algo": Fact("algo", "algo", ("algo.name",)),
    "env": Fact("env", "env", ("env.system", "env.task")),
    "seed": Fact("seed", "seed", ("seed",)),
    "order": Fact("algo.order", "algo/order", ("algo.order",)),
    "beta": Fact("algo.beta", "hds/beta", ("algo.beta",)),
    "model": Fact("model", "model/kind", ("model.kind",)),
    "profile": Fact("env.real_profile", "real/profile", ("env.real_profile",)),
    "prediction": Fact("model.prediction", "model/prediction", ("model.prediction",)),
    "budget": Fact("real.budget", "real/budget", ("real.budget",)),
}
FACT_OF_OVERRIDE = {fact.override: name for name, fact in FACTS.items()}


def facts_of_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """The facts a list of hydra overrides pins ({"algo": "pods", "order": "2"}); overrides
    that set no fact (sizes, logging) pin nothing."""
    facts = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"not a key=value override: {override!r}")
        if key in FACT_OF_OVERRIDE:
            facts[FACT_OF_OVERRIDE[key]] = value
    return facts


def same_value(wanted: Any, actual: Any) -> bool:
    """Whether an override's value (a string) and a run's value name the same thing:
    numbers compare as numbers (`0.25` == 0.25, `2` == 2), anything else as text."""
    if actual is None:
        return False

    def canonical(value):
        if isinstance(value, bool):
            return str(value).lower()
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value)

    return canonical(wanted) == canonical(actual)


class RunError(ValueError):
    """A run directory that cannot be read; the message names the file."""


def _lookup(tree: Mapping, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One finished run directory."""

    path: Path
    summary: Mapping[str, Any]
    config: Mapping[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> Run:
        path = Path(path)
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{path / 'summary.json'}: {err}") from None
        config_path = path / ".hydra" / "config.yaml"
        try:
            config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
        except (OSError, yaml.YAMLError) as err:
            raise RunError(f"{config_path}: {err}") from None
        if not isinstance(summary, dict) or not isinstance(config, dict | None):
            raise RunError(f"{path}: summary.json or .hydra/config.yaml is not a mapping")
        return cls(path, summary, config or {})

    def fact(self, name: str) -> Any:
        """The fact `name` (a key of FACTS): from summary.json, else from the config."""
        fact = FACTS[name]
        if fact.summary is not None and self.summary.get(fact.summary) is not None:
            return self.summary[fact.summary]
        parts = [_lookup(self.config, dotted) for dotted in fact.config]
        if any(part is None for part in parts):
            return None
        return parts[0] if len(parts) == 1 else "_".join(str(p) for p in parts)

    def number(self, key: str) -> float:
        """A summary number; NaN where the run wrote null (non-finite) or nothing."""
        value = self.summary.get(key)
        return float("nan") if value is None else float(value)

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl, one dict per epoch; a last line cut short by a kill is dropped."""
        path = self.path / "metrics.jsonl"
        records = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        return records

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of one metric; null (non-finite) values become NaN."""
        rows = [r for r in self.metrics if key in r]
        nan = float("nan")
        return [r["epoch"] for r in rows], [nan if r[key] is None else r[key] for r in rows]


def find_runs(root: str | Path) -> list[Run]:
    """Every finished run (a directory with summary.json) under `root`, at any depth.

    A run directory that cannot be read is named on stderr and left out: the figure then
    lists it as missing, rather than one corrupt file hiding every other run.
    """
    runs = []
    for summary in sorted(Path(root).rglob("summary.json")):
        try:
            runs.append(Run.load(summary.parent))
        except RunError as err:
            print(f"warning: skipping unreadable run: {err}", file=sys.stderr)
    return runs


def task_label(env: str, profile: str | None) -> str:
    """A figure's panel and a table's task: the env, and the real it is scored against where
    one is pinned (`cartpole_swingup, lab real`)."""
    return env if profile is None else f"{env}, {profile} real"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run a figure needs: a method (a set of overrides) on a task with a seed."""

    method: MethodLike
    env: str
    seed: int
    profile: str | None = None
    """The real's profile (`env.real_profile`), where the figure pins one."""

    @property
    def task(self) -> str:
        """The figure panel this run belongs to (`task_label`)."""
        return task_label(self.env, self.profile)

    @property
    def overrides(self) -> tuple[str, ...]:
        """What makes the run, seed aside: the method's overrides, the env, the profile."""
        profile = () if self.profile is None else (f"env.real_profile={self.profile}",)
        return (*self.method.overrides, f"env={self.env}", *profile)

    @property
    def facts(self) -> dict[str, str]:
        profile = {} if self.profile is None else {"profile": self.profile}
        return {**self.method.facts, "env": self.env, **profile, "seed": str(self.seed)}

    def matches(self, run: Run) -> bool:
        return all(same_value(value, run.fact(name)) for name, value in self.facts.items())

    def describe(self) -> str:
        """One line naming the run and how to make it."""
        overrides = " ".join((*self.overrides, f"seed={self.seed}"))
        return f"{self.method.label} on {self.task}, seed {self.seed}  [{overrides}]"


@dataclasses.dataclass(frozen=True)
class Selection:
    """The runs found for a list of specs (in the specs' order), and the specs not found."""

    found: dict[RunSpec, Run]
    missing: list[RunSpec]


def select(runs: Sequence[Run], specs: Sequence[RunSpec]) -> Selection:
    """Matches each spec to a run by its facts.

    Where several runs match (a sweep made twice), the newest summary wins, and stderr says
    so: figures never silently average two attempts at one seed.
    """
    found, missing = {}, []
    for spec in specs:
        matches = [run for run in runs if spec.matches(run)]
        if not matches:
            missing.append(spec)
            continue
        newest = max(matches, key=lambda run: (run.path / "summary.json").stat().st_mtime)
        if len(matches) > 1:
            print(
                f"note: {len(matches)} runs match {spec.describe()}; using the newest, "
                f"{newest.path}",
                file=sys.stderr,
            )
        found[spec] = newest
    return Selection(found, missing)
