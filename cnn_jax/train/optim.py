"""Optimizers and learning-rate schedules built from `config.optim` with optax.

Schedules count optimizer steps. `optim.milestones` and `optim.warmup_epochs` are in epochs by
default; `optim.milestone_unit="steps"` reads the milestones as step numbers (the ResNet CIFAR
recipe divides the rate by 10 at iterations 32k and 48k).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from cnn_jax.validate import check_choice, check_number

OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
SCHEDULES = ("constant", "multistep", "cosine")
WEIGHT_DECAY_MODES = ("l2", "decoupled")


def validate(config: ml_collections.ConfigDict) -> None:
    """Clear errors (naming the field) for `config.optim` values of a wrong type or range."""
    o = config.optim
    check_choice("optim.name", o.name, OPTIMIZERS)
    check_choice("optim.schedule", o.schedule, SCHEDULES)
    check_choice("optim.weight_decay_mode", o.weight_decay_mode, WEIGHT_DECAY_MODES)
    check_number("optim.lr", o.lr, low=0, low_open=True)
    check_number("optim.momentum", o.momentum, low=0, high=1, high_open=True)
    check_number("optim.weight_decay", o.weight_decay, low=0)
    check_number("optim.warmup_epochs", o.get("warmup_epochs", 0.0), low=0)
    check_number("optim.gamma", o.gamma, low=0, low_open=True)
    check_number("optim.b1", o.get("b1", 0.9), low=0, high=1, high_open=True)
    check_number("optim.b2", o.get("b2", 0.999), low=0, high=1, high_open=True)
    check_number("optim.eps", o.get("eps", 1e-8), low=0)
    if o.name in ("adam", "adamw") and float(o.get("eps", 1e-8)) <= 0:
        raise ValueError(
            f"config.optim.eps={o.eps!r} with optim.name={o.name!r}: Adam divides by "
            f"sqrt(second moment) + eps, which is 0/0 = NaN for every parameter whose gradient "
            f"is 0 (the run diverges within steps). Set --config.optim.eps to a positive "
            f"value, e.g. 1e-8 (the default).")
    check_choice("optim.milestone_unit", o.get("milestone_unit", "epochs"), ("epochs", "steps"))
    milestones = o.milestones
    if isinstance(milestones, (int, float)):
        milestones = (milestones,)
    if not isinstance(milestones, (tuple, list)):
        raise ValueError(f"config.optim.milestones must be a tuple of numbers, got "
                         f"{milestones!r}; e.g. --config.optim.milestones='(30, 60)'.")
    for m in milestones:
        check_number("optim.milestones", m, low=0)
    for flag in ("nesterov", "decay_bn_and_bias", "scale_lr_by_batch"):
        if not isinstance(o.get(flag, False), bool):
            raise ValueError(f"config.optim.{flag} must be True or False, got {o[flag]!r}.")


# The default experiment config's values of the fields that only some optimizers or schedules
# read (a test keeps the two equal). A field still at its default was not set
# by the user, so it gets no warning where it has no effect.
DEFAULTS = {"momentum": 0.9, "nesterov": False, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
            "weight_decay_mode": "l2", "decay_bn_and_bias": False, "milestones": (),
            "milestone_unit": "epochs", "gamma": 0.1}


def ineffective_settings(config: ml_collections.ConfigDict) -> list[str]:
    """Warnings for `config.optim` fields, changed from their defaults, that the chosen optimizer
    or schedule ignores; a ValueError for a combination that cannot be what was meant."""
    o = config.optim
    name, schedule, wd = o.name, o.schedule, float(o.weight_decay)

    def value(f: str) -> Any:
        v = o.get(f, DEFAULTS[f])
        return tuple(v) if isinstance(v, list) else v

    def changed(f: str) -> bool:
        return value(f) != DEFAULTS[f]

    def unused(f: str, why: str, matters: str) -> str:
        return (f"config.optim.{f}={value(f)!r} has no effect {why}; it matters with "
                f"{matters}.")

    if o.get("nesterov", False) and name in ("adam", "adamw"):
        raise ValueError(f"config.optim.nesterov=True cannot apply to optim.name={name!r}: "
                         f"there is no Nesterov Adam here. Use --config.optim.name=sgd (with "
                         f"momentum > 0) or lars for Nesterov momentum, or drop nesterov.")
    if o.get("nesterov", False) and name == "sgd" and float(o.momentum) == 0:
        raise ValueError("config.optim.nesterov=True with optim.momentum=0: sgd without "
                         "momentum has no Nesterov step. Set --config.optim.momentum=0.9, or "
                         "drop nesterov.")
    out = []
    if name in ("adam", "adamw") and changed("momentum"):
        out.append(unused("momentum", f"with optim.name={name!r} (Adam's first-moment decay is "
                          f"optim.b1)", "optim.name='sgd' or 'lars'"))
    if name in ("sgd", "lars"):
        out += [unused(f, f"with optim.name={name!r}", "optim.name='adam' or 'adamw'")
                for f in ("b1", "b2", "eps") if changed(f)]
    if changed("weight_decay_mode"):  # ('decoupled' under adamw is what AdamW does anyway)
        if name == "lars":
            out.append(unused("weight_decay_mode", "with optim.name='lars' (LARS decays the "
                              "weights its own way)", "optim.name='sgd' or 'adam'"))
        elif wd == 0:
            out.append(unused("weight_decay_mode", "while optim.weight_decay=0",
                              "optim.weight_decay > 0"))
    if wd == 0 and name != "lars" and changed("decay_bn_and_bias"):
        out.append(unused("decay_bn_and_bias", "while optim.weight_decay=0",
                          "optim.weight_decay > 0 (or optim.name='lars')"))
    if schedule != "multistep":
        out += [unused(f, f"with optim.schedule={schedule!r}", "optim.schedule='multistep'")
                for f in ("milestones", "milestone_unit", "gamma") if changed(f)]
    return out


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The peak learning rate, after the linear scaling rule (lr x batch / 256) when asked for."""
    lr = float(config.optim.lr)
    if config.optim.get("scale_lr_by_batch", False):
        lr *= config.batch_size / 256.0
    return lr


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
    """Learning rate per step: linear warmup from 0 (optional) into a constant, multistep or cosine."""
    validate(config)
    o = config.optim
    name = o.schedule
    lr = base_learning_rate(config)
    warmup = int(round(float(o.get("warmup_epochs", 0.0)) * steps_per_epoch))
    if warmup < 0 or (warmup > 0 and warmup >= total_steps):
        raise ValueError(
            f"Warmup of {warmup} steps (optim.warmup_epochs={o.get('warmup_epochs')}) must be "
            f"non-negative and shorter than the run ({total_steps} steps).")
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "multistep":
        unit = check_choice("optim.milestone_unit", o.get("milestone_unit", "epochs"),
                            ("epochs", "steps"))
        per = steps_per_epoch if unit == "epochs" else 1
        raw = (o.milestones,) if isinstance(o.milestones, (int, float)) else o.milestones
        milestones = sorted(int(round(float(m) * per)) for m in raw)
        if not milestones:
            raise ValueError("optim.schedule='multistep' needs optim.milestones, e.g. "
                             "--config.optim.milestones='(30,60,80)' (epochs).")
        boundaries: dict[int, float] = {}
        for m in milestones:
            boundaries[m - warmup] = boundaries.get(m - warmup, 1.0) * float(o.gamma)
        main = optax.piecewise_constant_schedule(lr, boundaries)
    else:  # cosine, decaying to zero at the last step
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
    if warmup <= 0:
        return main
    ramp = optax.linear_schedule(0.0, lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def decay_mask(params: Any, decay_bn_and_bias: bool) -> Any:
    """True for parameters that get weight decay: kernels only unless BN and biases are included.

    Normalization scales/offsets and biases are exactly the 1-D parameters of these networks.
    """
    return jax.tree.map(lambda p: bool(decay_bn_and_bias) or p.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     params: Any) -> optax.GradientTransformation:
    """The optax chain for `config.optim`: clip, weight decay (L2 or decoupled), update rule, lr.

    Prints a warning for each optim field that has no effect here (`ineffective_settings`).
    """
    validate(config)
    if jax.process_index() == 0:
        for warning in ineffective_settings(config):
            print(f"WARNING: {warning}", flush=True)
    o = config.optim
    name, mode = o.name, o.weight_decay_mode
    if name == "adamw":
        mode = "decoupled"  # AdamW is Adam with decoupled decay by definition.
    wd = float(o.weight_decay)
    mask = decay_mask(params, o.decay_bn_and_bias)
    parts: list[optax.GradientTransformation] = []
    if config.get("grad_clip_norm", 0.0) > 0:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    if name == "lars":
        parts.append(optax.lars(schedule, weight_decay=wd, weight_decay_mask=mask,
                                trust_ratio_mask=mask, momentum=float(o.momentum),
                                nesterov=bool(o.nesterov)))
        return _frozen(config, optax.chain(*parts), params)
    if wd > 0 and mode == "l2":
        parts.append(optax.add_decayed_weights(wd, mask))
    if name == "sgd":
        if o.momentum > 0:
            parts.append(optax.trace(decay=float(o.momentum), nesterov=bool(o.nesterov)))
    else:
        parts.append(optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2),
                                         eps=float(o.get("eps", 1e-8))))
    if wd > 0 and mode == "decoupled":
        parts.append(optax.add_decayed_weights(wd, mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return _frozen(config, optax.chain(*parts), params)


def _frozen(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
            params: Any) -> optax.GradientTransformation:
    """`tx`, with the parameters `config.freeze` matches held fixed (see train/finetune.py)."""
    if not config.get("freeze", ()):
        return tx
    from cnn_jax.train import finetune
    return finetune.with_frozen(tx, params, config.freeze)

