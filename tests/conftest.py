"""Shared set-up: the persistent compilation cache, and compiled functions shared by tests."""

import os

# Before jax loads XLA: silence the warning it logs on every persistent-cache hit.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pods.runtime import configure_jax  # noqa: E402

configure_jax()
