"""Policy optimization through differentiable simulation: rollouts, PODS and HDS.

Works on any env with the Brax `Env` contract; knows nothing of where an env comes from.
"""

from pods.rollout import Policy, Trajectory, reset_batch, rollout_actions, rollout_policy

__all__ = ["Policy", "Trajectory", "reset_batch", "rollout_actions", "rollout_policy"]
