"""Compiled programs that a later process loads instead of tracing again.

A warm start with JAX's persistent compilation cache still traces the epoch's Python and
lowers it to a module before the cache can be asked for the executable: at the solving
settings that is most of the 2-3 s to the first epoch (README, "Speed to a solved policy").
`ProgramStore.program` saves the lowered module itself (`jax.export`, serialized) beside the
compilation cache, and a later process with the same program key deserializes it, skipping
the trace and the lowering; the persistent cache then serves its executable. The program's
results are those of `jax.jit(fn)` to the bit (tested).

An entry is found only by a key that covers everything the trace depends on:

- the caller's account of what the function closes over (the store's `context` and the
  program's `description`: the config, the env); the caller vouches for it;
- the arguments' tree structure, shapes and dtypes, and whether float64 is on;
- the platform and the devices;
- this project's source, every file of the checkout, the source of any other module loaded
  from outside the Python installation (the user's), and the versions of JAX, jaxlib, Brax,
  Flax, Optax, MuJoCo and NumPy (what the installation contributes).

Change any of them and the key changes: the program is traced and exported again. A stored
entry that cannot be read is traced and exported again too, with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax import export

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "pods",
    "sim2real",
    "dynamics_models",
    "baselines",
    "experiments",
    "scoring",
    "paper_figures",
    "hydra_plugins",
)
"""This project's packages (pyproject.toml's): what is hashed of an installed copy."""
UNSOURCED = ("outputs", "multirun", "__pycache__")
"""Folders of the checkout that hold no source of it."""
VERSIONED = ("jax", "jaxlib", "brax", "flax", "optax", "mujoco", "numpy")
"""The installed packages whose code a trace may run, by distribution name."""


class ProgramStore:
    """Serialized `jax.export` modules in one folder (the command line uses `programs/` of
    the persistent compilation cache), one file per program key, for programs that run on
    one device (the first; several devices keep `jax.jit`). `context` is the caller's
    account of what the stored functions close over besides what each program's
    `description` says: the env, say, described by the config it was built from."""

    def __init__(self, directory: str | os.PathLike, context: str = ""):
        self.directory = Path(directory)
        self.context = context

    def program(self, name: str, fn: Callable, args: tuple, *, description: str) -> Callable:
        """`jax.jit(fn)` for arguments shaped like `args`: loaded from this store where it
        holds the program, else traced, exported and saved. `name` names the file (any
        string of letters, digits, `_` and `-`); `description` is the caller's account of
        everything `fn` closes over."""
        leaves, in_tree = jax.tree.flatten(args)
        key = program_key(f"{self.context}\n{description}", args)
        path = self.directory / f"{name}-{key}.jaxexport"
        stored = _read(path)
        if stored is None:
            out_tree: list = []

            def flat(*leaves):
                out = fn(*jax.tree.unflatten(in_tree, leaves))
                out_leaves, tree = jax.tree.flatten(out)
                out_tree.append(tree)
                return out_leaves

            exported = export.export(jax.jit(flat))(*leaves)
            stored = exported, out_tree[0]
            try:
                _write(path, exported.serialize(), out_tree[0])
            except (OSError, ImportError) as err:  # a read-only cache still trains
                warnings.warn(f"cannot store program {path}: {err}", stacklevel=2)
        else:
            _initialize_lapack()
        exported, out_tree = stored
        call = jax.jit(exported.call)
        device = jax.devices()[0]

        def run(*args):
            # Committed to one device, every call's arguments lower alike: arrays a program
            # returned are committed, fresh ones are not, and the exported call compiles
            # each placement anew.
            leaves = jax.device_put(jax.tree.leaves(args), device)
            return jax.tree.unflatten(out_tree, call(*leaves))

        return run


def program_key(description: str, args: tuple) -> str:
    """The hex digest that names a program's file (see the module docstring)."""
    leaves, tree = jax.tree.flatten(args)
    parts = [
        description,
        str(tree),
        repr([(jax.numpy.shape(x), str(jax.numpy.result_type(x))) for x in leaves]),
        f"x64={jax.config.jax_enable_x64}",
        repr([(d.platform, d.device_kind) for d in jax.devices()]),
        source_digest(),
        repr(_versions()),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def source_digest() -> str:
    """A hash of this project's Python source, every file of the checkout, and of any other
    module loaded in the process from outside the Python installation (the user's reward
    function, say). Every file, not the modules loaded: two processes that import different
    parts of the project still agree on the programs they share."""
    digest = hashlib.sha256()
    for path in sorted(_project_source_files() | _loaded_source_files()):
        digest.update(str(path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _project_source_files() -> set[Path]:
    """Every Python file of the checkout (its packages, tests, benchmarks), or of the
    packages alone where they are installed into site-packages."""
    installed = PROJECT_ROOT.name in ("site-packages", "dist-packages")
    roots = [PROJECT_ROOT / package for package in PACKAGES] if installed else [PROJECT_ROOT]
    files = set()
    for root in roots:
        for folder, subfolders, names in os.walk(root):
            # Hidden folders (.venv, the caches) and run outputs hold no source of the project.
            subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in UNSOURCED]
            files.update(Path(folder, name) for name in names if name.endswith(".py"))
    return files


def _loaded_source_files() -> set[Path]:
    installed = tuple(
        {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    )
    files = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        if file.startswith(installed):
            continue
        path = Path(os.path.realpath(file))
        if not str(path).startswith(installed) and path.exists():
            files.add(path)
    return files


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    versions = []
    for name in VERSIONED:
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((name, "absent"))
    return tuple(versions)


def _read(path: Path) -> tuple[export.Exported, Any] | None:
    if not path.exists():
        return None
    try:
        with path.open("rb") as file:
            serialized, out_tree = pickle.load(file)
        return export.deserialize(bytearray(serialized)), out_tree
    except Exception as err:  # noqa: BLE001  (any unreadable entry is traced again)
        warnings.warn(
            f"stored program {path} is unreadable ({type(err).__name__}: {err}); tracing it again",
            stacklevel=3,
        )
        return None


def _write(path: Path, serialized: bytearray, out_tree: Any) -> None:
    """Atomically: a crash mid-write leaves no half-written entry behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
        pickle.dump((bytes(serialized), out_tree), file)
    os.replace(file.name, path)


def _initialize_lapack() -> None:
    """jaxlib's CPU LAPACK kernels find their routines only once something has lowered a
    linear-algebra op in the process; a deserialized module that calls them before that
    crashes the process (a segfault, jaxlib 0.9). Lowering initializes them; so does this."""
    try:
        from jaxlib import lapack
    except ImportError:  # a jaxlib without CPU LAPACK kernels
        return
    initialize = getattr(getattr(lapack, "_lapack", None), "initialize", None)
    if initialize is not None:
        initialize()


__all__ = ["ProgramStore", "program_key", "source_digest"]
