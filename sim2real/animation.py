"""Animations of cart-pole rollouts, viewable offline (GIF), drawn from observations alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pole_points(observation: np.ndarray, pole_lengths: Sequence[float]) -> np.ndarray:
    """(n_poles + 1, 2) points in the x-z plane: the cart's pivot, then each pole's tip."""
    n_poles = len(pole_lengths)
    x = observation[0]
    cos_sin = observation[1 : 1 + 2 * n_poles].reshape(n_poles, 2)
    absolute = np.cumsum(np.arctan2(cos_sin[:, 1], cos_sin[:, 0]))
    lengths = np.asarray(pole_lengths)
    # Angle 0 points up; a positive angle tips the pole toward +x (hinge axis +y).
    tips = np.cumsum(np.stack([lengths * np.sin(absolute), lengths * np.cos(absolute)], -1), 0)
    return np.concatenate([[[x, 0.0]], tips + [x, 0.0]])


def render_frames(
    trajectories: Sequence[np.ndarray],
    labels: Sequence[str],
    pole_lengths: Sequence[float],
    dt: float,
    *,
    size: tuple[float, float] = (8.0, 2.6),
    dpi: int = 72,
) -> list[np.ndarray]:
    """RGB frames drawing several observation sequences side by side (e.g. sim and real)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    observations = [np.asarray(t) for t in trajectories]
    reach = sum(pole_lengths) + 0.3
    fig, axes = plt.subplots(1, len(observations), figsize=size, dpi=dpi, squeeze=False)
    artists = []
    for ax in axes[0]:
        ax.set_xlim(-2 * reach, 2 * reach)
        ax.set_ylim(-reach, reach)
        ax.set_aspect("equal")
        ax.set_title(" ", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axhline(0.0, color="0.7", lw=1)
        # Rail marks every 0.5 m: the view follows the cart, the marks show it moving.
        marks = np.arange(-50.0, 50.5, 0.5)
        ax.vlines(marks, -0.08, 0.0, color="0.6", lw=1)
        cart = ax.add_patch(plt.Rectangle((-0.2, -0.05), 0.4, 0.1, color="tab:blue"))
        (poles,) = ax.plot([], [], "-o", color="tab:orange", lw=3, ms=4)
        artists.append((ax, cart, poles))
    fig.tight_layout()
    frames = []
    # Artists are created once and moved: redrawing a figure from scratch per frame is 10x slower.
    for t in range(min(len(o) for o in observations)):
        for (ax, cart, poles), obs, label in zip(artists, observations, labels):
            points = pole_points(obs[t], pole_lengths)
            center = points[0, 0]
            ax.set_xlim(center - 2 * reach, center + 2 * reach)
            cart.set_x(center - 0.2)
            poles.set_data(points[:, 0], points[:, 1])
            ax.set_title(f"{label}   t = {t * dt:.2f} s", fontsize=9)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames


def write_gif(path: str | Path, frames: Sequence[np.ndarray], dt: float) -> Path:
    """Writes frames as a looping GIF playing at the rollout's real-time speed."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    imageio.mimsave(tmp, list(frames), format="GIF", duration=1000 * dt, loop=0)
    tmp.replace(path)
    return path
