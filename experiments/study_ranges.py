"""What to expect from a run: the ranges over seeds a study measured for the same setting.

`benchmarks/study.py` runs settings (its parts) over seeds 0-9 and keeps, per part, the
setting's fingerprint (`experiments.train.setting_fingerprint`: the config without the seed)
and each policy's min, median and max. A run whose config has a part's fingerprint (`make
run` has `lab_b5000`'s) prints those ranges under its own table, so a user whose CPU gives
other last digits sees whether the run is typical. Any other setting prints nothing: the
study did not measure it.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "docs" / "results" / "data" / "study" / "study.json"
"""The study's kept report (`benchmarks/study.py --out`)."""

COLUMNS = (
    ("solved real", "solved_real", True),
    ("solved sim", "solved_sim", True),
    ("real", "return_real", False),
    ("sim", "return_sim", False),
)


def find_part(fingerprint: str, path: Path = STUDY) -> tuple[str, dict, dict] | None:
    """(part name, part, the whole report) of the study part measured at this setting; None
    where the study has none, or its file is missing or unreadable."""
    try:
        study = json.loads(path.read_text())
        parts = study["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, part in parts.items():
        if part.get("fingerprint") == fingerprint and part.get("done"):
            return name, part, study
    return None


def format_ranges(algos: list[str], fingerprint: str, path: Path = STUDY) -> str | None:
    """The study's min-max (median) over seeds of each of `algos` (the table's rows, in its
    order) at this setting, as lines under the run's table; None where it has none."""
    found = find_part(fingerprint, path)
    if found is None:
        return None
    name, part, study = found
    seeds = part["done"]
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    lines = [
        f"\nthe same setting over seeds {_seed_list(seeds)} ({shown}, part {name}, "
        f"{study.get('cpu', 'CPU unknown')}): min-max (median)",
        f"{'policy':>10} " + " ".join(f"{title:>20}" for title, _, _ in COLUMNS),
    ]
    for algo in algos:
        figures = part["ranges"].get(algo)
        if figures is None:
            continue
        cells = [_range(figures.get(key), share) for _, key, share in COLUMNS]
        lines.append(f"{algo:>10} " + " ".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def _range(spread: dict | None, share: bool) -> str:
    if not spread:
        return "-"
    if share:
        low, mid, high = (round(100 * spread[k]) for k in ("min", "median", "max"))
        return f"{low}-{high}% ({mid}%)"
    return f"{spread['min']:.1f}-{spread['max']:.1f} ({spread['median']:.1f})"


def _seed_list(seeds: list[int]) -> str:
    """`0-9`, or the seeds themselves where they are not a run of consecutive ones."""
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))
