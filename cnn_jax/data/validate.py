"""Checks of `config.data` fields before any data is read, each error naming the field.

Without them a wrong type fails later as a bare `float('fast')` / `int('big')` error, or is
truncated silently (`image_size=2.5` -> 2); see tests/faults (hostile inputs).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from cnn_jax.data.sources import field


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _shape(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 3 and all(_is_int(d) and d >= 1 for d in v)


# (field, default when absent, valid?, what it must be)
Rule = tuple[str, Any, Callable[[Any], bool], str]
RULES: tuple[Rule, ...] = (
    ("image_size", -1, _is_int, "an integer (<= 0: the native size, else the side in pixels)"),
    ("crop_padding", 0, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("flip", False, lambda v: isinstance(v, bool), "True or False"),
    ("random_resized_crop", False, lambda v: isinstance(v, bool), "True or False"),
    ("mixup_alpha", 0.0, lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    ("cutmix_alpha", 0.0, lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    ("max_bad_fraction", 0.01, lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("shuffle_buffer", 50_000, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("stats_max_examples", 10_000, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
)
SYNTHETIC_RULES: tuple[Rule, ...] = (
    ("synthetic_shape", (32, 32, 3), _shape, "(H, W, C): three integers >= 1"),
    ("synthetic_num_classes", 10, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("synthetic_num_examples", 1024, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
)


def check_config(cfg: Any) -> None:
    """ValueError naming the field, the value seen and what it must be, for the first bad field.

    The synthetic_* fields are checked only when data.name='synthetic' (other sets ignore them).
    """
    rules = RULES + (SYNTHETIC_RULES if field(cfg, "name", "") == "synthetic" else ())
    for name, default, ok, want in rules:
        value = field(cfg, name, default)
        if not ok(value):
            raise ValueError(f"data.{name}={value!r} is not valid: it must be {want}. "
                             f"Fix it with --config.data.{name}=VALUE.")
