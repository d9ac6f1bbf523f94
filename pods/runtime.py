"""Process-wide JAX settings shared by the entry points, benchmarks and tests."""

from __future__ import annotations

import os
from pathlib import Path

import jax

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".jax_cache"


def configure_jax(*, cache_dir: str | os.PathLike | None = None, float64: bool = False) -> Path:
    """Turns on the persistent compilation cache (and float64 if asked); returns the cache dir.

    Compiling a gradient through a Brax rollout takes tens of seconds on a small CPU; the
    cache makes every later process that compiles the same function load it instead. The
    folder comes from `cache_dir`, else $PODS_JAX_CACHE, else `.jax_cache` at the repo root.
    (XLA logs a warning on every cache hit; TF_CPP_MIN_LOG_LEVEL=2, set before jax is
    imported, silences it. The Makefile and the tests do so. On some CPUs jaxlib 0.9 also
    logs an error-level line per hit, "Target machine feature +prefer-no-gather is not
    supported on the host machine" (jax-ml/jax#38445): those are tuning hints, not
    instruction sets, and the entry is used all the same: a Brax rollout gradient measured
    17.7 s to compile cold, 7.1 s with the hit, of which 0.8 s XLA. Level 3 would hide the
    line, and every other error with it.)
    """
    path = Path(cache_dir or os.environ.get("PODS_JAX_CACHE") or DEFAULT_CACHE_DIR)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if float64:
        jax.config.update("jax_enable_x64", True)
    return path
