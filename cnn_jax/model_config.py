"""`config.model` filled from the model registry, so that every model field takes a flag.

ml_collections locks a loaded config: `--config.a.b=V` may only set a field the experiment file
declared. An experiment declares the few model fields it changes, so `--config.model.width=32`
would be an unknown field although the model has it. The launcher's `--config` flag therefore
fills `config.model`, between loading the experiment file and applying the flags, with every
field of the chosen model that the file left out, at the value the model is built with anyway
(`registry.field_defaults`: the variant's fixed value, else the class default). So

- every model field can be overridden, and a misspelt one is still an unknown field with the
  closest match;
- a run without overrides builds exactly the model it built before, and its `config.json` lists
  every field's value;
- a checkpoint whose stored config lacks a filled field still resumes: `checkpoint.
  config_differences` compares an absent model field as its default (`model_field_default`).

The model is the one the command line names (`--config.model.name=...`, else the file's), and
`model.module` (a module of the user's whose import registers models, see `registry.register`)
is imported first, so a user's model fills in the same way.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

MODULE_FIELD = "module"  # config.model.module: the user's module that registers models
NOT_MODEL_FIELDS = ("name", "bn_sync", MODULE_FIELD)  # config.model keys that are no model field


def model_field_default(model_name: str, field: str, module: str = "") -> tuple[bool, Any]:
    """(True, default) of a config.model field of `model_name`, (False, None) when unknown."""
    if field == MODULE_FIELD:
        return True, ""
    from cnn_jax.models import registry
    try:
        registry.import_module(module)
        defaults = registry.field_defaults(model_name)
    except ValueError:
        return False, None
    return (True, defaults[field]) if field in defaults else (False, None)


def fill_model_fields(config: ml_collections.ConfigDict, name: str | None = None,
                      module: str | None = None) -> list[str]:
    """Adds to `config.model` every field of model `name` (default: config.model.name) that it
    lacks, at its default, and `model.module` (""); returns the added names. `module` (default:
    config.model.module) is imported first. An unknown model adds nothing (building it fails
    later with the closest registered name)."""
    from cnn_jax.models import registry
    model = config.get("model") if isinstance(config, ml_collections.ConfigDict) else None
    if not isinstance(model, ml_collections.ConfigDict):
        return []
    name = model.get("name", "") if name is None else name
    module = model.get(MODULE_FIELD, "") if module is None else module
    registry.import_module(module)
    try:
        defaults = registry.field_defaults(str(name))
    except ValueError:
        defaults = {}
    added = [k for k in (MODULE_FIELD, *defaults) if k not in model]
    with model.unlocked():
        for key in added:
            model[key] = "" if key == MODULE_FIELD else defaults[key]
    return added


def argv_value(argv: Sequence[str], path: str, flag: str = "config") -> str | None:
    """The value of the last `--<flag>.<path>=V` (or `--<flag>.<path> V`) in argv, else None."""
    value = None
    for i, arg in enumerate(argv):
        key = f"--{flag}.{path}"
        if arg.startswith(key + "="):
            value = arg.split("=", 1)[1]
        elif arg == key and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def check_override_paths(config: Any, argv: Sequence[str], flag: str = "config") -> None:
    """ValueError naming the first `--<flag>.a.b=V` of argv that names no field of `config`, with
    the closest field of its parent ("Did you mean ...") and the parent's fields."""
    from cnn_jax.validate import did_you_mean
    for arg in argv:
        match = re.match(rf"^--(?:no)?{re.escape(flag)}\.([^=]+)", arg)
        if not match:
            continue
        node, parts = config, match.group(1).split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                break  # inside a value (ml_collections decides)
            if part not in node:
                parent = ".".join(parts[:i])
                where = f"config.{parent}" if parent else "config"
                raise ValueError(
                    f"unknown config field {'.'.join(parts[:i + 1])!r}.{did_you_mean(part, node)}"
                    f" Fields of {where}: {', '.join(sorted(node))}")
            node = node[part]


class _FillingParser(flags.ArgumentParser):
    """The config file parser, then `fill_model_fields` for the model the command line names."""

    def __init__(self, inner: flags.ArgumentParser, argv: Callable[[], Sequence[str]], name: str):
        self.inner, self.argv, self.name = inner, argv, name

    def parse(self, argument: Any) -> Any:
        config = self.inner.parse(argument)
        argv = self.argv()
        fill_model_fields(config, argv_value(argv, "model.name", self.name),
                          argv_value(argv, f"model.{MODULE_FIELD}", self.name))
        check_override_paths(config, argv, self.name)
        return config

    def flag_type(self) -> str:
        return self.inner.flag_type()


def define_config_flag(name: str, default: str | None, help_string: str,
                       flag_values: flags.FlagValues = flags.FLAGS,
                       sys_argv: Sequence[str] | None = None) -> None:
    """`config_flags.DEFINE_config_file` (locked config) whose loaded config has its model's
    fields filled in before the `--<name>.a.b=V` flags are applied."""
    config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values,
                                    lock_config=True, sys_argv=sys_argv)
    flag = flag_values[name]

    def argv() -> Sequence[str]:
        return list(sys.argv if sys_argv is None else sys_argv)

    flag.parser = _FillingParser(flag.parser, argv, name)
