"""The sim2real study over seeds, in solved shares: the lab swing-up, and the friction real
as the control where identification is exact. Runs what is missing, then prints JSON.

    .venv/bin/python benchmarks/study.py [--parts PART ...] [--seeds 0 1 ... 9] [--jobs 1]
        [--root outputs/study] [--mujoco] [--report-only] [--out FILE] [--set OVERRIDE ...]

A part is one training command, run once per seed: `python -m experiments.train PART'S
OVERRIDES seed=S`, into `ROOT/PART/seedS` (`hydra.run.dir`), its output in
`ROOT/PART/seedS.log`. `lab_b5000` is `make run` itself (HDS, and PODS in sim, the oracle,
PODS+sysid and the classical controller compared on the same held-out starts); the others
vary the real-data budget, HDS's beta, the identification family, the real, or run a Brax
baseline (`PARTS`). Every run of a seed is scored on that seed's held-out starts
(`sim2real.evaluation.seed_streams`), so any two methods pair up seed by seed.

It resumes: a seed whose run directory holds its `summary.json` is read, not run again, and
a seed killed mid-run continues from its checkpoint. A directory holding a run of another
command, or of a config the command no longer composes (a default changed since; compared
by `experiments.train.setting_fingerprint`), is refused in one line. `--report-only` runs
nothing and reports what is there. `--set` adds overrides to every part's command (tiny
sizes, for a check of the plumbing; its runs are another setting, so give them another
`--root`).

`--mujoco [ALGO ...]` also plays the policies of the parts (of these algorithms) on the
MuJoCo C engine of their real
(`python -m experiments.deploy RUN real.engine=mujoco --episodes E`, E the run's held-out
starts, from the same seed's starts), kept in `RUN/artifacts/deploy_<profile>_mujoco.json`.

The report, per real profile and per method (and its real budget):
- over the seeds, each figure's min, median, max, mean and the mean's 95% t-interval:
  solved share on the real (the Brax twin; MuJoCo C with --mujoco), in sim, and the returns;
- HDS against every other method, paired over the seeds both have: the mean difference of
  the real solved share with its 95% t-interval, wins / losses / ties, and the sign test's
  two-sided p-value (ties left out);
- the targets on the lab: HDS's mean real solved share at least 0.9 of the reference's (the
  better of the oracle and the classical controller), from at most 1,000 real transitions
  (the stretch: 400), on the Brax twin and on MuJoCo C, beside the other learners from as
  much real data (PODS+sysid) and which of them reach the same bar;
- each part's setting fingerprint and its seeds' commit and process seconds: `make run`
  prints the ranges of the part whose fingerprint its config has
  (`experiments.study_ranges`, from the kept report, written with
  `--out docs/results/data/study/study.json`; `python -m paper_figures.make study --preset
  paper --runs docs/results/data` draws it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# Run as a script, this file's folder comes first on sys.path, where
# benchmarks/dynamics_models.py would shadow the `dynamics_models` package.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
REPO = Path(HERE).parent
sys.path.insert(0, str(REPO))

from benchmarks.seed_spread import cpu, git_commit, launch, shown, spread  # noqa: E402

LOOP = {400: (2, 1), 1000: (3, 1), 5000: (10, 3)}
"""Real budget -> (`real.initial_trajectories`, `real.collect_trajectories`) for HDS: at 200
steps an episode, 400 transitions hold 2 episodes (the loop's minimum start, and no
collection after it), 1,000 hold 5 (3 random, then 1 of the policy at epochs 5 and 10), and
5,000 hold 25 (`make run`'s: 10 random, then 3 of the policy every 5 epochs, 5 times).
PODS+sysid spends the whole budget on random-command episodes."""


def budget(transitions: int) -> tuple[str, ...]:
    initial, collect = LOOP[transitions]
    return (
        f"real.budget={transitions}",
        f"real.initial_trajectories={initial}",
        f"real.collect_trajectories={collect}",
    )


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    overrides: tuple[str, ...]
    """After `python -m experiments.train`, before `seed=S`."""
    about: str
    variant: str = ""
    """Added to its methods' names where the part changes more than the budget, beta or
    identification family (which the names carry), so its cells stay apart."""


MAIN = ("experiment=main",)
"""`make run`: the 200-step swing-up against the lab, 64 held-out starts a seed."""
FRICTION = (*MAIN, "env.real_profile=friction")

PARTS = {
    part.name: part
    for part in (
        Part(
            "lab_b5000",
            MAIN,
            "make run: HDS (beta 0.5, 5,000), PODS in sim, oracle, PODS+sysid, energy_lqr",
        ),
        Part(
            "lab_b1000",
            (*MAIN, *budget(1000), "run.compare=[pods_sysid]"),
            "HDS and PODS+sysid (physics) at 1,000",
        ),
        Part(
            "lab_b400",
            (*MAIN, *budget(400), "run.compare=[pods_sysid]"),
            "HDS and PODS+sysid (physics) at 400",
        ),
        *(
            Part(
                f"lab_b{b}_sysid_lab",
                (
                    *MAIN,
                    "algo=pods_sysid",
                    "sysid.family=lab",
                    f"real.budget={b}",
                    "run.compare=[]",
                ),
                f"PODS+sysid, the lab family, at {b:,}",
            )
            for b in (1000, 400, 5000)
        ),
        *(
            Part(
                f"lab_b{b}_beta0.25",
                (*MAIN, *budget(b), "algo.beta=0.25", "run.compare=[]"),
                f"HDS, beta 0.25, at {b:,}",
            )
            for b in (1000, 400, 5000)
        ),
        Part(
            "lab_b1000_hist2",
            (*MAIN, *budget(1000), "env.action_history=2", "algo.num_trajectories=256")
            + ("run.compare=[]",),
            "HDS at 1,000 with the oracle's solving settings: 2 past commands observed, 256 "
            "rollouts an epoch",
            variant=", history 2, 256 rollouts",
        ),
        Part(
            "lab_b1000_sysid_lab_hist2",
            (
                *MAIN,
                "algo=pods_sysid",
                "sysid.family=lab",
                "real.budget=1000",
                "env.action_history=2",
                "algo.num_trajectories=256",
                "run.compare=[]",
            ),
            "PODS+sysid, the lab family, at 1,000 with the oracle's solving settings: 2 past "
            "commands observed, 256 rollouts an epoch",
            variant=", history 2, 256 rollouts",
        ),
        Part(
            "lab_b1000_hds_sysid_lab_hist2",
            (
                *MAIN,
                "algo=hds_sysid",
                "sysid.family=lab",
                "real.budget=1000",
                "real.initial_trajectories=5",
                "real.collect_trajectories=1",
                "env.action_history=2",
                "algo.num_trajectories=256",
                "run.compare=[]",
            ),
            "HDS in the simulator the lab family identifies from its first 5 real episodes "
            "(random commands, all 1,000 transitions), at lab_b1000_sysid_lab_hist2's settings",
            variant=", history 2, 256 rollouts",
        ),
        Part("lab_ppo_dr", (*MAIN, "algo=ppo_dr", "run.compare=[]"), "PPO + domain randomization"),
        Part("lab_apg", (*MAIN, "algo=apg", "run.compare=[]"), "Brax's APG"),
        Part("friction_b5000", FRICTION, "the friction real: make run's methods at 5,000"),
        Part(
            "friction_b1000",
            (*FRICTION, *budget(1000), "run.compare=[pods_sysid]"),
            "the friction real: HDS and PODS+sysid at 1,000",
        ),
    )
}
"""In the order they run by default: `make run`'s setting first, the target budget next."""

HDS_ALGOS = ("hds", "hds_sysid")
"""HDS, in the nominal simulator or in the identified one: what the targets are about."""
REAL_DATA_ALGOS = (*HDS_ALGOS, "pods_sysid")
"""The methods that learn from real transitions: their cells are per budget."""

FIGURES = (
    "solved_real",
    "solved_mujoco",
    "solved_sim",
    "return_real",
    "return_mujoco",
    "return_sim",
)
REFERENCES = ("oracle", "energy_lqr")
TARGET_SHARE = 0.9
TARGET_BUDGETS = {"target": 1000, "stretch": 400}


# -- Running ------------------------------------------------------------------------------
def command(part: Part, seed: int) -> list[str]:
    return ["python", "-m", "experiments.train", *part.overrides, f"seed={seed}"]


def setting_fingerprint(part: Part) -> str:
    """The fingerprint of the config `part`'s command composes today (any seed's)."""
    from hydra import compose, initialize_config_module

    from experiments.train import setting_fingerprint as fingerprint

    with initialize_config_module("experiments.conf", version_base="1.3"):
        return fingerprint(compose(config_name="config", overrides=[*part.overrides, "seed=0"]))


def stored_fingerprint(run: Path) -> str:
    from omegaconf import OmegaConf

    from experiments.train import setting_fingerprint as fingerprint

    return fingerprint(OmegaConf.load(run / ".hydra" / "config.yaml"))


def read_done(run: Path, part: Part, seed: int, fingerprint: str) -> dict | None:
    """The run's summary if `part`'s command finished there for `seed`; None if it has not;
    exits with one line if the directory holds another run."""
    overrides = run / ".hydra" / "overrides.yaml"
    if overrides.exists():
        import yaml

        found = yaml.safe_load(overrides.read_text()) or []
        expected = command(part, seed)[3:]
        if sorted(found) != sorted(expected):
            sys.exit(f"error: {run} holds a run of {found}, not {expected}; pick another --root")
    if not (run / "summary.json").exists():
        return None
    from omegaconf import OmegaConf

    # The run's summary is written before its compared runs start: done is all of them.
    compared = OmegaConf.load(run / ".hydra" / "config.yaml").run.compare
    if any(not (run / name / "summary.json").exists() for name in compared):
        return None
    if stored_fingerprint(run) != fingerprint:
        sys.exit(
            f"error: {run} holds a run of another config than {part.name}'s command composes "
            "today (a default changed since); move it away or pick another --root"
        )
    return json.loads((run / "summary.json").read_text())


def policy_dirs(run: Path) -> list[Path]:
    """The run's own directory and its compared runs' (`run.compare`), each a run directory."""
    compared = sorted(p.parent for p in run.glob("*/summary.json"))
    return [run, *compared]


def deploy_mujoco(policy_dir: Path, summary: dict) -> dict | None:
    """The policy's episodes on the MuJoCo C engine of its real (played once, then read)."""
    profile = summary["real/profile"]
    path = policy_dir / "artifacts" / f"deploy_{profile}_mujoco.json"
    if not path.exists():
        episodes = str(summary["eval/trajectories"])
        code = launch(
            [sys.executable, "-m", "experiments.deploy", str(policy_dir), "real.engine=mujoco"]
            + ["--episodes", episodes],
            policy_dir.parent / f"{policy_dir.name}.deploy.log",
        )
        if code != 0 or not path.exists():
            print(f"{policy_dir}: deploy on MuJoCo C failed ({code})", file=sys.stderr)
            return None
    return json.loads(path.read_text())


def run_seed(part: Part, seed: int, args, fingerprint: str) -> dict:
    folder = args.root / part.name
    run = folder / f"seed{seed}"
    summary = read_done(run, part, seed, fingerprint)
    process_file = folder / f"seed{seed}.process.json"
    if summary is None and not args.report_only:
        folder.mkdir(parents=True, exist_ok=True)
        line = [sys.executable, *command(part, seed)[1:], f"hydra.run.dir={run}"]
        commit, load = git_commit(), os.getloadavg()[0]
        start = time.perf_counter()
        code = launch(line, folder / f"seed{seed}.log")
        summary = read_done(run, part, seed, fingerprint)
        if code != 0 or summary is None:
            print(f"{part.name} seed {seed}: exit code {code}, see {run}.log", file=sys.stderr)
            return {"seed": seed, "failed": code or "no summary.json"}
        process = {
            "commit": commit,
            "process_s": round(time.perf_counter() - start, 1),
            "load_average_1m_before": round(load, 2),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        process_file.write_text(json.dumps(process) + "\n")
    if summary is None:
        return {"seed": seed, "missing": True}
    policies = []
    for policy_dir in policy_dirs(run):
        policy = json.loads((policy_dir / "summary.json").read_text())
        chosen = args.mujoco is not None and (not args.mujoco or policy["algo"] in args.mujoco)
        mujoco = deploy_mujoco(policy_dir, policy) if chosen and not args.report_only else None
        if mujoco is None:
            found = policy_dir / "artifacts" / f"deploy_{policy['real/profile']}_mujoco.json"
            mujoco = json.loads(found.read_text()) if found.exists() else None
        policies.append(policy_row(policy, mujoco, part.variant))
    row = {"seed": seed, "policies": policies}
    if process_file.exists():
        row.update(json.loads(process_file.read_text()))
    return row


def policy_row(summary: dict, mujoco: dict | None, variant: str = "") -> dict:
    """One policy of one seed: what it is, and its figures."""
    return {
        "method": method_name(summary) + variant,
        "algo": summary["algo"],
        "budget": summary.get("real/budget") if summary["algo"] in REAL_DATA_ALGOS else None,
        "profile": summary["real/profile"],
        "solved_real": summary["eval/solved_real"],
        "solved_sim": summary["eval/solved_sim"],
        "return_real": summary["eval/return_real"],
        "return_sim": summary["eval/return_sim"],
        "solved_mujoco": None if mujoco is None else mujoco["solved"],
        "return_mujoco": None if mujoco is None else mujoco["return_mean"],
        "real_transitions": summary.get("real/transitions"),
    }


def method_name(summary: dict) -> str:
    """`hds beta=0.5`, `hds beta=0.5, sysid (lab)` (HDS in the identified simulator, a
    variant of HDS), `pods_sysid (lab)`, or the algorithm's name."""
    algo, family = summary["algo"], summary.get("sysid/family", "physics")
    if algo in HDS_ALGOS:
        name = f"hds beta={summary['hds/beta']:g}"
        return name + (f", sysid ({family})" if algo == "hds_sysid" else "")
    if algo == "pods_sysid":
        return f"pods_sysid ({family})"
    return algo


# -- The report ---------------------------------------------------------------------------
def cell_key(row: dict) -> str:
    return row["method"] + ("" if row["budget"] is None else f" @{row['budget']}")


def cells(parts: dict[str, list[dict]]) -> dict[str, dict[str, dict[int, dict]]]:
    """profile -> method (and budget) -> seed -> the policy's row. A method run by two parts
    (PODS in sim at two budgets' settings, say) keeps the first part's."""
    table: dict[str, dict[str, dict[int, dict]]] = {}
    for rows in parts.values():
        for seed_row in rows:
            for policy in seed_row.get("policies", ()):
                by_seed = table.setdefault(policy["profile"], {}).setdefault(cell_key(policy), {})
                by_seed.setdefault(seed_row["seed"], policy)
    return table


def distribution(by_seed: dict[int, dict]) -> dict:
    seeds = sorted(by_seed)
    out = {"seeds": seeds}
    for figure in FIGURES:
        values = {s: by_seed[s][figure] for s in seeds if by_seed[s][figure] is not None}
        if values:
            out[figure] = {**spread(values.values()), "per_seed": values}
    return out


def paired(a: dict[int, dict], b: dict[int, dict], figure: str = "solved_real") -> dict | None:
    """`a` - `b` over the seeds both have: mean with its 95% t-interval, wins / losses /
    ties of `a`, and the sign test's two-sided p-value (ties left out)."""
    from scipy import stats

    seeds = sorted(s for s in a if s in b and a[s][figure] is not None and b[s][figure] is not None)
    if not seeds:
        return None
    diff = np.array([a[s][figure] - b[s][figure] for s in seeds], np.float64)
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    p = stats.binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
    difference = spread(diff)
    return {
        "n": len(seeds),
        "difference": {"mean": difference["mean"], "ci95": difference["ci95"]},
        "wins": wins,
        "losses": losses,
        "ties": len(seeds) - wins - losses,
        "sign_test_p": float(p),
    }


def comparisons(table: dict[str, dict[int, dict]]) -> dict[str, dict[str, dict]]:
    """Every HDS cell of one profile against every other cell there, on real solved shares
    (the Brax twin; and MuJoCo C where both have it)."""
    out: dict[str, dict[str, dict]] = {}
    for hds in (k for k in table if k.startswith("hds ")):
        for rival, by_seed in table.items():
            if rival == hds:
                continue
            twin = paired(table[hds], by_seed)
            if twin is None:
                continue
            entry = {"solved_real": twin}
            mujoco = paired(table[hds], by_seed, "solved_mujoco")
            if mujoco is not None:
                entry["solved_mujoco"] = mujoco
            out.setdefault(hds, {})[rival] = entry
    return out


def targets(table: dict[str, dict[int, dict]]) -> dict | None:
    """HDS's mean real solved share against TARGET_SHARE of the reference's, at the target
    and stretch budgets, on each engine measured."""
    out = {}
    for engine, figure in (("brax twin", "solved_real"), ("mujoco c", "solved_mujoco")):
        reference = None
        for name in REFERENCES:
            d = distribution(table[name]).get(figure) if name in table else None
            if d is not None and (reference is None or d["mean"] > reference[1]):
                reference = (name, d["mean"], d["n"])
        if reference is None:
            continue
        for goal, most in TARGET_BUDGETS.items():
            reached, others = {}, {}
            for key, by_seed in table.items():
                row = next(iter(by_seed.values()))
                d = distribution(by_seed).get(figure)
                if row["budget"] is None or row["budget"] > most or d is None:
                    continue
                (reached if row["algo"] in HDS_ALGOS else others)[key] = {
                    "mean": d["mean"],
                    "n": d["n"],
                }
            threshold = TARGET_SHARE * reference[1]
            best = max(reached.values(), key=lambda r: r["mean"], default=None)
            out[f"{goal} ({engine})"] = {
                "target": (
                    f"HDS's mean real solved share >= {TARGET_SHARE} x {reference[0]}'s "
                    f"{reference[1]:.3f} (n={reference[2]}) from <= {most} real transitions"
                ),
                "reached": reached,
                "met": best is not None and best["mean"] >= threshold,
                # The other learners from as much real data: whether any reaches the bar.
                "others": others,
                "others_met": sorted(k for k, r in others.items() if r["mean"] >= threshold),
            }
    return out or None


def report(
    parts: dict[str, list[dict]], fingerprints: dict[str, str], args, chosen: dict[str, Part]
) -> dict:
    table = cells(parts)
    profiles = {
        profile: {
            "methods": {key: distribution(by_seed) for key, by_seed in methods.items()},
            "hds_paired": comparisons(methods),
        }
        for profile, methods in table.items()
    }
    if "lab" in table:
        profiles["lab"]["targets"] = targets(table["lab"])
    return {
        "benchmark": "study",
        "cpu": cpu(),
        "seeds": args.seeds,
        "parts": {
            name: {
                "command": " ".join(command(chosen[name], "S")),  # type: ignore[arg-type]
                "about": chosen[name].about,
                "fingerprint": fingerprints[name],
                "run_dirs": f"{shown(args.root / name)}/seedS",
                "done": [r["seed"] for r in rows if "policies" in r],
                "missing": [r["seed"] for r in rows if "policies" not in r],
                "process": {
                    str(r["seed"]): {k: r[k] for k in ("commit", "process_s") if k in r}
                    for r in rows
                    if "process_s" in r
                },
                "ranges": part_ranges(rows),
            }
            for name, rows in parts.items()
        },
        "profiles": profiles,
    }


def part_ranges(rows: list[dict]) -> dict[str, dict]:
    """algo -> figure -> the seeds' min, median and max, for the runs of one part (what
    `make run` prints beside its own figures; the profiles' cells hold the rest)."""
    by_algo: dict[str, dict[int, dict]] = {}
    for seed_row in rows:
        for policy in seed_row.get("policies", ()):
            by_algo.setdefault(policy["algo"], {})[seed_row["seed"]] = policy
    return {
        algo: {
            figure: {k: d[k] for k in ("min", "median", "max")}
            for figure, d in distribution(by_seed).items()
            if figure in FIGURES
        }
        for algo, by_seed in by_algo.items()
    }


def rounded(tree, digits: int = 5):
    """`tree` with its floats rounded to `digits` decimals: a share of 64 starts or a return
    needs no more, and the kept report stays small enough to read."""
    if isinstance(tree, float):
        return round(tree, digits)
    if isinstance(tree, dict):
        return {k: rounded(v, digits) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [rounded(v, digits) for v in tree]
    return tree


def parse(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="*", default=list(PARTS), metavar="PART")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--root", type=Path, default=REPO / "outputs" / "study")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--mujoco",
        nargs="*",
        metavar="ALGO",
        help="also play the policies of these algorithms (all, if none named) on MuJoCo C",
    )
    parser.add_argument("--report-only", action="store_true", help="run nothing")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="OVERRIDE", help="added to every part's command"
    )
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown or not args.parts:
        parser.error(f"unknown --parts {unknown}; expected some of {list(PARTS)}")
    algos = sorted(p.stem for p in (REPO / "experiments" / "conf" / "algo").glob("*.yaml"))
    if args.mujoco and (wrong := [a for a in args.mujoco if a not in algos]):
        parser.error(f"unknown --mujoco {wrong}; expected some of {algos}")
    if not args.seeds or any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    for override in args.set:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" not in override or key == "seed" or key.startswith("hydra."):
            parser.error(
                f"--set {override!r}: give key=value overrides other than seed and hydra.*"
            )
    args.root = args.root.resolve()  # the runs' working directory is the repository's
    return args


def main(argv=None) -> int:
    args = parse(argv)
    chosen = {
        name: dataclasses.replace(PARTS[name], overrides=(*PARTS[name].overrides, *args.set))
        for name in args.parts
    }
    fingerprints = {name: setting_fingerprint(part) for name, part in chosen.items()}
    parts = {}
    for name, part in chosen.items():
        with ThreadPoolExecutor(args.jobs) as pool:
            work = lambda seed, part=part: run_seed(part, seed, args, fingerprints[part.name])
            parts[name] = list(pool.map(work, args.seeds))
    failed = [(n, r) for n, rows in parts.items() for r in rows if "failed" in r]
    result = report(parts, fingerprints, args, chosen)
    result["failed"] = [{"part": n, **r} for n, r in failed]
    text = json.dumps(rounded(result), indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
