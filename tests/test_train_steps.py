"""Optimizers, schedules and the pure train/eval steps, on a tiny hand-made module."""

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax.train import optim, steps
from cnn_jax.train.state import create_train_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: experiments/
from experiments.default import get_default_config  # noqa: E402


class TinyNet(nn.Module):
    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(3, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def _config(**optim_fields):
    c = get_default_config()
    c.batch_size = 8
    for k, v in optim_fields.items():
        c.optim[k] = v
    return c


def _setup(config, total_steps=10, steps_per_epoch=5):
    model = TinyNet()
    schedule = optim.create_schedule(config, steps_per_epoch, total_steps)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 2))))
    tx = optim.create_optimizer(config, schedule, params["params"])
    cfg = steps.StepConfig(apply_fn=model.apply, tx=tx, schedule=schedule, num_classes=4)
    state = create_train_state(model, tx, 0, (6, 6, 2), ema=False)
    return cfg, state


def _batch(n=8, seed=0):
    r = np.random.default_rng(seed)
    return {"image": r.normal(size=(n, 6, 6, 2)).astype(np.float32),
            "label": r.integers(0, 4, n).astype(np.int32)}


@pytest.mark.parametrize("field,value,close", [("name", "adamww", "adamw"),
                                               ("schedule", "cosin", "cosine")])
def test_unknown_optimizer_or_schedule_lists_valid_names(field, value, close):
    c = _config(**{field: value})
    with pytest.raises(ValueError) as e:
        _setup(c)
    msg = str(e.value)
    assert f"Did you mean {close!r}" in msg and repr(value) in msg
    assert all(v in msg for v in (optim.OPTIMIZERS if field == "name" else optim.SCHEDULES))


def test_multistep_in_steps_and_epochs():
    c = _config(schedule="multistep", lr=1.0, milestones=(4, 6), milestone_unit="steps")
    s = optim.create_schedule(c, steps_per_epoch=3, total_steps=10)
    assert [float(s(i)) for i in (0, 3, 4, 5, 6, 9)] == pytest.approx([1, 1, .1, .1, .01, .01])
    c.optim.milestone_unit = "epochs"
    s = optim.create_schedule(c, steps_per_epoch=2, total_steps=20)  # epochs 4, 6 = steps 8, 12
    assert [float(s(i)) for i in (7, 8, 11, 12)] == pytest.approx([1, .1, .1, .01])


def test_warmup_then_cosine_and_linear_scaling():
    c = _config(schedule="cosine", lr=0.1, warmup_epochs=1.0, scale_lr_by_batch=True)
    c.batch_size = 512  # linear scaling rule: 0.1 * 512 / 256 = 0.2
    s = optim.create_schedule(c, steps_per_epoch=10, total_steps=110)
    assert float(s(0)) == pytest.approx(0.0)
    assert float(s(5)) == pytest.approx(0.1)
    assert float(s(10)) == pytest.approx(0.2)
    assert float(s(60)) == pytest.approx(0.1, rel=1e-3)
    assert float(s(110)) == pytest.approx(0.0, abs=1e-7)


def test_multistep_without_milestones_is_an_error():
    with pytest.raises(ValueError, match="milestones"):
        optim.create_schedule(_config(schedule="multistep"), 10, 100)


@pytest.mark.parametrize("decay_all", [False, True])
def test_l2_decay_adds_to_gradient_of_kernels_only_by_choice(decay_all):
    c = _config(name="sgd", momentum=0.0, lr=1.0, schedule="constant", weight_decay=0.5,
                weight_decay_mode="l2", decay_bn_and_bias=decay_all)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    tx = optim.create_optimizer(c, optim.create_schedule(c, 1, 10), params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.5 * np.ones((2, 2)))
    np.testing.assert_allclose(updates["bias"], -0.5 * np.ones(2) if decay_all else np.zeros(2))


