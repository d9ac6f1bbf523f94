"""System identification of the real cart-pole: recovered physics vs the truth, and the k-step
prediction error of the plain and the identified simulator, against the number of real
transitions. Prints JSON.

    .venv/bin/python benchmarks/sysid.py [--sizes 1000 5000 10000] [--obs-noise 0.0] [--out FILE]
    .venv/bin/python benchmarks/sysid.py --profile lab --families physics lab --horizon 200 \
        --sizes 1000 5000 [--engine mujoco] [--cart-mass-scale 1.15]

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

`--families physics lab` fits both families (`SysIDConfig.family`); the lab family's rows
(`results_lab`) give each identified value beside the lab's truth: the latency (physics steps
of 5 ms), tau, the pole's mass and length, the damping, friction and gain. Motion fixes masses
and forces only up to one factor (sim2real/sysid_lab.py), so the cart's mass is given
(`--cart-mass-scale`, 1.0: the nominal 1 kg, unweighed; 1.15: the lab's, weighed) and
`truth_at_anchor` is the truth in those units: every mass and force times anchor / 1.15.
The lab family's simulator has no k-step error here (a lab testbed cannot be placed at a
recorded observation without its actuator's state); its fit loss (`delay_loss`, over every
window) stands for it. `--engine mujoco` collects from the MuJoCo C lab instead of the twin.
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
from sim2real.real_system import RealSystem  # noqa: E402
from sim2real.sysid import SysIDConfig, identify  # noqa: E402
from sim2real.sysid_lab import identify_lab  # noqa: E402

KS = (1, 10, 50)
SWITCHES = {
    "stiction": {"stiction": 0.0},
    "cable": {"cable_stiffness": 0.0},
    "cogging": {"cogging_amplitude": 0.0},
    "sensors": {
        "position_resolution": 0.0,
        "angle_resolution": 0.0,
        "linear_velocity_noise": 0.0,
        "angular_velocity_noise": 0.0,
    },
}
"""`--switch-off`: the lab's effects outside both families, and the fields that turn each off."""


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
    parser.add_argument("--families", nargs="+", choices=("physics", "lab"), default=["physics"])
    parser.add_argument("--horizon", type=int, default=100, help="steps per episode")
    parser.add_argument("--engine", choices=("brax", "mujoco"), default="brax")
    parser.add_argument("--cart-mass-scale", type=float, default=1.0)
    parser.add_argument("--max-delay-steps", type=int, default=8)
    parser.add_argument(
        "--switch-off",
        nargs="*",
        choices=tuple(SWITCHES),
        default=[],
        help="lab effects to switch off in the real (what the lab family cannot describe)",
    )
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    configure_jax()

    horizon = args.horizon
    real = make_testbed(f"cartpole_swingup_{REAL_PROFILES[args.profile]}", episode_length=horizon)
    if args.switch_off:
        off = {field: value for name in args.switch_off for field, value in SWITCHES[name].items()}
        real = make_testbed(
            real.name,
            episode_length=horizon,
            physics=real.physics,
            lab=dataclasses.replace(real.lab, **off),
        )
    sim = make_testbed("cartpole_swingup_sim", episode_length=horizon)
    key_data, key_test, key_noise, key_fit = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    start = time.perf_counter()
    # One collection serves every size (its first n transitions), and one more is held out.
    n_data = -(-max(args.sizes) // horizon)
    if args.engine == "mujoco":
        from dynamics_models import TransitionDataset
        from sim2real.mujoco_lab import MujocoCartPole

        def collect(key, n):
            engine = MujocoCartPole(
                "cartpole",
                "swingup",
                real.variant,
                episode_length=horizon,
                physics=real.physics,
                lab=real.lab,
            )
            played = RealSystem(engine, n * horizon).play_random(key, n, correlation=0.8)
            return TransitionDataset(np.asarray(played.observations), np.asarray(played.actions))

        data, test = collect(key_data, n_data), collect(key_test, args.test_trajectories)
    else:
        data = collect_transitions(real, key_data, n_data, action_correlation=0.8)
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
        "engine": args.engine,
        "switched_off": args.switch_off,
        "horizon": horizon,
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
        "results_lab": {},
    }
    for size in args.sizes:
        if "lab" in args.families:
            report["results_lab"][str(size)] = _lab_row(args, sim, real, data.first(size), key_fit)
        if "physics" not in args.families:
            continue
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
    if "physics" not in args.families:
        del report["results"]
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


def lab_truth(real, anchor: float) -> dict:
    """The lab's values in the lab family's terms, and in the units the anchor fixes (a cart
    of `anchor` x 1 kg): every mass and force times anchor / the lab's cart scale."""
    lab, physics = real.lab, real.physics
    k = anchor / (lab.cart_mass_scale if lab is not None else 1.0)
    truth = {
        "latency_steps": lab.latency_steps if lab is not None else 0,
        "motor_time_constant": lab.motor_time_constant if lab is not None else 0.0,
        "cart_mass_kg": (lab.cart_mass_scale if lab is not None else 1.0) * 1.0,
        "pole_mass_kg": 0.1 * (lab.pole_mass_scale if lab is not None else 1.0),
        "pole_length_scale": lab.pole_length_scale if lab is not None else 1.0,
        "pole_com_scale": lab.pole_com_scale if lab is not None else 1.0,
        **dataclasses.asdict(physics),
    }
    scaled = ("cart_mass_kg", "pole_mass_kg", "slider_damping", "hinge_damping")
    scaled += ("slider_friction", "actuator_gain")
    return truth, {name: truth[name] * k if name in scaled else truth[name] for name in truth}


def _lab_row(args, sim, real, data, key_fit) -> dict:
    config = SysIDConfig(
        family="lab", cart_mass_scale=args.cart_mass_scale, max_delay_steps=args.max_delay_steps
    )
    fit_start = time.perf_counter()
    physics, lab, history = identify_lab(config, sim, data, jax.random.fold_in(key_fit, 1))
    identified = {
        "latency_steps": lab.latency_steps,
        "motor_time_constant": lab.motor_time_constant,
        "cart_mass_kg": lab.cart_mass_scale,
        "pole_mass_kg": 0.1 * lab.pole_mass_scale,
        "pole_length_scale": lab.pole_length_scale,
        "pole_com_scale": lab.pole_com_scale,
        **dataclasses.asdict(physics),
    }
    truth, at_anchor = lab_truth(real, args.cart_mass_scale)
    row = {
        "identified": identified,
        "truth": truth,
        "truth_at_anchor": at_anchor,
        "relative_error_at_anchor": {
            name: identified[name] / at_anchor[name] - 1.0
            for name in identified
            if isinstance(at_anchor[name], float) and at_anchor[name] > 0
        },
        "final_loss": float(history["sysid/loss"][-1]),
        "delay_loss": [float(x) for x in history["sysid/delay_loss"]],
        "rejected_nonfinite": int(history["sysid/rejected_nonfinite"].sum()),
        "fit_seconds": round(time.perf_counter() - fit_start, 2),
    }
    print(
        f"{data.n_trajectories * data.horizon:>6} lab family: latency {lab.latency_steps} "
        f"tau {lab.motor_time_constant:.4f} pole {identified['pole_mass_kg']:.4f} kg "
        f"length {lab.pole_length_scale:.3f} gain {physics.actuator_gain:.3f} "
        f"loss {row['final_loss']:.3g} fit {row['fit_seconds']} s",
        file=sys.stderr,
    )
    return row


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
