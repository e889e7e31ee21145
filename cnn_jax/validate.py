"""Checks of user-set values (config fields, model fields, data fields), each error naming the field.

One module for the whole library: the closest-name hint (`did_you_mean`), the choice checks
(`check_choice` for config flags, `check_member` for model fields), the number check
(`check_number`), small rules that say why a value is wrong (`int_at_least`, `int_tuple`,
`number_in`, `boolean`, `must`) and `check_fields`, which runs a table of them. The tables
belong to their owners (the registry's `FIELD_RULES` for model fields, `DATA_RULES` here for
`config.data`). Without these checks a wrong type fails late, as a bare `float('fast')` or a
ZeroDivisionError inside an initialiser, or is truncated silently (`image_size=2.5` -> 2).
ml_collections checks types only against a field's default, and Flax not at all, hence this.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Rule = Callable[[Any], "str | None"]   # None for a valid value, else why it is not


def field(cfg: Any, name: str, default: Any) -> Any:
    """`cfg.name`, or `default` for configs written before the field existed."""
    try:
        value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    except AttributeError:
        value = default
    return default if value is None else value


def did_you_mean(value: Any, valid: Iterable[str]) -> str:
    """" Did you mean 'x'?" for the closest of `valid` to `value`, or "" when none is close."""
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(field: str, value: str, valid: Iterable[str]) -> str:
    """Returns `value` if it is one of `valid`, else raises a ValueError naming the closest match."""
    valid = list(valid)
    if value in valid:
        return value
    raise ValueError(
        f"Unknown {field} {value!r}. Valid values: {', '.join(valid)}.{did_you_mean(value, valid)} "
        f"(set it with --config.{field}=NAME)")


def check_member(field: str, value: Any, choices: Sequence[Any], where: str = "") -> None:
    """ValueError naming the (model) field, the value seen and the valid choices."""
    if value not in choices:
        raise ValueError(f"{where}{field}={value!r} is not valid; choose one of {tuple(choices)}")


def is_int(v: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """A finite real number, not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


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


# ------------------------------------------------------------------- rules: why a value is wrong

def must(ok: Callable[[Any], bool], want: str) -> Rule:
    """A rule from a predicate: "it must be <want>" when `ok(value)` is false."""
    return lambda v: None if ok(v) else f"it must be {want}"


def int_at_least(low: int) -> Rule:
    return must(lambda v: is_int(v) and v >= low, f"an integer >= {low}")


def int_tuple(low: int = 1, allow_empty: bool = False) -> Rule:
    """A rule for a tuple of integers >= low, e.g. hidden_sizes=(512, 512)."""
    want = f"a tuple of integers >= {low}" + (
        " (or () for none)" if allow_empty else " with at least one entry")
    return must(lambda v: (isinstance(v, tuple) and (allow_empty or len(v) > 0)
                           and all(is_int(x) and x >= low for x in v)), want)


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    want = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return must(lambda v: (is_real(v) and (v > low if low_open else v >= low)
                           and (v < high if high_open else v <= high)), want)


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "it must be True or False"


def check_fields(values: Mapping[str, Any], rules: Mapping[str, Rule], *, where: str,
                 flag: str) -> None:
    """ValueError for the first of `values` that its rule refuses: the field, the value seen,
    why, and the flag that fixes it (`--config.<flag>.<field>=VALUE`)."""
    for key, value in values.items():
        rule = rules.get(key)
        why = rule(value) if rule is not None else None
        if why is not None:
            raise ValueError(f"{where}{key}={value!r} is not valid: {why}. "
                             f"Fix it with --config.{flag}.{key}=VALUE.")


# ------------------------------------------------------------------------- config.data fields

def _shape(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 3 and all(is_int(d) and d >= 1 for d in v)


# field -> (default when absent, rule)
DATA_RULES: Mapping[str, tuple[Any, Rule]] = {
    "image_size": (-1, must(is_int, "an integer (<= 0: the native size, else the side in pixels)")),
    "crop_padding": (0, int_at_least(0)),
    "flip": (False, boolean),
    "random_resized_crop": (False, boolean),
    "mixup_alpha": (0.0, must(lambda v: is_real(v) and v >= 0, "a number >= 0 (0: off)")),
    "cutmix_alpha": (0.0, must(lambda v: is_real(v) and v >= 0, "a number >= 0 (0: off)")),
    "max_bad_fraction": (0.01, number_in(0, 1)),
    "shuffle_buffer": (50_000, int_at_least(1)),
    "stats_max_examples": (10_000, int_at_least(1)),
}
SYNTHETIC_RULES: Mapping[str, tuple[Any, Rule]] = {
    "synthetic_shape": ((32, 32, 3), must(_shape, "(H, W, C): three integers >= 1")),
    "synthetic_num_classes": (10, int_at_least(1)),
    "synthetic_num_examples": (1024, int_at_least(1)),
}


def check_data_config(cfg: Any) -> None:
    """ValueError naming the field, the value seen and what it must be, for the first bad field
    of `config.data`. The synthetic_* fields are checked only when data.name='synthetic' (other
    sets ignore them)."""
    table = dict(DATA_RULES)
    if field(cfg, "name", "") == "synthetic":
        table.update(SYNTHETIC_RULES)
    check_fields({k: field(cfg, k, default) for k, (default, _) in table.items()},
                 {k: rule for k, (_, rule) in table.items()}, where="data.", flag="data")


def layer_name(module: Any) -> str:
    """'path/to/layer (Type)' of a Flax module for error messages; the type for a top-level one."""
    path = "/".join(module.scope.path) if module.scope is not None else ""
    return f"{path} ({type(module).__name__})" if path else type(module).__name__
