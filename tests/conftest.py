"""Shared set-up: the persistent compilation cache (`configure_jax`: $PODS_JAX_CACHE, else
`.jax_cache`), so a rerun loads what an earlier run compiled, and failing tests' captured stderr
without the XLA lines every cache hit logs. No fixtures: compiled functions and trained models
are shared only within a test file, by its module-scoped fixtures."""

import pytest

from pods.runtime import configure_jax
from pods.xla_log_filter import drop_known

configure_jax()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    """Captured output a failing test shows, less the XLA lines every cache hit logs and that
    are false here (`pods/xla_log_filter.py`): pytest captures file descriptor 2 itself, so
    the CLI's filter cannot sit there in this process."""
    report.sections = [
        (title, _without_known_lines(content)) if "stderr" in title else (title, content)
        for title, content in report.sections
    ]


def _without_known_lines(text: str) -> str:
    return b"".join(drop_known(text.encode())).decode()
