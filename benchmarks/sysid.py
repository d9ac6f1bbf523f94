"""System identification of the real cart-pole: recovered physics vs the truth, and the k-step
prediction error of the plain and the identified simulator, against the number of real
transitions. Prints JSON.

    .venv/bin/python benchmarks/sysid.py [--sizes 1000 5000 10000] [--obs-noise 0.0] [--out FILE]

Data: `cartpole_swingup_real` (`--profile friction`, the default: the simulator's own family,
where identification must be exact) or `cartpole_swingup_lab` (`--profile lab`: the lab rig,
whose latency, lag, stiction, cable, cogging, body and sensors no parameter of the family
describes; there "the truth" compares only the in-family part) from its swing-up start, driven by random commands with lag-1
correlation 0.8 (as in benchmarks/dynamics_models.py); 100-step trajectories. The fits use the
first 1,000 / 5,000 / 10,000 transitions of one collection; the test set is 20 further
trajectories from another seed, never fitted on. `--obs-noise` adds Gaussian noise of that
standard deviation to every recorded observation of the fitting data (not the test set).

Fit: `sim2real.sysid.identify` with its default `SysIDConfig`, starting from the `sim`
values. k-step RMSE (`dynamics_models.k_step_error`) over the state coordinates
[x, theta, xdot, thetadot] (theta wrapped), open loop from every 5th start. `fit_seconds` is
the wall time of `identify`, compilation included (cached across runs by the persistent
compilation cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

# Run as a script, this file's folder comes first on sys.path, where benchmarks/dynamics_models.py
# would shadow the `dynamics_models` package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dynamics_models import collect_transitions, k_step_error  # noqa: E402
from pods.runtime import configure_jax, filter_known_xla_logs  # noqa: E402
from sim2real import REAL_PROFILES, make_testbed  # noqa: E402
from sim2real.sysid import SysIDConfig, identify  # noqa: E402

KS = (1, 10, 50)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1000, 5000, 10000],
        help="numbers of real transitions to fit on (multiples of 100)",
    )
    parser.add_argument("--test-trajectories", type=int, default=20)
    parser.add_argument("--obs-noise", type=float, default=0.0)
    parser.add_argument(
        "--profile",
        choices=("friction", "lab"),
        default="friction",
        help="the real system: the in-family friction profile (the control) or the lab rig",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    filter_known_xla_logs()
    configure_jax()

    horizon = 100
    real = make_testbed(f"cartpole_swingup_{REAL_PROFILES[args.profile]}", episode_length=horizon)
    sim = make_testbed("cartpole_swingup_sim", episode_length=horizon)
    key_data, key_test, key_noise, key_fit = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    start = time.perf_counter()
    # One collection serves every size (its first n transitions), and one more is held out.
    data = collect_transitions(
        real, key_data, -(-max(args.sizes) // horizon), action_correlation=0.8
    )
    test = collect_transitions(real, key_test, args.test_trajectories, action_correlation=0.8)
    if args.obs_noise > 0:
        noise = np.random.default_rng(args.seed).normal(
            0.0, args.obs_noise, data.observations.shape
        )
        data = dataclasses.replace(data, observations=data.observations + noise.astype(np.float32))
    collect_seconds = time.perf_counter() - start

    def evaluate(env) -> dict:
        return k_step_error(env, test, max(KS), start_stride=5).to_json(KS)

    config = SysIDConfig()
    truth = dataclasses.asdict(real.physics)
    report = {
        "command": "python benchmarks/sysid.py " + " ".join(argv or sys.argv[1:]),
        "testbed": real.name,
        "profile": args.profile,
        "physics_real": truth,
        "lab_effects": None if real.lab is None else dataclasses.asdict(real.lab),
        "physics_sim": dataclasses.asdict(sim.physics),
        "sysid_config": dataclasses.asdict(config),
        "obs_noise": args.obs_noise,
        "state_coordinates": ["x", "theta", "xdot", "thetadot"],
        "test": {"trajectories": test.n_trajectories, "horizon": horizon, "start_stride": 5},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        "collect_seconds": round(collect_seconds, 2),
        "sim": evaluate(sim),
        "results": {},
    }
    for size in args.sizes:
        fit_start = time.perf_counter()
        physics, history = identify(
            config, sim, data.first(size), jax.random.fold_in(key_fit, size)
        )
        fit_seconds = time.perf_counter() - fit_start
        identified = dataclasses.asdict(physics)
        row = {
            "physics": identified,
            "relative_error": {
                name: identified[name] / truth[name] - 1.0 for name in config.parameters
            },
            "final_loss": float(history["sysid/loss"][-1]),
            "rejected_nonfinite": int(history["sysid/rejected_nonfinite"].sum()),
            "fit_seconds": round(fit_seconds, 2),
            "identified_sim": evaluate(sim.with_physics(physics)),
        }
        report["results"][str(size)] = row
        print(
            f"{size:>6} relative error "
            f"{ {k: round(v, 4) for k, v in row['relative_error'].items()} } "
            f"rmse@{KS} sim {[round(x, 4) for x in report['sim']['rmse']]} "
            f"identified {[round(x, 4) for x in row['identified_sim']['rmse']]} "
            f"fit {row['fit_seconds']} s",
            file=sys.stderr,
        )
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
