"""The documentation: the site builds with --strict, the README stays a front page, pages name
only paths that exist, every committed figure has a caption and a provenance record.

None of these is skipped where a tool is missing: `make test` installs the `docs` extra, and a
docs test that cannot run fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README_MAX_LINES = 250
# Pages the site builds from the code (docs/hooks/generate.py), not committed.
GENERATED = {"docs/reference/configuration.md", "docs/figures.md"}
PROVENANCE = ("caption", "command", "commit", "date", "machine")


def tracked_top_level_folders() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return {f.split("/", 1)[0] for f in files if "/" in f}


def pages() -> list[Path]:
    """The README and the docs pages people read; the research log is history, and names
    paths as they were."""
    return [REPO / "README.md"] + sorted(
        p for p in DOCS.rglob("*.md") if "research-log" not in p.relative_to(DOCS).parts
    )


def without_fenced_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def named_paths(text: str, folders: set[str]) -> list[str]:
    """Paths under `folders` named in inline code spans."""
    pattern = re.compile(
        r"(?<![\w./-])((?:" + "|".join(map(re.escape, sorted(folders))) + r")/[\w./*{}<>$\-]*)"
    )
    found = []
    for span in re.findall(r"`([^`\n]+)`", without_fenced_code(text)):
        for path in pattern.findall(span):
            path = path.rstrip(".,:")
            if re.search(r"[*{}<>$]", path) or re.search(r"-v\d+$", path):
                continue  # a pattern, a placeholder or a gymnasium id (sim2real/...-v0)
            found.append(path)
    return found


def linked_paths(page: Path, text: str) -> list[str]:
    """Local link targets of a page, relative to the repository's root."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", without_fenced_code(text)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        found.append(path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else target)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with --strict into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, (
        "mkdocs build --strict failed (is the docs extra installed? make test installs it):\n"
        + result.stdout[-3000:]
        + result.stderr[-3000:]
    )
    return out


def test_site_builds_with_strict(site):
    assert (site / "index.html").exists()
    assert (site / "research-log" / "2026-12-07-readme-history" / "index.html").exists()


def test_configuration_reference_keys_every_field_as_the_command_line_spells_it(site):
    import dataclasses

    from pods.config import HDSConfig
    from sim2real.lab import LabEffects
    from sim2real.loop_config import LoopConfig

    page = (site / "reference" / "configuration" / "index.html").read_text()
    keys = (
        [f"algo.{f.name}" for f in dataclasses.fields(HDSConfig)]
        + [f"env.lab.{f.name}" for f in dataclasses.fields(LabEffects)]
        + [f"real.{f.name}" for f in dataclasses.fields(LoopConfig)]
        + ["algo.elite_fraction", "env.friction_gradient.friction_velocity", "run.compare"]
    )
    missing = [key for key in keys if f"<code>{key}</code>" not in page]
    assert not missing, f"not in the configuration reference: {missing}"
    # The docstring comes along with the key.
    assert "Distill only this fraction of the k improved trajectories" in page


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move the detail to a "
        "docs page and history to docs/research-log/"
    )


def test_pages_name_and_link_only_paths_that_exist():
    folders = tracked_top_level_folders()
    assert {"pods", "docs", "experiments"} <= folders
    missing = []
    for page in pages():
        text = page.read_text()
        where = page.relative_to(REPO).as_posix()
        for path in named_paths(text, folders):
            if not (REPO / path).exists():
                missing.append(f"{where}: `{path}`")
        for path in linked_paths(page, text):
            if path.split("/", 1)[0] in folders | {"README.md", "CHANGELOG.md"}:
                if not ((REPO / path).exists() or path in GENERATED):
                    missing.append(f"{where}: link to {path}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_named_paths_finds_paths_and_skips_patterns():
    folders = {"pods", "sim2real", "docs"}
    text = (
        "`pods/train.py` and `python sim2real/x.py --y`, not `sim2real/cartpole_swingup_lab-v0`,"
        " `sim2real/assets/*.xml`, `docs/<name>.md` or `pods.train`\n```\npods/in_a_block.py\n```"
    )
    assert named_paths(text, folders) == ["pods/train.py", "sim2real/x.py"]


def test_every_committed_figure_has_a_caption_and_provenance():
    figures = sorted(
        p for p in (DOCS / "figures").rglob("*") if p.suffix in {".png", ".svg", ".jpg", ".pdf"}
    )
    assert figures, "docs/figures/ holds no figure"
    problems = []
    for figure in figures:
        sidecar = figure.with_suffix(".json")
        if not sidecar.exists():
            problems.append(f"{figure.relative_to(REPO)}: no {sidecar.name}")
            continue
        record = json.loads(sidecar.read_text())
        empty = [k for k in PROVENANCE if not str(record.get(k, "")).strip()]
        if empty:
            problems.append(f"{sidecar.relative_to(REPO)}: no {', '.join(empty)}")
        if record.get("page") and not (DOCS / record["page"]).exists():
            problems.append(f"{sidecar.relative_to(REPO)}: page {record['page']} does not exist")
    assert not problems, "\n".join(problems)


def test_results_pages_open_with_their_provenance():
    for page in sorted((DOCS / "results").glob("*.md")):
        if page.name == "index.md":
            continue
        header = page.read_text()[:1500]
        for field in ("command", "| commit |", "| CPU |", "| date |", "| seeds |", "starts |"):
            assert field in header, f"{page.relative_to(REPO)}: its header lacks {field!r}"
