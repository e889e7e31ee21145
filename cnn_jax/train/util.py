"""Small helpers shared by the training engine: name validation with a closest-match hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