def test_decoupled_decay_is_not_scaled_by_adam():
    c = _config(name="adamw", lr=0.1, schedule="constant", weight_decay=0.01)
    params = {"kernel": jnp.full((2, 2), 2.0)}
    tx = optim.create_optimizer(c, optim.create_schedule(c, 1, 10), params)
    updates, _ = tx.update({"kernel": jnp.zeros((2, 2))}, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.01 * 2.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lars"])
def test_train_step_lowers_the_loss(name):
    c = _config(name=name, lr=0.05 if name != "lars" else 1.0, schedule="constant")
    cfg, state = _setup(c)
    batch = _batch()
    step = jax.jit(lambda s, b: steps.train_step(s, b, cfg))
    first = None
    for _ in range(15):
        state, m = step(state, batch)
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < first
    assert int(state.step) == 15
    assert set(m) == {"loss", "top1", "top5", "lr", "grad_norm"}
    assert 0.0 <= float(m["top1"]) <= float(m["top5"]) <= 1.0
    assert float(m["lr"]) == pytest.approx(c.optim.lr)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_is_the_exact_formula(eps):
    # loss = -(1 - eps) log p_y - eps / K sum_k log p_k  (Szegedy et al. 2016, sec. 7)
    rng = np.random.default_rng(7)
    k = 10
    logits = rng.normal(size=(6, k)).astype(np.float32) * 3
    labels = rng.integers(0, k, 6)
    logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    want = -(1 - eps) * logp[np.arange(6), labels] - eps / k * logp.sum(-1)
    got = steps.cross_entropy(jnp.asarray(logits), jax.nn.one_hot(labels, k), eps)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    # soft (mixup) targets t: -sum_k ((1 - eps) t_k + eps / K) log p_k
    t = rng.dirichlet(np.ones(k), 6).astype(np.float32)
    want = -(((1 - eps) * t + eps / k) * logp).sum(-1)
    got = steps.cross_entropy(jnp.asarray(logits), jnp.asarray(t), eps)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_top1_and_top5_with_more_classes_than_five():
    # 12 classes; the true class ranks 1st, 3rd, 5th, 6th and 12th: top-5 misses the last two.
    k = 12
    order = np.arange(k, 0, -1, dtype=np.float32)  # class 0 scores highest
    logits = np.stack([np.roll(order, r) for r in range(5)])  # row r: class r ranks first
    ranks = np.array([1, 3, 5, 6, 12])
    labels = (np.arange(5) + ranks - 1) % k
    top1, top5 = steps.topk_correct(jnp.asarray(logits), jnp.asarray(labels))
    assert np.asarray(top1).tolist() == [1, 0, 0, 0, 0]
    assert np.asarray(top5).tolist() == [1, 1, 1, 0, 0]


def test_eval_and_train_top5_below_one_on_ten_classes():
    model = TinyNet(num_classes=10)
    c = _config()
    schedule = optim.create_schedule(c, 5, 10)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 2))))
    tx = optim.create_optimizer(c, schedule, params["params"])
    cfg = steps.StepConfig(apply_fn=model.apply, tx=tx, schedule=schedule, num_classes=10)
    state = create_train_state(model, tx, 0, (6, 6, 2), ema=False)
    r = np.random.default_rng(8)
    batch = {"image": r.normal(size=(64, 6, 6, 2)).astype(np.float32),
             "label": r.integers(0, 10, 64).astype(np.int32)}
    logits = np.asarray(model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                    batch["image"]))
    rank = (logits > logits[np.arange(64), batch["label"]][:, None]).sum(-1)  # 0 = top-1
    want1, want5 = float((rank < 1).sum()), float((rank < 5).sum())
    assert 0 < want1 < want5 < 64  # an untrained net misses the top 5 on some examples
    sums = steps.eval_step(state, batch, cfg)
    assert (float(sums["top1"]), float(sums["top5"])) == (want1, want5)
    _, m = steps.train_step(state, batch, cfg)
    assert 0 < float(m["top1"]) < float(m["top5"]) < 1.0  # train mode: batch statistics


def test_mixup_targets_change_the_loss():
    logits = jnp.array([[4.0, 0.0, 0.0, 0.0]])
    soft = jnp.array([[0.5, 0.5, 0.0, 0.0]])
    assert float(steps.cross_entropy(logits, soft, 0.0)[0]) > 2.0


def test_eval_step_sums_count_every_real_example_once():
    cfg, state = _setup(_config())
    batch = _batch(8)
    batch["mask"] = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    batch["image"][5:] = np.nan  # padding may hold anything
    sums = jax.jit(lambda s, b: steps.eval_step(s, b, cfg))(state, batch)
    assert float(sums["count"]) == 5.0
    assert np.isfinite(float(sums["loss"]))
    logits = cfg.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          batch["image"][:5])
    expect = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"][:5]).sum()
    assert float(sums["loss"]) == pytest.approx(float(expect), rel=1e-5)
    top1 = (np.argmax(logits, -1) == batch["label"][:5]).sum()
    assert float(sums["top1"]) == top1


def test_ema_tracks_params():
    c = _config(schedule="constant")
    model = TinyNet()
    cfg, _ = _setup(c)
    cfg = steps.StepConfig(apply_fn=model.apply, tx=cfg.tx, schedule=cfg.schedule,
                           num_classes=4, ema_decay=0.5)
    state = create_train_state(model, cfg.tx, 0, (6, 6, 2), ema=True)
    new, _ = steps.train_step(state, _batch(), cfg)
    expect = jax.tree.map(lambda p, e: 0.5 * p + 0.5 * e, new.params, state.ema_params)
    for a, b in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(expect)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


