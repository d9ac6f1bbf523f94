"""Sim and real testbeds, the real-system boundary, and sim-vs-real evaluation.

Importing this package registers every testbed with `brax.envs`.
"""

from pods.runtime import import_brax_quietly

import_brax_quietly()  # before the modules below import brax

from sim2real.lab import LabEffects
from sim2real.testbed_spec import (
    REAL_PROFILES,
    SYSTEMS,
    TASKS,
    VARIANTS,
    InitialStateNoise,
    Physics,
    RewardWeights,
    list_testbeds,
    parse_testbed_name,
)
from sim2real.testbeds import BACKENDS, CartPole, make_testbed

__all__ = [
    "BACKENDS",
    "SYSTEMS",
    "TASKS",
    "VARIANTS",
    "CartPole",
    "InitialStateNoise",
    "LabEffects",
    "Physics",
    "REAL_PROFILES",
    "RewardWeights",
    "make_testbed",
    "parse_testbed_name",
    "list_testbeds",
]
