"""Stored programs (`pods.programs`): the bits of `jax.jit`, loaded without tracing, keyed by
everything the trace depends on, and safe against an unreadable entry and a new process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from jax import export

from pods.programs import ProgramStore, program_key

REPO = Path(__file__).resolve().parent.parent


class Moments(NamedTuple):
    mean: jax.Array
    count: jax.Array


@struct.dataclass
class Carry:
    matrix: jax.Array
    moments: Moments
    layers: dict


def step(carry: Carry, key: jax.Array) -> tuple[Carry, dict]:
    """Custom pytrees in and out, a scan, random numbers and LAPACK (a Cholesky solve)."""
    noise = jax.random.normal(key, carry.matrix.shape[:1], carry.matrix.dtype)
    spd = carry.matrix @ carry.matrix.T + jnp.eye(carry.matrix.shape[0])
    solved = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(spd), True), noise)

    def accumulate(total, x):
        return total + jnp.tanh(x) * carry.layers["w"], None

    total, _ = jax.lax.scan(accumulate, jnp.zeros_like(carry.layers["w"]), solved)
    moments = Moments(carry.moments.mean + solved.mean(), carry.moments.count + 1)
    new = Carry(carry.matrix + 0.1 * jnp.outer(solved, solved), moments, {"w": total})
    return new, {"norm": jnp.linalg.norm(solved), "count": moments.count}


def carry(n: int = 4, dtype=jnp.float32) -> Carry:
    matrix = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    moments = Moments(jnp.zeros((), dtype), jnp.zeros((), jnp.int32))
    return Carry(matrix, moments, {"w": jnp.ones(3, dtype)})


def assert_same_bits(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


def test_a_stored_program_gives_the_bits_of_jit_and_loads_without_tracing(tmp_path, monkeypatch):
    args = (carry(), jax.random.PRNGKey(1))
    run = ProgramStore(tmp_path).program("toy", step, args, description="toy")
    (stored,) = tmp_path.glob("toy-*.jaxexport")
    jitted = jax.jit(step)
    state, reference = args[0], args[0]
    for i in range(3):  # the calls after the first take the arrays a call returned
        key = jax.random.fold_in(args[1], i)
        (state, metrics), (reference, expected) = run(state, key), jitted(reference, key)
        assert_same_bits((state, metrics), (reference, expected))

    def no_export(*_, **__):
        raise AssertionError("traced again")

    monkeypatch.setattr(export, "export", no_export)
    loaded = ProgramStore(tmp_path).program("toy", step, args, description="toy")
    assert_same_bits(loaded(*args), jitted(*args))
    assert list(tmp_path.glob("toy-*.jaxexport")) == [stored]


def test_the_key_changes_with_what_the_trace_depends_on(tmp_path):
    args = (carry(), jax.random.PRNGKey(1))
    key = program_key("toy", args)
    assert program_key("toy", (carry(), jax.random.PRNGKey(7))) == key  # values are not in it
    assert program_key("other", args) != key
    assert program_key("toy", (carry(n=5), args[1])) != key
    with jax.enable_x64(True):
        assert program_key("toy", (carry(dtype=jnp.float64), args[1])) != key
        assert program_key("toy", args) != key  # x64 changes the trace even for float32
    restructured = (carry().replace(layers={"w": jnp.ones(3), "b": jnp.ones(3)}), args[1])
    assert program_key("toy", restructured) != key
    # The store's context is part of it: two envs under one config never share a program.
    for context in ("sim", "twin", "sim"):
        ProgramStore(tmp_path, context).program("toy", step, args, description="toy")
    assert len(list(tmp_path.glob("toy-*.jaxexport"))) == 2


def test_an_unreadable_entry_is_traced_again_with_a_warning(tmp_path):
    args = (carry(), jax.random.PRNGKey(1))
    ProgramStore(tmp_path).program("toy", step, args, description="toy")
    (stored,) = tmp_path.glob("toy-*.jaxexport")
    stored.write_bytes(b"not a program")
    with pytest.warns(UserWarning, match=r"toy-.*\.jaxexport is unreadable"):
        run = ProgramStore(tmp_path).program("toy", step, args, description="toy")
    assert_same_bits(run(*args), jax.jit(step)(*args))
    ProgramStore(tmp_path).program("toy", step, args, description="toy")  # rewritten, readable


def test_a_new_process_runs_a_stored_linear_algebra_program(tmp_path):
    """A process that has lowered no linear algebra yet runs a stored Cholesky: jaxlib 0.9
    crashes there unless the store initializes its LAPACK kernels first."""
    args = (carry(), jax.random.PRNGKey(1))
    ProgramStore(tmp_path).program("toy", step, args, description="toy")
    expected = jax.jit(step)(*args)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, jax
        from jax import export
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_programs import carry, step
        from pods.programs import ProgramStore
        def no_export(*_, **__):
            raise AssertionError("traced again")
        export.export = no_export
        args = (carry(), jax.random.PRNGKey(1))
        out = ProgramStore({str(tmp_path)!r}).program("toy", step, args, description="toy")(*args)
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)])
        np.save({str(tmp_path / "out.npy")!r}, flat.astype(np.float64))
        """
    )
    env = {**os.environ, "PODS_XLA_LOGS": "all"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(expected)]).astype(np.float64)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), flat)
