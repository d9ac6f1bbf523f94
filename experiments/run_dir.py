"""A run directory that describes itself: metrics, TensorBoard events, checkpoints, summary.

    run_dir/
      .hydra/            resolved config (written by the run once its checks pass)
      metrics.jsonl      one JSON object per epoch: {"epoch": e, "train/return": ..., ...}
      tensorboard/       the same scalars as TensorBoard events
      checkpoints/       latest.msgpack (+ latest.json: epoch, format), written atomically
      summary.json       the headline figures, written when the run finishes
      artifacts/         anything else a run produces (animations, datasets, models)

Every file a reader may open while the run goes on is replaced atomically (write to a
temporary file in the same folder, fsync, rename), so a run killed at any instant leaves
either the old or the new version, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from flax import serialization

from dynamics_models.data import atomic_write

CHECKPOINT_FORMAT = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_scalar) + "\n").encode())


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist"):  # jax arrays
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Checkpoint(NamedTuple):
    """A checkpoint file as read back: the state as a state dict, and its info."""

    state: dict
    """`flax.serialization.to_state_dict` of the training state; `from_state_dict` restores
    it into a template of the same structure."""
    info: dict
    """`format`, `epoch` and what the run added (its config, its wall-clock)."""


class RunDirectory:
    """Writes (and on resume, reads back) one run's outputs."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.checkpoint_path = self.path / "checkpoints" / "latest.msgpack"
        self.checkpoint_info_path = self.path / "checkpoints" / "latest.json"
        self.artifacts = self.path / "artifacts"
        self._tensorboard = None

    # -- metrics ---------------------------------------------------------------------------
    def log_metrics(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Appends one epoch's metrics to metrics.jsonl and TensorBoard."""
        record = {"epoch": int(epoch)}
        record.update({k: _finite_or_none(float(v)) for k, v in metrics.items()})
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        writer = self._writer()
        for key, value in metrics.items():
            writer.add_scalar(key, float(value), global_step=int(epoch))
        writer.flush()

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (a line cut short by a kill is dropped)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keeps the metrics of epochs <= last_epoch: those a resumed run will not redo."""
        kept = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def _writer(self):
        if self._tensorboard is None:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.path / "tensorboard"))
        return self._tensorboard

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(
        self, state: Any, epoch: int, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Saves a training-state pytree after `epoch` epochs; replaces the previous one.

        State and info go into one file, replaced in one rename: a kill can never leave a
        state of one epoch beside the info of another. `latest.json` repeats the info for
        people; resuming never reads it.
        """
        info = {"format": CHECKPOINT_FORMAT, "epoch": int(epoch), **(extra or {})}
        record = {"state": serialization.to_state_dict(state), "info": json.dumps(info)}
        atomic_write_bytes(self.checkpoint_path, serialization.msgpack_serialize(record))
        atomic_write_json(self.checkpoint_info_path, info)

    def read_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint, or None if the run has none. A corrupt file raises one
        ValueError line naming it; nothing is written either way."""
        if not self.checkpoint_path.exists():
            return None
        try:
            record = serialization.msgpack_restore(self.checkpoint_path.read_bytes())
            info = json.loads(record["info"])
            if info.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format {info.get('format')!r}, expected {CHECKPOINT_FORMAT}")
            if not isinstance(record["state"], dict) or not isinstance(info.get("epoch"), int):
                raise ValueError("no training state or epoch in it")
        except Exception as err:  # msgpack raises its own types for cut or garbled bytes
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"cannot resume from {self.checkpoint_path}: {message}") from None
        return Checkpoint(record["state"], info)

    def restore(self, checkpoint: Checkpoint, template: Any) -> Any:
        """`checkpoint`'s state in `template`'s structure; one ValueError line if it does
        not fit."""
        try:
            return serialization.from_state_dict(template, checkpoint.state)
        except (ValueError, KeyError, TypeError) as err:
            message = str(err).splitlines()[0]
            raise ValueError(f"cannot resume from {self.checkpoint_path}: {message}") from None

    # -- summary ---------------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.summary_path, dict(summary))
