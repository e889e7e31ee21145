"""Training engine: train state, optimizers, pure steps, jit/pmap parallelism, Orbax checkpoints,
metric writers, the loop `train_and_evaluate(config, workdir)`, and evaluation and prediction
from a checkpoint."""

from cnn_jax.train.checkpoint import CheckpointError, load_latest
from cnn_jax.train.inference import evaluate_checkpoint, predict
from cnn_jax.train.loop import NonFiniteLossError, train_and_evaluate
from cnn_jax.train.state import TrainState
from cnn_jax.train.steps import eval_step, train_step

__all__ = ["CheckpointError", "NonFiniteLossError", "TrainState", "eval_step", "evaluate_checkpoint",
           "load_latest", "predict", "train_and_evaluate", "train_step"]
