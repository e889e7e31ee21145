"""Model registry: every network by name, with its designed input shape and default class count.

`build(name, num_classes, **overrides)` turns plain values (as found in a config) into a module;
models never see the config object. Variants are one-line entries over a family's fields.
`field_defaults(name)` gives every field a config may set, with its default (the launcher fills
`config.model` with them, so `--config.model.FIELD=V` works for each). `register(...)` adds a
model from the user's own module; `import_module` imports such a module (`config.model.module`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import validate
from cnn_jax.layers import NORMS, SHORTCUTS
from cnn_jax.models.alexnet import TORCHVISION_LAYERS, AlexNet
from cnn_jax.models.googlenet import INCEPTION_FORMS, GoogLeNet
from cnn_jax.models.lenet import LeNet5
from cnn_jax.models.mlp import MLP
from cnn_jax.models.resnet import CIFAR_DEPTHS, CifarResNet, ResNet
from cnn_jax.models.vgg import STAGES, VGG

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)
MNIST = (28, 28, 1)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered variant: module class, its fixed fields, designed input and class count."""

    cls: type[nn.Module]
    fields: Mapping[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    about: str


def _specs() -> dict[str, ModelSpec]:
    specs = {
        "mlp": ModelSpec(MLP, {}, MNIST, 10, "multi-layer perceptron, hidden (512, 512)"),
        "lenet5": ModelSpec(LeNet5, {}, MNIST, 10, "LeNet-5, lecture version"),
        "alexnet": ModelSpec(AlexNet, {}, (227, 227, 3), 1000, "AlexNet, lecture single tower"),
        "alexnet_tv": ModelSpec(
            AlexNet, {"conv_layers": TORCHVISION_LAYERS, "adaptive_pool": 6,
                      "dropout_first": True}, IMAGENET, 1000, "AlexNet, torchvision variant"),
        "googlenet": ModelSpec(GoogLeNet, {}, IMAGENET, 1000, "GoogLeNet / Inception v1 + BN "
                               "(inception='naive': fig. 2a blocks)"),
    }
    for depth, stages in STAGES.items():
        specs[f"vgg{depth}"] = ModelSpec(VGG, {"stage_sizes": stages}, IMAGENET, 1000,
                                         f"VGG-{depth}")
        specs[f"vgg{depth}_bn"] = ModelSpec(VGG, {"stage_sizes": stages, "norm": "batch"},
                                            IMAGENET, 1000, f"VGG-{depth} with BatchNorm")
    imagenet_resnets = {18: ((2, 2, 2, 2), "basic"), 34: ((3, 4, 6, 3), "basic"),
                        50: ((3, 4, 6, 3), "bottleneck"), 101: ((3, 4, 23, 3), "bottleneck"),
                        152: ((3, 8, 36, 3), "bottleneck")}
    for depth, (stages, block) in imagenet_resnets.items():
        fields = {"stage_sizes": stages, "block": block}
        specs[f"resnet{depth}"] = ModelSpec(ResNet, fields, IMAGENET, 1000,
                                            f"ResNet-{depth} (v1.5)")
        specs[f"plain{depth}"] = ModelSpec(ResNet, {**fields, "residual": False}, IMAGENET, 1000,
                                           f"plain {depth}-layer twin of ResNet-{depth}")
    for depth in CIFAR_DEPTHS:  # He et al. 2016, Table 6 (1202: n = 200, 19.4M parameters)
        specs[f"resnet{depth}"] = ModelSpec(CifarResNet, {"depth": depth}, CIFAR, 10,
                                            f"CIFAR ResNet-{depth}")
        specs[f"plain{depth}"] = ModelSpec(CifarResNet, {"depth": depth, "residual": False},
                                           CIFAR, 10, f"CIFAR plain-{depth}")
    return specs


MODELS: dict[str, ModelSpec] = _specs()  # register() adds to it
# Fields a config does not set: the class count comes from the data, the compute dtype from
# config.dtype, the BatchNorm axis from config.parallel and model.bn_sync.
DERIVED_FIELDS = ("num_classes", "dtype", "bn_axis_name")


def register(name: str, *, input_shape: tuple[int, int, int], num_classes: int = 1000,
             about: str = "", **fields: Any) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a model (a Flax module with keyword fields) under `name`:

        @register("tiny_cnn", input_shape=(32, 32, 3), num_classes=10, width=16)
        class TinyCNN(ModelBase): ...

    `fields` are the variant's fixed values (as the built-in entries). Put it in your own module
    and name that module in `config.model.module` (it is imported before the model is looked up).
    A name already taken by another class is an error; importing the same module twice is not.
    """
    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        old = MODELS.get(name)
        if old is not None and (old.cls.__module__, old.cls.__qualname__) != (
                cls.__module__, cls.__qualname__):
            raise ValueError(f"model name {name!r} is already registered (for "
                             f"{old.cls.__module__}.{old.cls.__qualname__}); pick another name")
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"register({name!r}): {cls.__name__} has no field(s) {unknown}")
        MODELS[name] = ModelSpec(cls, dict(fields), tuple(input_shape), int(num_classes),
                                 about or cls.__name__)
        return cls
    return decorate


def import_module(module: str) -> None:
    """Imports the user's module that registers models (`config.model.module`); "" does nothing."""
    if not module:
        return
    if not isinstance(module, str):
        raise ValueError(f"model.module={module!r} must be a module name such as 'my_pkg.models'")
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"model.module={module!r} cannot be imported ({e}); put the folder "
                         "that holds it on PYTHONPATH (or run from that folder)") from e


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        hint = validate.did_you_mean(str(name), list(MODELS))
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}")
    return MODELS[name]


