"""Process-wide JAX settings shared by the entry points, benchmarks and tests."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".jax_cache"


def configure_jax(*, cache_dir: str | os.PathLike | None = None, float64: bool = False) -> Path:
    """Turns on the persistent compilation cache (and float64 if asked); returns the cache dir.

    Compiling a gradient through a Brax rollout takes tens of seconds on a small CPU; the
    cache makes every later process that compiles the same function load it instead. The
    folder comes from `cache_dir`, else $PODS_JAX_CACHE, else `.jax_cache` at the repo root.
    Every cache hit makes XLA log one or two false alarms: `filter_known_xla_logs` drops
    exactly those (the entry is used all the same).
    """
    path = Path(cache_dir or os.environ.get("PODS_JAX_CACHE") or DEFAULT_CACHE_DIR)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every compile, small ones too: building a testbed and a training state compiles dozens
    # of small programs, which a warm start then loads instead (measured in the README).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if float64:
        jax.config.update("jax_enable_x64", True)
    return path


def import_brax_quietly() -> None:
    """Imports brax with its stdout chatter silenced: mujoco.mjx (imported by brax) prints to
    stdout when its optional GPU backend, warp, is missing, and the tools that print JSON need
    a clean stdout. Call it before anything imports brax; once brax is loaded, later imports
    print nothing. `pods`, `sim2real` and `baselines` call it first thing."""
    with contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module("brax.envs")


_log_filter: subprocess.Popen | None = None
_original_stderr: int | None = None


def filter_known_xla_logs() -> None:
    """Drops, from this process's stderr, the two XLA log lines that every persistent-cache
    hit prints and that are false here (see `pods/xla_log_filter.py`); everything else
    passes. For entry points (the CLI, reports, benchmarks): call it once, before the first
    compile; the scripts call it in their `__main__` block, before parsing their arguments,
    so that their `main(argv)` called from Python (a test) leaves that process's stderr
    alone. `PODS_XLA_LOGS=all` leaves stderr alone.

    XLA's C++ logging writes to file descriptor 2 directly, so the filter sits there: fd 2
    becomes a pipe to a filter process, which writes to the original stderr. The filter is a
    process of its own so that what this one writes before a crash is never lost; at exit
    this process restores fd 2 and waits for the filter to drain.
    """
    global _log_filter, _original_stderr
    if _log_filter is not None or os.environ.get("PODS_XLA_LOGS") == "all":
        return
    sys.stderr.flush()
    original = _original_stderr = os.dup(2)
    script = Path(__file__).with_name("xla_log_filter.py")
    _log_filter = subprocess.Popen(
        [sys.executable, "-S", str(script)],
        stdin=subprocess.PIPE,
        stdout=original,
        stderr=original,
        start_new_session=True,
    )
    os.dup2(_log_filter.stdin.fileno(), 2)
    _log_filter.stdin.close()  # fd 2 is the pipe's one write end here now
    atexit.register(_stop_log_filter, original)


def stop_filtering_xla_logs() -> None:
    """Undoes `filter_known_xla_logs` once the filter has printed all it was given: file
    descriptor 2 is the original stderr again. For a process that runs several entry points
    in turn (tests/test_logs.py), each of which installs the filter anew."""
    global _log_filter, _original_stderr
    if _log_filter is None:
        return
    atexit.unregister(_stop_log_filter)
    _stop_log_filter(_original_stderr)
    os.close(_original_stderr)
    _log_filter, _original_stderr = None, None


def _stop_log_filter(original: int) -> None:
    sys.stderr.flush()
    os.dup2(original, 2)
    try:
        # A child process of ours that outlives us may keep the pipe open: do not hang on it.
        _log_filter.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def cpu_description() -> str:
    """The CPU a figure was measured on, as results pages name it: the model name, family and
    model from /proc/cpuinfo (the same model name covers CPU types that train apart), and the
    cores this process may use."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    family = (
        f" (family {fields['cpu family']}, model {fields['model']})" if "model" in fields else ""
    )
    return f"{name}{family}, {len(os.sched_getaffinity(0))} cores"
