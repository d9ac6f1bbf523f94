"""Baselines run on the same testbeds, seeds and evaluation as PODS and HDS: Brax's own APG and
PPO (with domain randomization) through thin adapters, and LQR on the balance tasks.

Each algorithm's module follows the library convention: a frozen config dataclass and a pure
`train(config, env, key, *, progress_fn=None)` returning `(make_policy, params, metrics)`;
`domain_randomization` holds PPO's ranges of the physics.
"""

from pods.runtime import import_brax_quietly

import_brax_quietly()
