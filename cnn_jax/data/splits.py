"""tfds split syntax (`train`, `train[:90%]`, `train[10:20]+test`) for every source.

Local sources (IDX files, JPEG trees, synthetic data) are sliced with tfds's own parser and
rounding (`tfds.core.ReadInstruction`), so `train[:90%]` selects exactly the examples that tfds
would select from a split of the same size and order. Where tensorflow-datasets is not installed
(e.g. a GPU image with only JAX), a small parser with the same rounding handles the common forms
(`name`, `name[a:b]` with integers or percentages, joined by `+`), tested against tfds.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping

import numpy as np

from cnn_jax.validate import did_you_mean


def split_names(spec: str) -> list[str]:
    """The base split names a spec refers to, e.g. `train[:90%]+test` -> [train, test]."""
    names = []
    for part in str(spec).split("+"):
        name = part.strip().split("[", 1)[0].strip()
        if name:
            names.append(name)
    return names


def unknown_split_error(spec: str, name: str, available: list[str], where: str) -> ValueError:
    """A clear error for a split name that the source does not have."""
    hint = did_you_mean(name, available)
    return ValueError(
        f"Split {name!r} (in split spec {spec!r}) does not exist in {where}; available splits: "
        f"{sorted(available)}.{hint} Set --config.data.train_split/eval_split/val_split to one "
        "of them; tfds slicing such as 'train[:90%]' carves a validation split out of train."
    )


def resolve(spec: str, sizes: Mapping[str, int], where: str) -> list[tuple[str, int, int]]:
    """Turns a split spec into [(base split, start, stop)] ranges over the base splits' order."""
    if not spec or not str(spec).strip():
        raise ValueError(f"Empty split spec for {where}; use e.g. 'train' or 'train[:90%]'.")
    names = split_names(spec)
    for name in names:
        if name != "all" and name not in sizes:
            raise unknown_split_error(spec, name, list(sizes), where)
    try:
        import tensorflow_datasets as tfds  # local: importing tfds costs about a second
    except ImportError:
        return _resolve_without_tfds(spec, sizes, where)

    # Only the referenced splits are sized: `sizes` may load a split lazily on lookup.
    wanted = list(sizes) if "all" in names else names
    infos = {
        name: types.SimpleNamespace(num_examples=sizes[name], shard_lengths=[sizes[name]])
        for name in wanted
    }
    try:
        instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
    except (ValueError, NotImplementedError) as e:
        raise ValueError(
            f"Cannot read split spec {spec!r} for {where}: {e}. "
            "Use tfds syntax: 'train', 'train[:90%]', 'train[90%:]', 'train[:1000]', 'train+test'."
        ) from None
    ranges = []
    for ins in instructions:
        n = sizes[ins.splitname]
        start = 0 if ins.from_ is None else ins.from_
        stop = n if ins.to is None else ins.to
        ranges.append((ins.splitname, start, max(start, stop)))
    return ranges


def num_examples(spec: str, sizes: Mapping[str, int], where: str) -> int:
    """Number of examples a split spec selects."""
    return sum(stop - start for _, start, stop in resolve(spec, sizes, where))


def select(spec: str, sizes: Mapping[str, int], where: str) -> list[tuple[str, np.ndarray]]:
    """[(base split, indices into it)] for a split spec; indices keep the base order."""
    return [(name, np.arange(start, stop)) for name, start, stop in resolve(spec, sizes, where)]


_PART = re.compile(r"^\s*(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?\s*$")


def _bound(text: str | None, n: int, default: int) -> int:
    """One slice bound: an index or a percentage (rounded to the closest, as tfds does)."""
    if text is None:
        return default
    if text.endswith("%"):
        value = int(round(int(text[:-1]) * n / 100.0))
    else:
        value = int(text)
        if not -n <= value <= n:
            raise ValueError(f"slice bound {value} is outside a split of {n} examples")
    if value < 0:
        value += n
    return min(max(value, 0), n)


def _resolve_without_tfds(spec: str, sizes: Mapping[str, int], where: str
                          ) -> list[tuple[str, int, int]]:
    """`resolve` for `name` and `name[a:b]` parts (indices or %) when tfds is not installed."""
    ranges = []
    for part in str(spec).split("+"):
        m = _PART.match(part)
        if m is None:
            raise ValueError(
                f"Cannot read split spec {spec!r} for {where}: part {part!r} is not of the form "
                "'name' or 'name[a:b]' (tensorflow-datasets, not installed here, reads more forms). "
                "Use e.g. 'train', 'train[:90%]', 'train[90%:]', 'train[:1000]', 'train+test'.")
        name, lo, hi = m.groups()
        names = list(sizes) if name == "all" else [name]
        for base in names:
            n = sizes[base]
            try:
                start, stop = _bound(lo, n, 0), _bound(hi, n, n)
            except ValueError as e:
                raise ValueError(
                    f"Cannot read split spec {spec!r} for {where}: {e}. Use tfds syntax: 'train', "
                    "'train[:90%]', 'train[90%:]', 'train[:1000]', 'train+test'.") from None
            ranges.append((base, start, max(start, stop)))
    return ranges
