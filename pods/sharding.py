"""Spreading an epoch's rollouts over the local devices.

An epoch's k rollouts are independent until distillation pools them, so they are the axis
to split: `trajectory_mesh` lays the devices out along it and `shard_trajectories` pins the
initial states of a batch to it; XLA's sharding propagation carries that split through the
rollouts, their derivatives and the line search's candidates (vmapped over the same axis),
and gathers what distillation and the metrics pool. With one device there is no mesh and no
constraint: the program is exactly the unsharded one.

k must be a multiple of the device count. It is checked when a program is built
(`check_divisible`, one line naming the size and the devices), not padded: padding would add
rollouts that the elite and every metric would have to leave out.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TRAJECTORIES = "trajectories"
"""The mesh axis an epoch's rollouts are split along."""


def trajectory_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A one-axis mesh of `devices` (default: every local device) along the rollouts; None
    where there is only one device, so that nothing is sharded."""
    devices = jax.local_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: give at least one device to run on")
    if len(devices) == 1:
        return None
    return Mesh(np.asarray(devices), (TRAJECTORIES,))


def device_count(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.devices.size


def check_divisible(count: int, sizes: dict[str, int], *, fewer: str = "fewer devices") -> None:
    """Raises one ValueError line for a batch size that `count` devices cannot split
    evenly; `sizes` maps a description of each batch (naming its config field) to its size
    (0, an empty group, splits). `fewer` says how to ask for fewer devices."""
    for what, size in sizes.items():
        if size % count:
            raise ValueError(
                f"{what} does not split over the {count} devices the rollouts are sharded "
                f"over: give a multiple of {count}, or {fewer}"
            )


def shard_trajectories(tree, mesh: Mesh | None):
    """`tree` (every leaf with the rollouts on its leading axis), constrained to be split
    along that axis over `mesh`; `tree` itself without a mesh. For use inside `jit`."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, PartitionSpec(TRAJECTORIES)))


__all__ = [
    "TRAJECTORIES",
    "check_divisible",
    "device_count",
    "shard_trajectories",
    "trajectory_mesh",
]
