"""The command line's config groups (hydra's config module `experiments.conf`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

SOLVING_PODS = Path(__file__).resolve().parent / "solving" / "pods.yaml"


def solving_pods_fields() -> dict:
    """The PODSConfig fields every PODS-family algorithm starts from (`solving/pods.yaml`),
    for the tools that build a PODSConfig without composing a run (the benchmarks)."""
    return OmegaConf.to_container(OmegaConf.load(SOLVING_PODS))
