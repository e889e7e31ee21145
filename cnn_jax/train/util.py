"""Small helpers shared by the training engine: name validation with a closest-match hint."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any


def check_choice(field: str, value: str, valid: Iterable[str]) -> str:
    """Returns `value` if it is one of `valid`, else raises a ValueError naming the closest match."""
    valid = list(valid)
    if value in valid:
        return value
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown {field} {value!r}. Valid values: {', '.join(valid)}.{hint} "
        f"(set it with --config.{field}=NAME)")


def check_number(field: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> float:
    """Returns `value` if it is a finite number in the range, else a ValueError naming `field`."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise ValueError(f"config.{field} must be {kind}, got {value!r} "
                         f"({type(value).__name__}); set it with --config.{field}=VALUE.")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        want = f"in {lo or '(-inf'}, {hi or 'inf)'}"
        raise ValueError(f"config.{field}={value!r} is out of range: it must be {want}.")
    return value
