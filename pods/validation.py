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
