"""Pages generated when the site is built (`make docs`, `mkdocs build`), never committed:

- `reference/configuration.md`: every key of the command line, as it spells it
  (`algo.elite_fraction`), with its type, its default as `python -m experiments.train`
  composes it and the field's docstring in the library's config dataclass, so the reference
  cannot drift from the code;
- `figures.md`: every figure committed under `docs/figures/`, with the caption and the
  provenance (command, commit, date, machine) of its sidecar JSON.

Run as a script (`python docs/hooks/generate.py DIR`) it writes both pages into DIR instead.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONFIGURATION = "reference/configuration.md"
FIGURES = "figures.md"

# Keys whose meaning the code states in prose, not in a field docstring (experiments/schema.py).
KEY_NOTES = {
    "env.real_profile": "The real system's physics: `friction` (the `env.real` node, inside the "
    "simulator's family) or `lab` (the `env.lab` node, beyond it).",
    "real.engine": "What stands for the physical system: `brax` (the profile's differentiable "
    "twin), `mujoco` (the same rig in MuJoCo C, `sim2real.mujoco_lab`) or `gym` (a gymnasium "
    "env of your own, `real.gym_id`).",
    "real.gym_id": "With `real.engine=gym`: the id `gymnasium.make` takes.",
    "real.gym_adapter": "With `real.engine=gym`: `module:attribute` of a "
    "`sim2real.gym_adapter.GymAdapter` (or a function returning one); none: the env already "
    "speaks the testbed's layout.",
    "real.gym_kwargs": "With `real.engine=gym`: keyword arguments for `gymnasium.make`.",
    "env.system": "`cartpole` or `double_cartpole` (set by the `env/` option).",
    "env.task": "`swingup` or `balance` (set by the `env/` option); with `env=brax`, the env's name.",
    "env.episode_length": "The horizon rollouts, trainers and the evaluation use (control steps of 50 ms).",
    "run.progress_bar": "Print a progress bar while training.",
    "seed": "The run's seed: training and held-out evaluation keys (`sim2real.evaluation.seed_streams`).",
}


def field_docstrings(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of `cls` and of its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    text = str(hint).replace("typing.", "")
    if text.startswith("Optional[") and text.endswith("]"):
        return f"{text[len('Optional[') : -1]} | None"
    return text


def value_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows(prefix: str, classes: list[type], node: dict, skip=()) -> list[str]:
    """One table row per key of the composed `node`, documented from `classes`' fields."""
    docs: dict[str, str] = {}
    hints: dict[str, Any] = {}
    for cls in classes:
        docs.update(field_docstrings(cls))
        hints.update(typing.get_type_hints(cls))
    lines = []
    for key, value in node.items():
        if key in skip or isinstance(value, dict) and key not in hints:
            continue
        full = f"{prefix}.{key}" if prefix else key
        doc = docs.get(key) or KEY_NOTES.get(full, "")
        kind = type_name(hints[key]) if key in hints else type(value).__name__
        lines.append(
            f"| `{full}` | `{cell(kind)}` | `{cell(value_text(value))}` | {cell(doc) or '(no docstring in the code)'} |"
        )
    return lines


def table(prefix: str, classes: list[type], node: dict, skip=()) -> list[str]:
    return [
        "| key | type | default | what it is |",
        "| --- | --- | --- | --- |",
        *rows(prefix, classes, node, skip),
        "",
    ]


def composed(overrides: list[str]) -> dict:
    from hydra import compose
    from omegaconf import OmegaConf

    cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


ALGO_OPTIONS = (
    "pods",
    "oracle",
    "pods_sysid",
    "hds",
    "hds_sysid",
    "energy_lqr",
    "lqr",
    "apg",
    "ppo",
    "ppo_dr",
)
MODEL_OPTIONS = ("residual", "mlp", "ensemble")


