"""What each figure needs: the methods, tasks and seeds it trains, and the benchmarks it runs.

This is the one file to edit when an algorithm's config changes name or a figure should show
another method: every hydra override the figures use is written here, once. A figure's runs
are `python -m experiments.train -m <method overrides> env=<task> seed=<seeds> <preset sizes>`;
`paper_figures.make` launches the missing ones and `paper_figures.runs` finds them again by
the facts the overrides pin (algorithm, order, beta, model, budget, task, seed).

Presets:
- `smoke` checks the whole pipeline (one task, two seeds, three tiny epochs: the figures are
  meaningless, the plumbing is not; mostly compiling);
- `cpu` is the study at the solving sizes, cut to fit an hour of a 2-core CPU: swing-up
  against the lab real, 3 seeds, HDS's beta swept with the residual model only, the MLP and
  the member-sampled ensemble at the headline beta, two real budgets;
- `paper` is the whole study (5 seeds, every model at every beta, five budgets, balance
  too), for longer runs, bigger machines and SLURM (`--set launcher=slurm`).
Every preset but `smoke` leaves the training sizes to the algorithms' own configs
(`experiments/conf/algo/*.yaml`, the solving settings of `experiments/conf/solving/`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from paper_figures.runs import RunSpec, facts_of_overrides


@dataclasses.dataclass(frozen=True)
class Method:
    """A curve, bar or line in a figure: the overrides that train it."""

    name: str
    """Stable id: the method's color, its rows in the tables, its run directories' names."""
    label: str
    """Legend text."""
    overrides: tuple[str, ...]
    """Hydra overrides that select it (`algo=hds`, `model=residual`, `algo.beta=0.25`)."""
    varied: tuple[str, ...] = ()
    """Override keys a figure sweeps (`algo.beta`): this method is one point of a curve."""
    tasks: tuple[str, ...] | None = None
    """Only these tasks (LQR needs a linearization about upright: balance only)."""

    @property
    def facts(self) -> dict[str, str]:
        return facts_of_overrides(self.overrides)

    @property
    def algo(self) -> str:
        return self.facts["algo"]

    def value(self, key: str) -> str:
        """The value this method's overrides give `key`."""
        for override in self.overrides:
            k, _, v = override.partition("=")
            if k == key:
                return v
        raise KeyError(f"{self.name} does not set {key}")

    def at(self, key: str, value: object) -> Method:
        """This method with `key` set to `value`, as one point of a sweep over `key`."""
        kept = tuple(o for o in self.overrides if o.partition("=")[0] != key)
        varied = self.varied if key in self.varied else (*self.varied, key)
        return dataclasses.replace(self, overrides=(*kept, f"{key}={value}"), varied=varied)

    @property
    def slug(self) -> str:
        """Directory-name form: the name, then each swept value (`hds_residual_beta0.5`)."""
        return self.name + "".join(f"_{k.rsplit('.', 1)[-1]}{self.value(k)}" for k in self.varied)

    def runs_on(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


# -- The methods --------------------------------------------------------------------------
REAL_BUDGET = 5000
"""Real transitions HDS and PODS+sysid may use wherever a figure does not sweep the budget."""

PODS_1 = Method("pods_order1", "PODS (1st order)", ("algo=pods", "algo.order=1"))
PODS_2 = Method("pods_order2", "PODS (2nd order)", ("algo=pods", "algo.order=2"))
HDS_BETA = 0.5
"""HDS's share of model rollouts wherever a figure does not sweep it (algo/hds.yaml's)."""
HDS_RESIDUAL = Method(
    "hds_residual",
    "HDS (residual)",
    ("algo=hds", "model=residual", f"real.budget={REAL_BUDGET}", f"algo.beta={HDS_BETA}"),
)
HDS_MLP = Method(
    "hds_mlp",
    "HDS (MLP)",
    ("algo=hds", "model=mlp", f"real.budget={REAL_BUDGET}", f"algo.beta={HDS_BETA}"),
)
HDS_ENSEMBLE = Method(
    "hds_ensemble",
    "HDS (ensemble, a member per rollout)",
    (
        "algo=hds",
        "model=ensemble",
        "model.prediction=member",
        f"real.budget={REAL_BUDGET}",
        f"algo.beta={HDS_BETA}",
    ),
)
HDS_MODELS = (HDS_RESIDUAL, HDS_MLP, HDS_ENSEMBLE)
APG = Method("apg", "APG", ("algo=apg",))
PPO = Method("ppo", "PPO", ("algo=ppo",))
PPO_DR = Method("ppo_dr", "PPO + DR", ("algo=ppo_dr",))
PODS_SYSID = Method("pods_sysid", "PODS + sysid", ("algo=pods_sysid", f"real.budget={REAL_BUDGET}"))
LQR = Method("lqr", "LQR", ("algo=lqr",), tasks=("cartpole_balance",))
ORACLE = Method("oracle", "Oracle (PODS on real)", ("algo=oracle", "algo.order=2"))
"""The ceiling of real scores: PODS trained directly on the `real` testbed."""
SIM_CEILING = PODS_2
"""The oracle's counterpart in sim: the same algorithm (PODS, second order) trained on the
testbed it is evaluated on."""


# -- Presets ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Preset:
    """How big a figure's runs and measurements are."""

    name: str
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    """Tasks of the figures over every method (learning curves, sim vs real)."""
    real_tasks: tuple[str, ...]
    """Tasks of the figures that sweep HDS (beta, real budget): the costly ones."""
    betas: tuple[float, ...]
    budgets: tuple[int, ...]
    beta_models: tuple[str, ...]
    """Names of the HDS methods whose beta is swept; the others appear at `HDS_BETA` only."""
    left_out: tuple[str, ...]
    """Names of methods this preset does not run (to fit its time)."""
    profiles: Mapping[str, tuple[str, ...]]
    """The real profiles (`env.real_profile`) each task is scored against; a task not named
    keeps its config's default (`friction`)."""
    every_run: tuple[str, ...]
    """Overrides every run gets (evaluation, logging, the task's horizon)."""
    sizes: tuple[str, ...]
    """Training-size overrides of every algorithm not in `sizes_by_algo`."""
    sizes_by_algo: Mapping[str, tuple[str, ...]]
    """Training-size overrides of the algorithms whose configs differ."""
    dynamics_models_args: tuple[str, ...]
    sysid_args: tuple[str, ...]
    gradient_norms_args: tuple[str, ...]
    study_args: tuple[str, ...] = ()
    """`benchmarks/study.py`'s arguments (its parts, seeds and runs root) for the study figure."""
    measurement_seeds: tuple[int, ...] | None = None
    """Data seeds of the dynamics-model and sysid measurements; None: `seeds`."""

    def overrides_for(self, method: Method) -> tuple[str, ...]:
        return (*self.every_run, *self.sizes_by_algo.get(method.algo, self.sizes))

    def episode_length(self, task: str) -> int:
        """The horizon of `task`'s runs: `every_run`'s `env.episode_length`, else the task's."""
        for override in self.every_run:
            key, _, value = override.partition("=")
            if key == "env.episode_length":
                return int(value)
        return EPISODE_LENGTHS[task]


EPISODE_LENGTHS = {
    "cartpole_swingup": 200,
    "cartpole_balance": 100,
    "double_cartpole_swingup": 150,
    "double_cartpole_balance": 100,
}
"""Each task's `env.episode_length` (experiments/conf/env/<task>.yaml; a test checks that
they agree), which decides how many episodes a real budget holds."""


INITIAL_TRAJECTORIES = 20
"""HDS's default number of random-command episodes before its first epoch (LoopConfig)."""


def at_budget(method: Method, budget: int, preset: Preset) -> Method:
    """`method` at `budget` real transitions. HDS with a budget smaller than its default
    initial data starts with the episodes the budget holds (and then collects no more)."""
    point = method.at("real.budget", budget)
    # The budget curve's methods run on every real task: the longest episode decides.
    held = budget // max(preset.episode_length(task) for task in preset.real_tasks)
    if method.algo == "hds" and held < INITIAL_TRAJECTORIES:
        # Not a swept key: the run's facts, and so its folder, stay those of its budget.
        overrides = (*point.overrides, f"real.initial_trajectories={held}")
        point = dataclasses.replace(point, overrides=overrides)
    return point


# Progress bars in a subprocess's captured output are noise; GIFs cost time nobody looks at.
_QUIET = ("run.animation=false", "run.progress_bar=false")

_PODS_SMOKE = ("algo.num_epochs=3", "algo.num_trajectories=8")
# Brax's agents at a size that compiles and trains in seconds: 3 evaluations, 8 envs.
_BRAX_SMOKE = ("algo.num_evals=3", "algo.num_envs=8", "algo.num_eval_envs=8")
_PPO_SMOKE = (
    *_BRAX_SMOKE,
    "algo.num_timesteps=2048",
    "algo.batch_size=8",
    "algo.num_minibatches=4",
    "algo.unroll_length=8",
)

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        seeds=(0, 1),
        tasks=("cartpole_balance",),
        real_tasks=("cartpole_balance",),
        betas=(0.25, 0.75),
        budgets=(1000, REAL_BUDGET),
        beta_models=("hds_residual", "hds_mlp"),
        left_out=("hds_ensemble",),
        profiles={},
        # 8 trajectories x 32 steps: exactly one of PODS's default 256-pair minibatches.
        every_run=(*_QUIET, "env.episode_length=32", "run.eval_trajectories=8"),
        sizes=_PODS_SMOKE,
        sizes_by_algo={
            # Short model and physics fits: at this size the figures only need them to run.
            "hds": (*_PODS_SMOKE, "model.max_steps=100"),
            "pods_sysid": (*_PODS_SMOKE, "sysid.num_steps=50"),
            # LQR trains nothing: it takes no epochs.
            "lqr": (),
            "apg": (*_BRAX_SMOKE, "algo.policy_updates=4", "algo.horizon_length=32"),
            **dict.fromkeys(("ppo", "ppo_dr"), _PPO_SMOKE),
        },
        dynamics_models_args=("--sizes", "500", "--max-steps", "200", "--test-trajectories", "4"),
        sysid_args=("--sizes", "500", "--test-trajectories", "4"),
        gradient_norms_args=("--horizons", "10", "50", "100", "200", "--batch", "8"),
        # make run's setting at the smoke sizes: 32-step episodes hold the budget's episodes.
        study_args=(
            *("--parts", "lab_b5000", "--seeds", "0", "--root", "outputs/study_smoke", "--set"),
            *_PODS_SMOKE,
            *("env.episode_length=32", "run.eval_trajectories=8", "sysid.num_steps=50"),
            "model.max_steps=100",
        ),
    ),
    "cpu": Preset(
        name="cpu",
        seeds=(0, 1, 2),
        tasks=("cartpole_swingup",),
        real_tasks=("cartpole_swingup",),
        betas=(0.25, HDS_BETA, 1.0),
        budgets=(1000, REAL_BUDGET),
        beta_models=("hds_residual",),
        # PODS's first order and PPO without randomization say nothing the others do not;
        # PPO + DR at half its default steps (it needs 2M to solve swing-up in sim on one
        # seed of three: a cost this preset cannot pay three times over).
        left_out=("pods_order1", "ppo"),
        profiles={"cartpole_swingup": ("lab",)},
        every_run=(*_QUIET, "run.eval_trajectories=32"),
        sizes=(),
        sizes_by_algo={"ppo_dr": ("algo.num_timesteps=1000000",)},
        dynamics_models_args=("--profile", "lab", "--sizes", "1000", "5000"),
        sysid_args=("--profile", "lab", "--sizes", "1000", "5000"),
        gradient_norms_args=(),
        # make run's setting and the target budget on the preset's seeds (the 10-seed study
        # is the paper preset's); the runs are the study's own, shared with the paper preset.
        study_args=(
            *("--parts", "lab_b5000", "lab_b1000", "--seeds", "0", "1", "2"),
            *("--root", "outputs/study"),
        ),
        # One data seed: each lab measurement costs minutes of a 2-core CPU; the figure's
        # spread over data seeds is the paper preset's.
        measurement_seeds=(0,),
    ),
    "paper": Preset(
        name="paper",
        seeds=(0, 1, 2, 3, 4),
        tasks=("cartpole_swingup", "cartpole_balance"),
        real_tasks=("cartpole_swingup",),
        betas=(0.0, 0.25, 0.5, 0.75, 1.0),
        budgets=(1000, 2000, REAL_BUDGET, 10000, 20000),
        beta_models=tuple(m.name for m in HDS_MODELS),
        left_out=(),
        profiles={"cartpole_swingup": ("lab", "friction"), "cartpole_balance": ("lab",)},
        every_run=(*_QUIET, "run.eval_trajectories=64"),
        sizes=(),
        sizes_by_algo={},
        dynamics_models_args=(),
        sysid_args=(),
        gradient_norms_args=(),
        study_args=("--root", "outputs/study"),  # every part, seeds 0-9
    ),
}


