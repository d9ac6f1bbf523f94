"""Policy optimization through differentiable simulation: rollouts, PODS and HDS.

Works on any env with the Brax `Env` contract; knows nothing of where an env comes from.
"""

import contextlib
import io

# mujoco.mjx (imported by brax) prints to stdout when its optional GPU backend, warp, is
# missing; keep stdout clean for the tools that print JSON.
with contextlib.redirect_stdout(io.StringIO()):
    import brax.envs  # noqa: F401

from pods.rollout import Policy, Trajectory, reset_batch, rollout_actions, rollout_policy

__all__ = ["Policy", "Trajectory", "reset_batch", "rollout_actions", "rollout_policy"]
