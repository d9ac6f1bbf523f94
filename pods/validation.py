"""Field checks for the config dataclasses, with one message format everywhere:
`<Config>.<field> must be <expected>, got <value>`.

It lives in `pods/`, the lowest layer, so that the configs of every layer above
(`dynamics_models/`, `sim2real/`, `baselines/`) share this one copy.
"""

from __future__ import annotations

import math
from typing import Any


def require(ok: bool, config: Any, name: str, expected: str) -> None:
    """Raises ValueError("<type of config>.<name> must be <expected>, got <value>") unless
    `ok`. The class is the instance's own, so a subclass's message names the subclass."""
    if not ok:
        raise ValueError(
            f"{type(config).__name__}.{name} must be {expected}, got {getattr(config, name)!r}"
        )


def is_integer(value: Any, low: int = 1) -> bool:
    """An int (not a bool) >= `low`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_positive(value: Any) -> bool:
    """A finite int or float > 0 (not a bool)."""
    return is_number(value) and value > 0


def require_positive(config: Any, *names: str) -> None:
    """`require`s each named field of `config`, in order, to be a finite number > 0."""
    for name in names:
        require(is_positive(getattr(config, name)), config, name, "a finite number > 0")