# -- Figures ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FigureSweep:
    """The runs one figure draws from."""

    name: str
    """The figure, and the folder under the runs root its sweeps write to."""
    tasks: tuple[str, ...]
    methods: tuple[Method, ...]
    seeds: tuple[int, ...]
    normalizer: Method | None = None
    """The oracle, where a figure may draw without it: from runs that carry their own
    `eval/score_real` (scored against an oracle of their own) `make` does not require its
    runs, and the figure then has no oracle bar or line. Its solved shares need no
    reference run; the normalized score that did is now `paper_figures.table`'s alone."""
    profiles: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """The real profiles of each task (`Preset.profiles`): one panel per task and profile."""

    def specs(self) -> list[RunSpec]:
        methods = self.methods
        if self.normalizer is not None and self.normalizer not in methods:
            methods = (*methods, self.normalizer)
        return [
            RunSpec(method, task, seed, profile)
            for task in self.tasks
            for profile in self.profiles.get(task, (None,))
            for method in methods
            if method.runs_on(task)
            for seed in self.seeds
        ]


def figure_sweeps(preset: Preset) -> dict[str, FigureSweep]:
    """Every run-based figure's sweep at this preset, in drawing order."""
    swept = [m for m in HDS_MODELS if m.name in preset.beta_models]
    betas = [m.at("algo.beta", b) for m in swept for b in preset.betas]
    betas += [m for m in HDS_MODELS if m not in swept]
    budgets = [at_budget(m, b, preset) for m in (HDS_RESIDUAL, PODS_SYSID) for b in preset.budgets]
    every_method = (PODS_1, PODS_2, *HDS_MODELS, APG, PPO, PPO_DR, PODS_SYSID, LQR)
    sweeps = [
        FigureSweep(
            "learning_curves",
            preset.tasks,
            (PODS_1, PODS_2, HDS_RESIDUAL, APG, PPO),
            preset.seeds,
        ),
        FigureSweep(
            "hds_beta",
            preset.real_tasks,
            (*betas, SIM_CEILING, PODS_SYSID, PPO_DR, ORACLE),
            preset.seeds,
        ),
        FigureSweep(
            "sim_vs_real", preset.tasks, (*every_method, ORACLE), preset.seeds, normalizer=ORACLE
        ),
        FigureSweep(
            "sample_efficiency", preset.real_tasks, (*budgets, PPO_DR, ORACLE), preset.seeds, ORACLE
        ),
    ]
    kept = lambda sweep: tuple(m for m in sweep.methods if m.name not in preset.left_out)
    return {
        sweep.name: dataclasses.replace(sweep, methods=kept(sweep), profiles=preset.profiles)
        for sweep in sweeps
    }