def list_models() -> list[str]:
    """Every registered model name."""
    return sorted(MODELS)


def default_input_shape(name: str) -> tuple[int, int, int]:
    """(H, W, C) of the input the model was designed for."""
    return _spec(name).input_shape


def default_num_classes(name: str) -> int:
    """Classes of the data set the model was designed for (10 for MNIST/CIFAR nets, else 1000)."""
    return _spec(name).num_classes


def model_fields(name: str) -> list[str]:
    """The fields that `build(name, **overrides)` accepts."""
    return [f.name for f in dataclasses.fields(_spec(name).cls) if f.name not in ("parent", "name")]


def _config_value(value: Any) -> bool:
    """A value a config (and `--config.model.FIELD=V`) can hold: bool/int/float/str or tuples."""
    if isinstance(value, (list, tuple)):
        return all(_config_value(v) for v in value)
    return isinstance(value, (bool, int, float, str))


def field_defaults(name: str) -> dict[str, Any]:
    """Every field of model `name` that a config may set, with the value `build` uses when the
    config leaves it out (the variant's fixed value, else the class default).

    Left out: DERIVED_FIELDS, and fields whose default no config can hold (None, a function).
    """
    spec = _spec(name)
    out = {}
    for f in dataclasses.fields(spec.cls):
        if f.name in ("parent", "name", *DERIVED_FIELDS):
            continue
        if f.name in spec.fields:
            value = spec.fields[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            continue
        if _config_value(value):
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def describe(name: str, fields: Mapping[str, Any]) -> str:
    """`name`, plus the fields that differ from its registered defaults: 'resnet20 (depth=26,
    widths=(16, 32, 64, 128))', so that a log names the network that really runs."""
    try:
        defaults = field_defaults(name)
    except ValueError:
        return str(name)
    changed = [f"{k}={_coerce(k, v)!r}" for k, v in fields.items()
               if k in defaults and _coerce(k, v) != defaults[k]]
    return f"{name} ({', '.join(changed)})" if changed else str(name)


def _coerce(key: str, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_coerce(key, v) for v in value)
    if key == "dtype" and isinstance(value, str):
        try:
            return jnp.dtype(value)
        except TypeError as e:
            raise ValueError(f"dtype={value!r} is not a dtype; use 'float32' or 'bfloat16'") from e
    return value


def _conv_layers(v: Any) -> str | None:
    """AlexNet's conv_layers: (features, kernel, stride, padding, max-pool after) per layer."""
    fmt = ("each entry is (features, kernel, stride, padding, pool) with features, kernel, "
           "stride >= 1, padding >= 0 and pool True/False")
    if not isinstance(v, tuple) or not v:
        return f"it must be a non-empty tuple of layers; {fmt}"
    for i, layer in enumerate(v):
        if not isinstance(layer, tuple) or len(layer) != 5:
            n = len(layer) if isinstance(layer, tuple) else type(layer).__name__
            return f"conv_layers[{i}]={layer!r} has {n} values instead of 5; {fmt}"
        for part, low, x in zip(("features", "kernel", "stride", "padding"), (1, 1, 1, 0), layer):
            if not validate.is_int(x) or x < low:
                return (f"conv_layers[{i}]={layer!r} has {part} {x!r}, which must be an integer "
                        f">= {low}; {fmt}")
        if not isinstance(layer[4], bool):
            return f"conv_layers[{i}]={layer!r} has pool {layer[4]!r}, not True/False; {fmt}"
    return None


# Field name -> rule returning None for a valid value, else why it is not. A field name means the
# same in every family, so this one table checks every model before Flax or JAX sees a value
# (which would otherwise fail as a ZeroDivisionError inside an initialiser, or train silently).
FIELD_RULES: Mapping[str, Callable[[Any], str | None]] = {
    "hidden_sizes": validate.int_tuple(allow_empty=True),
    "widths": validate.int_tuple(),
    "stage_sizes": validate.int_tuple(),
    "conv_layers": _conv_layers,
    "width": validate.int_at_least(1),
    "classifier_width": validate.int_at_least(1),
    "pool_size": validate.int_at_least(1),
    "adaptive_pool": validate.int_at_least(0),
    "depth": validate.int_at_least(1),
    "norm_groups": validate.int_at_least(1),
    "dropout": validate.number_in(0, 1, high_open=True),
    "aux_dropout": validate.number_in(0, 1, high_open=True),
    "bn_momentum": validate.number_in(0, 1),
    "bn_epsilon": validate.number_in(0, math.inf, low_open=True, high_open=True),
    **{key: validate.boolean for key in ("residual", "small_stem", "stride_on_1x1", "zero_init_last_bn",
                                 "dropout_first", "aux_logits", "torchvision_compat")},
}


def check_fields(name: str, fields: Mapping[str, Any]) -> None:
    """ValueError naming the field, the value seen and what it must be, for any invalid field."""
    validate.check_fields(fields, FIELD_RULES, where=f"model {name!r}: ", flag="model")


def build(name: str, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """The model `name` for `num_classes` classes, with `overrides` of its fields."""
    spec = _spec(name)
    fields = model_fields(name)
    for key in overrides:
        if key not in fields:
            hint = validate.did_you_mean(key, fields)
            raise ValueError(f"model {name!r} has no field {key!r}.{hint} "
                             f"Its fields: {', '.join(f for f in fields if f != 'num_classes')}")
    if not validate.is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1 (the data set's "
                         "class count)")
    kwargs = {**spec.fields, **{k: _coerce(k, v) for k, v in overrides.items()},
              "num_classes": int(num_classes)}
    check_fields(name, kwargs)
    for key, choices in (("norm", NORMS), ("shortcut", SHORTCUTS),
                         ("inception", INCEPTION_FORMS)):
        if key in kwargs:
            validate.check_member(key, kwargs[key], choices, where=f"model {name!r}: ")
    return spec.cls(**kwargs)