def configuration_reference() -> str:
    """The configuration reference page (markdown)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from baselines.brax_agents import APGConfig, PPOConfig
    from baselines.energy_lqr import EnergyLQRConfig
    from baselines.lqr import LQRConfig
    from dynamics_models.factory import ModelConfig
    from experiments import schema
    from pods.config import HDSConfig, PODSConfig
    from sim2real.lab import FrictionGradient, LabEffects
    from sim2real.loop_config import LoopConfig
    from sim2real.sysid import SysIDConfig
    from sim2real.testbed_spec import Physics

    algo_classes = {
        "pods": PODSConfig,
        "oracle": PODSConfig,
        "pods_sysid": PODSConfig,
        "hds": HDSConfig,
        "hds_sysid": HDSConfig,
        "energy_lqr": EnergyLQRConfig,
        "lqr": LQRConfig,
        "apg": APGConfig,
        "ppo": PPOConfig,
        "ppo_dr": PPOConfig,
    }
    schema.register_schemas()
    GlobalHydra.instance().clear()
    out = [
        "# Configuration reference",
        "",
        "Every key `python -m experiments.train` takes, spelled as the command line spells it",
        "(`algo.elite_fraction=0.25`), with its type, the default the command line composes",
        "(the library's default, or the YAML of its config group where that sets one: the PODS",
        "family starts from `experiments/conf/solving/pods.yaml`) and the docstring of the",
        "library config field it sets. This page is generated from the code when the site is",
        "built (`docs/hooks/generate.py`), so it cannot drift from it. Choose a group's option",
        "with `group=option` (`algo=hds`, `model=mlp`, `env=cartpole_balance`); see",
        "[the command-line guide](../guides/command-line.md) for how they compose.",
        "",
    ]
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        base = composed([])
        env = base["env"]
        out += [
            "## `env`: the testbed",
            "",
            "`env=cartpole_swingup` (the default), `cartpole_balance`, `double_cartpole_swingup`,",
            "`double_cartpole_balance` (each sets `system`, `task` and `episode_length`), or",
            "`env=brax` (below). Defaults shown for `env=cartpole_swingup`.",
            "",
            *table(
                "env", [schema.EnvSchema], env, skip=("sim", "real", "lab", "friction_gradient")
            ),
            "### `env.sim.*`, `env.real.*`: the simulator's and the friction real's physics",
            "",
            "`sim2real.Physics`; `env.sim` defaults to `Physics.nominal()`, `env.real` to",
            "`Physics()` (the friction real). Defaults shown for `env.real`; `env.sim`'s are",
            "in brackets where they differ.",
            "",
        ]
        physics_rows = rows("env.real", [Physics], env["real"])
        for (key, sim_value), line in zip(env["sim"].items(), physics_rows, strict=True):
            real_value = env["real"][key]
            if sim_value != real_value:
                default = f"`{value_text(real_value)}`"
                line = line.replace(
                    f"| {default} |", f"| {default} (`{cell(value_text(sim_value))}`) |", 1
                )
            out.append(line)
        out.insert(len(out) - len(physics_rows), "| key | type | default | what it is |")
        out.insert(len(out) - len(physics_rows), "| --- | --- | --- | --- |")
        out += [
            "",
            "### `env.lab.*`: the lab real (`env.real_profile=lab`)",
            "",
            "`sim2real.Physics` (the lab's in-family part, `Physics.lab()`) and",
            "`sim2real.LabEffects` (the rest) in one flat node.",
            "",
            *table("env.lab", [Physics, LabEffects], env["lab"]),
            "### `env.friction_gradient.*`",
            "",
            "`sim2real.lab.FrictionGradient`; `env.friction_gradient=null` turns it off.",
            "",
            *table("env.friction_gradient", [FrictionGradient], env["friction_gradient"]),
            "### `env=brax`: any env of Brax's registry",
            "",
            *table("env", [schema.BraxEnvSchema], composed(["env=brax"])["env"]),
            "## `algo`: the algorithm",
            "",
            "One table per option of the `algo/` group. The PODS family (`pods`, `oracle`,",
            "`pods_sysid`, `hds`, `hds_sysid`) starts from the shared solving settings",
            "(`experiments/conf/solving/pods.yaml`); on the double cart-pole the `env_solving/`",
            "group adds the double's own on top (`'~env_solving'` drops them).",
            "",
        ]
        for option in ALGO_OPTIONS:
            node = composed([f"algo={option}"])["algo"]
            out += [
                f"### `algo={option}`",
                "",
                f"`{algo_classes[option].__module__}.{algo_classes[option].__qualname__}`.",
                "",
                *table("algo", [algo_classes[option]], node, skip=("name",)),
            ]
        out += [
            "## `model`: the dynamics model HDS fits",
            "",
            "`dynamics_models.ModelConfig`; the options `residual` (the default), `mlp` and",
            "`ensemble` set `model.kind` and what differs.",
            "",
        ]
        for option in MODEL_OPTIONS:
            out += [
                f"### `model={option}`",
                "",
                *table("model", [ModelConfig], composed([f"model={option}"])["model"]),
            ]
        out += [
            "## `real`: how real data is spent",
            "",
            "`sim2real.loop_config.LoopConfig`, and the keys that choose the real system.",
            "",
            *table("real", [LoopConfig], base["real"]),
            "## `sysid`: system identification (`algo=pods_sysid`)",
            "",
            "`sim2real.sysid.SysIDConfig`; `algo=hds_sysid` reads it too.",
            "",
            *table("sysid", [SysIDConfig], base["sysid"]),
            "## `run`: around training",
            "",
            *table("run", [schema.RunSchema], base["run"]),
            "## `seed`",
            "",
            *table("", [schema.Config], {"seed": base["seed"]}),
        ]
    GlobalHydra.instance().clear()
    return "\n".join(out) + "\n"


def figures_page(docs_dir: Path) -> str:
    """The figures page: every committed figure with its caption and provenance."""
    out = [
        "# Figures",
        "",
        "Every figure committed under `docs/figures/`, with its caption and the record of what",
        "drew it (the sidecar JSON beside the image; `python -m paper_figures.make` writes one",
        "for every figure it draws). Generated from those records when the site is built.",
        "",
    ]
    for image in sorted((docs_dir / "figures").rglob("*.png")):
        record = json.loads(image.with_suffix(".json").read_text())
        relative = image.relative_to(docs_dir).as_posix()
        out += [
            f"## {record.get('title', image.stem)}",
            "",
            f"![{record.get('title', image.stem)}]({relative})",
            "",
            f"*{record['caption']}*",
            "",
            "| | |",
            "| --- | --- |",
            f"| file | `docs/{relative}` |",
            f"| command | `{cell(record['command'])}` |",
            f"| commit | `{record['commit']}` |",
            f"| date | {record['date']} |",
            f"| machine | {cell(record['machine'])} |",
        ]
        if record.get("notes"):
            out.append(f"| notes | {cell(record['notes'])} |")
        if record.get("page"):
            out.append(f"| discussed in | [{record['page']}]({record['page']}) |")
        out.append("")
    return "\n".join(out) + "\n"


def on_files(files, config):
    """mkdocs hook: adds the generated pages to the build."""
    from mkdocs.structure.files import File

    sys.path.insert(0, str(REPO))
    docs_dir = Path(config["docs_dir"])
    for uri, content in (
        (CONFIGURATION, configuration_reference()),
        (FIGURES, figures_page(docs_dir)),
    ):
        files.append(File.generated(config, uri, content=content))
    return files


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    (target / CONFIGURATION).parent.mkdir(parents=True, exist_ok=True)
    (target / CONFIGURATION).write_text(configuration_reference())
    (target / FIGURES).write_text(figures_page(REPO / "docs"))