class AuxNet(nn.Module):
    """GoogLeNet-like: (logits, aux1, aux2) in train mode, logits alone otherwise."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x.reshape(x.shape[0], -1)
        logits = nn.Dense(4)(h)
        if not train:
            return logits
        return logits, nn.Dense(4, name="aux1")(h), nn.Dense(4, name="aux2")(h)


def test_auxiliary_logits_weigh_into_the_training_loss():
    c = _config(schedule="constant")
    model = AuxNet()
    state = create_train_state(model, optax.sgd(0.0), 0, (6, 6, 2), ema=False)
    assert "aux1" in state.params  # created by the train-mode initialisation
    cfg = steps.StepConfig(apply_fn=model.apply, tx=optax.sgd(0.0),
                           schedule=optim.create_schedule(c, 1, 10), num_classes=4,
                           aux_loss_weight=0.3)
    batch = _batch()
    _, m = steps.train_step(state, batch, cfg)
    main, a1, a2 = model.apply({"params": state.params}, batch["image"], train=True)
    ce = [optax.softmax_cross_entropy_with_integer_labels(l, batch["label"]).mean()
          for l in (main, a1, a2)]
    assert float(m["loss"]) == pytest.approx(float(ce[0] + 0.3 * (ce[1] + ce[2])), rel=1e-5)
    sums = steps.eval_step(state, batch, cfg)  # inference: main logits only
    assert float(sums["loss"]) == pytest.approx(8 * float(ce[0]), rel=1e-5)


def test_config_differences_ignore_run_control_and_new_defaults():
    from cnn_jax.train.checkpoint import config_differences
    stored = {"seed": 0, "log_every_steps": 10, "optim": {"lr": 0.1},
              "model": {"name": "mlp", "dropout": 0.1}, "data": {"name": "x"}}
    new = {"seed": 0, "log_every_steps": 50, "optim": {"lr": 0.2},
           "model": {"name": "mlp"}, "data": {"name": "x", "new_default": 1}}
    assert config_differences(stored, new) == [("model.dropout", 0.1, "<absent>"),
                                               ("optim.lr", 0.1, 0.2)]


@pytest.mark.parametrize("field,value,expect", [
    ("lr", float("nan"), "optim.lr must be a number"),
    ("lr", "0.1x", "optim.lr must be a number"),
    ("lr", -1.0, "optim.lr=-1.0 is out of range"),
    ("momentum", 1.5, "optim.momentum=1.5 is out of range"),
    ("weight_decay", "fast", "optim.weight_decay must be a number"),
    ("gamma", -0.5, "optim.gamma=-0.5 is out of range"),
    ("b1", 1.0, "optim.b1=1.0 is out of range"),
    ("eps", -1e-8, "optim.eps=-1e-08 is out of range"),
    ("milestones", ("a",), "optim.milestones must be a number"),
    ("nesterov", "yes", "optim.nesterov must be True or False"),
])
def test_optimizer_fields_are_checked_with_their_name(field, value, expect):
    c = _config()
    with c.ignore_type():
        c.optim[field] = value
    with pytest.raises(ValueError) as e:
        optim.validate(c)
    assert expect in str(e.value)


def test_eval_flip_tta_averages_the_logits_of_image_and_mirror():
    import dataclasses

    cfg, state = _setup(_config())
    tta = dataclasses.replace(cfg, eval_flip_tta=True)
    batch = _batch()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = cfg.apply_fn(variables, batch["image"], train=False)
    mirrored = cfg.apply_fn(variables, batch["image"][:, :, ::-1], train=False)
    mean = (np.asarray(logits) + np.asarray(mirrored)) / 2
    assert not np.allclose(logits, mirrored)  # the net is not flip-invariant: the test can fail
    want_top1 = float(np.sum(mean.argmax(-1) == batch["label"]))
    want_loss = float(np.sum(optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(mean), batch["label"])))
    sums = steps.eval_step(state, batch, tta)
    assert float(sums["top1"]) == want_top1
    np.testing.assert_allclose(float(sums["loss"]), want_loss, rtol=1e-5)
    # a mirror-symmetric image gives the plain logits
    sym = dict(batch, image=(batch["image"] + batch["image"][:, :, ::-1]) / 2)
    a, b = steps.eval_step(state, sym, tta), steps.eval_step(state, sym, cfg)
    np.testing.assert_allclose(float(a["loss"]), float(b["loss"]), rtol=1e-5)


def test_global_norm_equals_optax_tree_norm():
    rng = np.random.default_rng(3)
    tree = {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
                     "bias": rng.normal(size=8).astype(np.float32)},
            "scalars": [np.float32(-2.5), np.float32(0.0)], "big": rng.normal(size=5000) * 30}
    tree = jax.tree.map(jnp.asarray, tree)
    want = float(optax.tree.norm(tree))
    assert float(steps.global_norm(tree)) == pytest.approx(want, rel=1e-6)
    assert float(jax.jit(steps.global_norm)(tree)) == pytest.approx(want, rel=1e-6)
    assert float(steps.global_norm({})) == 0.0


def test_train_step_reports_the_gradient_norm():
    c = _config(name="sgd", lr=0.05, schedule="constant")
    cfg, state = _setup(c)
    batch = _batch()

    def loss(params):
        out = cfg.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                           train=True, mutable=["batch_stats"])[0]
        targets = jax.nn.one_hot(batch["label"], cfg.num_classes)
        return jnp.mean(steps.cross_entropy(out, targets, 0.0))
    want = float(optax.tree.norm(jax.grad(loss)(state.params)))
    _, m = jax.jit(lambda s, b: steps.train_step(s, b, cfg))(state, batch)
    assert float(m["grad_norm"]) == pytest.approx(want, rel=1e-4)
    assert want > 0
