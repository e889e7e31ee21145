"""No silent settings: an optim field the chosen optimizer or schedule ignores gets a warning
naming it and what would make it matter (only when it was changed from its default); a
combination that cannot be meant is an error."""

import glob
import importlib
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from cnn_jax.train import optim

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root: experiments/
from experiments.default import get_default_config  # noqa: E402


def config(**optim_fields):
    c = get_default_config()
    c.optim.update(optim_fields)
    return c


def test_defaults_are_experiments_defaults():
    o = get_default_config().optim
    assert {k: o[k] for k in optim.DEFAULTS} == optim.DEFAULTS


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_defaults_warn_about_nothing(name, schedule):
    assert optim.ineffective_settings(config(name=name, schedule=schedule,
                                             milestones=(1,) if schedule == "multistep" else ())
                                      ) == []


@pytest.mark.parametrize("fields,warning", [
    ({"name": "adam", "momentum": 0.5},
     "config.optim.momentum=0.5 has no effect with optim.name='adam' (Adam's first-moment decay "
     "is optim.b1); it matters with optim.name='sgd' or 'lars'."),
    ({"name": "adamw", "momentum": 0.0}, "config.optim.momentum=0.0 has no effect with "
                                         "optim.name='adamw'"),
    ({"name": "sgd", "b1": 0.8}, "config.optim.b1=0.8 has no effect with optim.name='sgd'; it "
                                 "matters with optim.name='adam' or 'adamw'."),
    ({"name": "sgd", "b2": 0.99}, "config.optim.b2=0.99 has no effect with optim.name='sgd'"),
    ({"name": "lars", "eps": 1e-6}, "config.optim.eps=1e-06 has no effect with "
                                    "optim.name='lars'"),
    ({"name": "lars", "weight_decay_mode": "decoupled"},
     "config.optim.weight_decay_mode='decoupled' has no effect with optim.name='lars' (LARS "
     "decays the weights its own way); it matters with optim.name='sgd' or 'adam'."),
    ({"name": "sgd", "weight_decay": 0.0, "weight_decay_mode": "decoupled"},
     "config.optim.weight_decay_mode='decoupled' has no effect while optim.weight_decay=0"),
    ({"name": "adam", "weight_decay": 0.0, "decay_bn_and_bias": True},
     "config.optim.decay_bn_and_bias=True has no effect while optim.weight_decay=0; it matters "
     "with optim.weight_decay > 0 (or optim.name='lars')."),
    ({"schedule": "cosine", "milestones": (30, 60)},
     "config.optim.milestones=(30, 60) has no effect with optim.schedule='cosine'; it matters "
     "with optim.schedule='multistep'."),
    ({"schedule": "constant", "gamma": 0.2},
     "config.optim.gamma=0.2 has no effect with optim.schedule='constant'"),
    ({"schedule": "cosine", "milestone_unit": "steps"},
     "config.optim.milestone_unit='steps' has no effect with optim.schedule='cosine'"),
])
def test_a_changed_field_without_effect_is_named(fields, warning):
    warnings = optim.ineffective_settings(config(**fields))
    assert len(warnings) == 1 and warnings[0].startswith(warning), warnings


@pytest.mark.parametrize("fields", [
    {"name": "adamw", "weight_decay_mode": "decoupled"},  # what AdamW does anyway
    {"name": "lars", "weight_decay": 0.0, "decay_bn_and_bias": True},  # LARS's trust-ratio mask
    {"name": "sgd", "nesterov": True}, {"name": "lars", "nesterov": True, "momentum": 0.0},
    {"schedule": "multistep", "milestones": (2,), "gamma": 0.5, "milestone_unit": "steps"},
    {"name": "adam", "b1": 0.5, "b2": 0.9, "eps": 1e-6},
])
def test_fields_that_matter_are_not_warned_about(fields):
    assert optim.ineffective_settings(config(**fields)) == []


@pytest.mark.parametrize("fields,error", [
    ({"name": "adam", "nesterov": True},
     "config.optim.nesterov=True cannot apply to optim.name='adam'"),
    ({"name": "adamw", "nesterov": True},
     "config.optim.nesterov=True cannot apply to optim.name='adamw'"),
    ({"name": "sgd", "nesterov": True, "momentum": 0.0},
     "config.optim.nesterov=True with optim.momentum=0"),
])
def test_a_setting_that_cannot_be_meant_is_an_error(fields, error):
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace(")", r"\)")):
        optim.ineffective_settings(config(**fields))


def test_building_the_optimizer_prints_the_warning(capsys):
    c = config(name="adamw", momentum=0.95)
    params = {"w": jnp.zeros((2, 2))}
    optim.create_optimizer(c, optim.create_schedule(c, 10, 100), params)
    assert capsys.readouterr().out.splitlines() == [
        "WARNING: config.optim.momentum=0.95 has no effect with optim.name='adamw' (Adam's "
        "first-moment decay is optim.b1); it matters with optim.name='sgd' or 'lars'."]
    with pytest.raises(ValueError, match="nesterov=True cannot apply"):
        optim.create_optimizer(config(name="adam", nesterov=True), lambda s: 0.1, params)
    assert jax.process_index() == 0


def test_no_experiment_sets_a_field_without_effect():
    names = [os.path.basename(f)[:-3] for f in sorted(glob.glob(str(REPO / "experiments/*.py")))]
    checked = 0
    for name in names:
        module = importlib.import_module(f"experiments.{name}")
        if not hasattr(module, "get_config") or name == "default":
            continue
        for arg in (None, "runlocal"):
            try:
                c = module.get_config(arg)
            except (ValueError, TypeError, KeyError):
                continue  # an experiment without a runlocal arg
            assert optim.ineffective_settings(c) == [], (name, arg)
            checked += 1
    assert checked >= 10
