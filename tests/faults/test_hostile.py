"""Hostile inputs (scenario 7): one test per generated case, each must end in a clear error.

Cases whose error is not clear yet are listed in UNCLEAR with the owner's fix to make; they are
strict xfails, so a fix turns them into failures here until they are removed from the list.
"""

import pytest

from cnn_jax import faults

# case name -> why it is not clear yet (see tests/faults/RESULTS.md for the proposed fixes).
UNCLEAR: dict[str, str] = {
    'model.dropout=1.0':
        'models: dropout rate not range/type-checked (registry.build)',
    'model.dropout=1.5':
        'models: dropout rate not range/type-checked (registry.build)',
    'model.dropout=-0.1':
        'models: dropout rate not range/type-checked (registry.build)',
    "model.dropout='fast'":
        'models: dropout rate not range/type-checked (registry.build)',
    "data.mixup_alpha='fast'":
        'data/pipeline.py _check_config: data field not type-checked with its name',
    "data.cutmix_alpha='none'":
        'data/pipeline.py _check_config: data field not type-checked with its name',
    "data.max_bad_fraction='fast'":
        'data/pipeline.py _check_config: data field not type-checked with its name',
    'data.synthetic_num_classes=1.5':
        'data/pipeline.py _check_config: data field not type-checked with its name',
    "data.image_size='big'":
        'data/pipeline.py _check_config: data field not type-checked with its name',
    'data.image_size=2.5':
        'data/pipeline.py _check_config: data field not type-checked with its name',
    'model.hidden_sizes=(0,)':
        'models: hidden_sizes not checked (positive ints) before flax/jax',
    'model.hidden_sizes=(-4,)':
        'models: hidden_sizes not checked (positive ints) before flax/jax',
    'model.hidden_sizes=(16, 0)':
        'models: hidden_sizes not checked (positive ints) before flax/jax',
    "model.hidden_sizes=('wide',)":
        'models: hidden_sizes not checked (positive ints) before flax/jax',
    'model.hidden_sizes=16.5':
        'models: hidden_sizes not checked (positive ints) before flax/jax',
    'mlp on (0, 4, 1)':
        'models/layers: zero-size input not checked before flax/jax',
    'alexnet on (32, 32, 3), conv_layers=((64, 3, 0, 1, False),)':
        'models: alexnet conv_layers entries not checked (5 values, sizes > 0, pad >= 0)',
    'alexnet on (32, 32, 3), conv_layers=((64, 0, 1, 1, False),)':
        'models: alexnet conv_layers entries not checked (5 values, sizes > 0, pad >= 0)',
    'alexnet on (32, 32, 3), conv_layers=((0, 3, 1, 1, False),)':
        'models: alexnet conv_layers entries not checked (5 values, sizes > 0, pad >= 0)',
    'alexnet on (32, 32, 3), conv_layers=((8, 3, 1, -3, False),)':
        'models: alexnet conv_layers entries not checked (5 values, sizes > 0, pad >= 0)',
    'alexnet on (32, 32, 3), conv_layers=((8, 3),)':
        'models: alexnet conv_layers entries not checked (5 values, sizes > 0, pad >= 0)',
    'mlp on (6, 6, 3), hidden_sizes=(0,)':
        'models: hidden_sizes not checked (positive ints) before flax/jax',
    'mlp on (6, 6, 3), hidden_sizes=(-48,)':
        'models: hidden_sizes not checked (positive ints) before flax/jax',
    'mlp on (6, 6, 3), dropout=1.5':
        'models: dropout rate not range/type-checked (registry.build)',
    'resnet18 on (32, 32, 3), stage_sizes=(2, -1, 2, 2)':
        'models: widths/stage_sizes not checked (positive ints)',
    'resnet20 on (8, 8, 3), widths=(16, 0, 64)':
        'models: widths/stage_sizes not checked (positive ints)',
    'IDX: images of an odd size (not 28x28)':
        'data/sources.py: IDX images of another size than 28x28 are accepted',
}

CASES = faults.hostile_cases()


def _param(case):
    marks = ([pytest.mark.xfail(strict=True, reason=UNCLEAR[case.name])]
             if case.name in UNCLEAR else [])
    return pytest.param(case, id=f"{case.group}:{case.name}"[:120], marks=marks)


def test_enough_cases_are_generated():
    assert len(CASES) + len(faults.cli_cases()) >= 200
    assert {c.group for c in CASES} == {"config", "model", "data"}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input_ends_in_a_clear_error(case, tmp_path):
    ok, what = faults.check_hostile(case, tmp_path / "case", tmp_path)
    assert ok, what


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.name[:80], marks=[pytest.mark.xfail(strict=True, reason=UNCLEAR[c.name])]
                 if c.name in UNCLEAR else []) for c in faults.cli_cases()])
def test_hostile_command_line_prints_one_clean_error(campaign, case, tmp_path):
    ok, what = faults.check_cli(campaign.launcher, case, tmp_path)
    assert ok, what
