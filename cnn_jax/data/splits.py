"""tfds split syntax (`train`, `train[:90%]`, `train[10:20]+test`) for every source.

Local sources (IDX files, JPEG trees, synthetic data) are sliced with tfds's own parser and
rounding (`tfds.core.ReadInstruction`), so `train[:90%]` selects exactly the examples that tfds
would select from a split of the same size and order.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping

import numpy as np


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
    close = difflib.get_close_matches(name, available, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
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
    import tensorflow_datasets as tfds  # local: importing tfds costs about a second

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
