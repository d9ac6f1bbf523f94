"""Shared set-up: the persistent compilation cache, and compiled functions shared by tests."""

import jax
import pytest

from pods.runtime import configure_jax

configure_jax()


@pytest.fixture(scope="session")
def key():
    return jax.random.PRNGKey(0)
