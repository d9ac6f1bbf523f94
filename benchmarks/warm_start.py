"""Where the seconds before PODS's first epoch go, phase by phase; prints JSON.

Builds the testbed, PODS and its training state at the solving settings
(`experiments/conf/solving/pods.yaml`), then traces and lowers the epoch, compiles it (a
load from the persistent cache when warm) and runs it once. Each phase reports its wall time
and the `jax.monitoring` durations it recorded (tracing, lowering, backend compiles, cache
loads). Run it twice on one cache: the first run fills the cache, the second is a warm
start. With `--stored` the epoch comes from a `pods.programs.ProgramStore` in the cache's
`programs/` folder, as the command line's does: exported and saved on the first run, loaded
without tracing on the next.

    .venv/bin/python benchmarks/warm_start.py --cache DIR [--backend chain] [--stored]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import time

import jax
import jax.monitoring

from experiments.conf import solving_pods_fields
from pods.runtime import configure_jax, filter_known_xla_logs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", required=True, help="the persistent compilation cache folder")
    parser.add_argument("--env", default="cartpole_swingup_sim")
    parser.add_argument("--backend", default="chain")
    parser.add_argument(
        "--stored", action="store_true", help="the epoch through the cache's program store"
    )
    args = parser.parse_args()
    cache = configure_jax(cache_dir=args.cache)

    durations: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()

    def listen(event: str, seconds: float, **_) -> None:
        durations[event.rsplit("/", 1)[-1]] += seconds
        counts[event.rsplit("/", 1)[-1]] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    phases = []

    def phase(name, fn):
        before, seen = dict(durations), dict(counts)
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        events = {
            event: {
                "s": round(total - before.get(event, 0.0), 3),
                "n": counts[event] - seen.get(event, 0),
            }
            for event, total in durations.items()
            if counts[event] > seen.get(event, 0)
        }
        phases.append({"phase": name, "s": round(time.perf_counter() - start, 3), "events": events})
        return out

    from pods.config import PODSConfig
    from pods.programs import ProgramStore
    from pods.state import init_training_state
    from pods.train import make_pods
    from sim2real import make_testbed

    env = phase("testbed", lambda: make_testbed(args.env, backend=args.backend))
    settings = solving_pods_fields()
    config = PODSConfig(**settings)
    pods = phase("make_pods", lambda: make_pods(config, env))
    state = phase(
        "training_state",
        lambda: init_training_state(config, env, pods.network, jax.random.PRNGKey(0)),
    )
    key = jax.random.PRNGKey(1)
    if args.stored:
        store = ProgramStore(cache / "programs", context=f"{args.env} {args.backend}")
        description = repr(config)
        epoch = phase(
            "program",
            lambda: store.program("pods_epoch", pods.epoch, (state, key), description=description),
        )
        phase("first_epoch", lambda: epoch(state, key))
    else:
        lowered = phase("trace_and_lower", lambda: jax.jit(pods.epoch).lower(state, key))
        compiled = phase("compile", lowered.compile)
        phase("first_epoch", lambda: compiled(state, key))
    print(
        json.dumps(
            {
                "env": args.env,
                "backend": args.backend,
                "stored": args.stored,
                "settings": settings,
                "machine": platform.processor() or platform.machine(),
                "phases": phases,
                "first_epoch_on_the_trainer_clock_s": round(sum(p["s"] for p in phases[1:]), 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
