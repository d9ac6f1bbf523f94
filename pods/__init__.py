"""Policy optimization through differentiable simulation: rollouts, PODS and HDS.

Works on any env with the Brax `Env` contract; knows nothing of where an env comes from.
"""

from pods.runtime import import_brax_quietly

import_brax_quietly()  # before the modules below import brax

from pods.config import PODSConfig
from pods.derivatives import action_gradient, gauss_newton_matrix
from pods.distill import DistillationResult, distill_policy
from pods.feedback import improve_with_feedback
from pods.improve import improve_actions
from pods.networks import PolicyNetwork, PolicyParams
from pods.rollout import (
    Episode,
    Policy,
    Trajectory,
    episode_of_actions,
    episode_of_policy,
    evaluate_policy,
    reset_batch,
    trajectory_of_actions,
    trajectory_of_policy,
)
from pods.state import TrainingState
from pods.step_size import ImprovementStep, LineSearchResult, line_search, step_size_grid
from pods.train import make_pods, train

__all__ = [
    "DistillationResult",
    "Episode",
    "ImprovementStep",
    "LineSearchResult",
    "PODSConfig",
    "Policy",
    "PolicyNetwork",
    "PolicyParams",
    "TrainingState",
    "Trajectory",
    "action_gradient",
    "distill_policy",
    "episode_of_actions",
    "episode_of_policy",
    "evaluate_policy",
    "gauss_newton_matrix",
    "improve_actions",
    "improve_with_feedback",
    "line_search",
    "make_pods",
    "reset_batch",
    "trajectory_of_actions",
    "trajectory_of_policy",
    "step_size_grid",
    "train",
]
