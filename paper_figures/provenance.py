"""The provenance sidecar of a drawn figure: `<figure>.json` beside its PNG and PDF.

A figure in the docs is only as good as the record of what drew it: the caption (the drawing
function's docstring, so the text cannot drift from the code), the command, the commit and
whether the tree had uncommitted changes, the date and the CPU (`pods.runtime.cpu_description`).
`tests/test_docs.py` requires such a record, with a caption, for every figure under
`docs/figures/`.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from pods.runtime import cpu_description

REPO = Path(__file__).resolve().parent.parent
FIELDS = ("caption", "command", "commit", "date", "machine")
"""What every sidecar holds (and what the docs test checks)."""


def caption_of(draw: Callable) -> str:
    """A drawing function's docstring, its paragraphs joined into one caption."""
    paragraphs = (draw.__doc__ or "").strip().split("\n\n")
    return " ".join(" ".join(p.split()) for p in paragraphs if p.strip())


def git_commit(repo: Path = REPO) -> str:
    """HEAD's hash, with `+dirty` where tracked files differ from it; `unknown` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def write_sidecar(out_dir: Path, name: str, *, caption: str, command: str, **extra) -> Path:
    """Writes `out_dir/<name>.json` with the fields of `FIELDS` and `extra`; returns its path."""
    record = {
        "figure": name,
        "caption": caption,
        "command": command,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_description(),
        **extra,
    }
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