# -- Measurements that are not training runs ----------------------------------------------
@dataclasses.dataclass(frozen=True)
class Measurement:
    """A benchmark script, run as a subprocess, that writes one JSON file (`--out FILE`)."""

    script: str
    """Path from the repository root."""
    args: tuple[str, ...]
    output: str
    """File name under <runs root>/<figure>/."""


def figure_measurements(preset: Preset) -> dict[str, tuple[Measurement, ...]]:
    """Every benchmark-based figure's measurements at this preset, in drawing order."""
    return {
        "dynamics_models": (
            *(
                Measurement(
                    "benchmarks/dynamics_models.py",
                    (*preset.dynamics_models_args, "--seed", str(seed)),
                    f"dynamics_models_seed{seed}.json",
                )
                for seed in preset.measurement_seeds or preset.seeds
            ),
            *(
                Measurement(
                    "benchmarks/sysid.py",
                    (*preset.sysid_args, "--seed", str(seed)),
                    f"sysid_seed{seed}.json",
                )
                for seed in preset.measurement_seeds or preset.seeds
            ),
        ),
        "gradient_norms": (
            Measurement(
                "benchmarks/gradient_norms.py", preset.gradient_norms_args, "gradient_norms.json"
            ),
        ),
        "study": (Measurement("benchmarks/study.py", preset.study_args, "study.json"),),
    }
