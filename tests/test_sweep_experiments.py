"""The experiment files of the sweeps/recipes issue: each documents its command, builds its config
(full and runlocal), carries the published recipe, and rejects bad args."""

from pathlib import Path

import pytest
from PIL import Image

from cnn_jax import sweep

REPO = Path(__file__).resolve().parent.parent
SWEEPS = ("ablation_depth", "ablation_norm", "mlp_vs_cnn_cifar10")
RECIPES = ("resnet18_fashion_mnist", "imagenet_resnet18", "imagenet_resnet50",
           "imagenet_googlenet", "imagenet_alexnet", "imagenet_vgg16")


def _load(name):
    return sweep.load_experiment(str(REPO / "experiments" / f"{name}.py"))


@pytest.mark.parametrize("name", SWEEPS + RECIPES)
def test_docstring_starts_with_the_command_and_says_what_it_should_reach(name):
    module = _load(name)
    doc = module.__doc__ or ""
    assert f"python launch.py --config=experiments/{name}.py" in doc
    assert "Should reach" in doc or "should show" in doc.lower()
    assert "runlocal" in doc


@pytest.mark.parametrize("name", SWEEPS + RECIPES)
def test_full_and_runlocal_configs_build(name, monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_JAX_CIFAR10", str(tmp_path))
    module = _load(name)
    full, local = module.get_config(), module.get_config("runlocal")
    assert full.model.name and local.model.name == full.model.name
    assert local.total_steps > 0 and local.total_steps <= 10
    assert local.batch_size <= 16 < full.batch_size
    with pytest.raises(ValueError, match="Unknown experiment arg"):
        module.get_config("runlcoal")


def test_cifar_sweeps_use_he_et_al_recipe_and_the_data_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_JAX_CIFAR10", str(tmp_path))
    c = _load("ablation_depth").get_config("depth=56,residual=False")
    assert c.model.name == "plain56"
    assert (c.batch_size, c.optim.lr, c.optim.weight_decay, c.num_epochs) == (128, 0.1, 1e-4, 182)
    assert c.optim.milestones == (91, 136)
    assert c.data.path == str(tmp_path) and c.data.val_split == "train[90%:]"
    assert c.data.eval_split == "train[90%:]"  # no test/ folder in the tree
    (tmp_path / "test").mkdir()
    c = _load("ablation_depth").get_config("depth=32,epochs=20")
    assert (c.model.name, c.model.shortcut, c.optim.milestones) == ("resnet32", "A", (10, 15))
    assert c.data.eval_split == "test"
    c = _load("ablation_norm").get_config("norm=group,residual=False,data=synthetic")
    assert (c.model.name, c.model.norm, c.data.name) == ("plain20", "group", "synthetic")
    assert [n for n, _ in _load("ablation_norm").get_sweep("depth=32")] == [
        f"norm-{n}_{r}" for n in ("batch", "group", "layer", "none")
        for r in ("noresidual", "residual")]
    mlp = _load("mlp_vs_cnn_cifar10").get_config("net=mlp")
    cnn = _load("mlp_vs_cnn_cifar10").get_config("net=cnn")
    assert (mlp.num_epochs, mlp.batch_size) == (cnn.num_epochs, cnn.batch_size)
    assert mlp.model.name == "mlp" and cnn.model.name != "mlp"


def test_imagenet_recipes_match_the_papers():
    r50 = _load("imagenet_resnet50").get_config()
    assert (r50.batch_size, r50.optim.lr, r50.optim.momentum, r50.optim.weight_decay) == (
        256, 0.1, 0.9, 1e-4)
    assert (r50.num_epochs, r50.optim.milestones) == (90, (30, 60, 80))
    assert (r50.data.name, r50.data.image_size, r50.data.random_resized_crop, r50.data.flip) == (
        "imagenet2012", 224, True, True)
    alex = _load("imagenet_alexnet").get_config()
    assert (alex.batch_size, alex.optim.lr, alex.optim.weight_decay) == (128, 0.01, 5e-4)
    vgg = _load("imagenet_vgg16").get_config()
    assert (vgg.batch_size, vgg.optim.lr, vgg.optim.weight_decay, vgg.num_epochs) == (
        256, 0.01, 5e-4, 74)
    gn = _load("imagenet_googlenet").get_config()
    assert gn.optim.gamma == 0.96 and gn.optim.milestones[:3] == (8, 16, 24)
    nette = _load("imagenet_resnet18").get_config("data=imagenette")
    assert nette.data.name == "imagenette" and nette.data.eval_split == "validation"
    local = _load("imagenet_resnet18").get_config("runlocal")
    assert local.data.name == "synthetic" and not local.data.random_resized_crop  # in memory
    with pytest.raises(ValueError, match="imagenet2012"):
        _load("imagenet_resnet18").get_config("data=imagenet")


def test_get_sweep_restricts_axes_through_its_args():
    assert [n for n, _ in _load("ablation_depth").get_sweep("depths=20+56")] == [
        "depth20_noresidual", "depth20_residual", "depth56_noresidual", "depth56_residual"]
    assert [n for n, _ in _load("ablation_depth").get_sweep("depths=20+56,twins=residual")] == [
        "depth20_residual", "depth56_residual"]
    with pytest.raises(ValueError, match="'highway' is not one of plain, residual"):
        _load("ablation_depth").get_sweep("twins=residual+highway")
    assert [n for n, _ in _load("mlp_vs_cnn_cifar10").get_sweep("nets=mlp")] == ["mlp"]
    with pytest.raises(ValueError, match="not one of"):
        _load("mlp_vs_cnn_cifar10").get_sweep("nets=mlp+rnn")


RUNLOCAL = [("ablation_depth", "runlocal,data=synthetic,depth=32,residual=False"),
            ("ablation_norm", "runlocal,data=synthetic,norm=none"),
            ("mlp_vs_cnn_cifar10", "runlocal,data=synthetic,net=mlp"),
            ("mlp_vs_cnn_cifar10", "runlocal,data=synthetic"),
            ("resnet18_fashion_mnist", "runlocal"),
            *[(name, "runlocal") for name in RECIPES if name.startswith("imagenet_")]]


@pytest.mark.parametrize("name,arg", RUNLOCAL)
def test_runlocal_configs_pass_the_engines_setup(name, arg, tmp_path):
    """Config, data, model shapes and schedule all check out, short of training a step."""
    from cnn_jax.train import loop

    config = _load(name).get_config(arg)
    if config.data.name == "fashion_mnist" and not Path(
            "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
    config.data.cache_dir = str(tmp_path)
    setup = loop.Setup(config)
    assert setup.total_steps == config.total_steps


@pytest.mark.parametrize("name,first", [("ablation_depth", "depth20_noresidual"),
                                        ("ablation_norm", "norm-batch_noresidual"),
                                        ("mlp_vs_cnn_cifar10", "mlp")])
def test_seeds_axis_names_the_points_and_sets_config_seed(name, first, monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_JAX_CIFAR10", str(tmp_path))
    module = _load(name)
    one = module.get_sweep()
    assert one[0][0] == first  # a single seed keeps today's names
    if name != "mlp_vs_cnn_cifar10":
        assert "seed" not in one[0][1]  # ... and today's plan
    two = module.get_sweep("seeds=0+1")
    assert len(two) == 2 * len(one)
    assert [n for n, _ in two[:2]] == [f"{first}_seed0", f"{first}_seed1"]
    path = f"experiments/{name}.py"
    points = sweep.check_points(two)
    for point, axes in points[:2]:
        argv = sweep.point_command(path, "w", point, axes)
        config = module.get_config(argv[0].split(":", 1)[1])
        assert config.seed == axes["seed"]
    assert module.get_config().seed == 0


def test_default_data_path_is_recorded_with_tilde_and_read_expanded(monkeypatch, tmp_path):
    # the config (and so config.json and results.json) names no one machine's home folder; the
    # data reader, the sweep's data check and a resumed run's config check all expand `~`
    from cnn_jax import data
    from cnn_jax.train import checkpoint
    monkeypatch.delenv("CNN_JAX_CIFAR10", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    tree = tmp_path / "data" / "cifar10-jpeg"
    for split in ("train", "test"):
        (tree / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tree / split / "cat" / "0.jpg")
    c = _load("ablation_depth").get_config("depth=20")
    assert c.data.path == "~/data/cifar10-jpeg"
    assert c.data.eval_split == "test"  # the folder check expanded `~`
    assert data.sources.resolve_source(c.data).name == "cifar10"
    stored = {"data": {"path": str(tree)}}  # a run recorded before paths kept `~`
    assert checkpoint.config_differences(stored, {"data": {"path": "~/data/cifar10-jpeg"}}) == []
    assert checkpoint.config_differences(stored, {"data": {"path": "~/elsewhere"}}) != []
