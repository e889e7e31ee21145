"""Divergence: a training loss or a parameter norm that has exploded, finite or not.

A run has diverged when, at some step,
- the training loss or the gradient norm is NaN or infinite; or
- the training loss exceeds `config.divergence_factor` x the reference loss, the larger of the
  run's first training loss and ln(num_classes) (the loss of a uniform prediction, what a fresh
  network gives); or
- the global norm of the parameters about to be checkpointed is not finite or exceeds
  `config.divergence_param_factor` x their norm at the start of training.

Why these defaults: divergence_factor=20 puts the bound at 46 for 10 classes (138 for 1000).
A healthy run's loss stays within a few times its start: the early spike of a deep net (e.g.
ResNet-56 at lr 0.1 goes from 2.3 to about 6 within its first steps, then recovers) is 2.6x;
auxiliary heads (GoogLeNet's 0.3 x 2) start the reference itself higher. A loss 20x the start
means logits off by tens of nats: the run has left the regime it can recover from (SGD at lr 3
on LeNet-5 reached 1e14). Parameter norms grow slowly in healthy runs (weight decay holds them;
without it a few-fold over a run), so 1e4x is never a false alarm, and it catches the blow-up
that a loss check sees one step late (SGD at lr 1e38 left parameters near 8e36 after one step
with a still-finite loss). 0 turns either check off (non-finite values always count).

The loss logged at step s is that of the parameters after step s-1, so when step b diverges
the checkpoint of step b-1 holds the parameters that produced it: checkpoints from step b-1 on
are moved to `checkpoints_diverged/` (kept for inspection, never deleted), so that the message's
"last good checkpoint" is the one a re-run resumes from.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

import jax
import numpy as np

DEFAULT_FACTOR = 20.0
DEFAULT_PARAM_FACTOR = 1e4
DIVERGED_SUBDIR = "checkpoints_diverged"


class NonFiniteLossError(FloatingPointError):
    """The run diverged (a non-finite or exploded loss or parameter norm); it stopped before
    saving the bad state."""


DivergenceError = NonFiniteLossError


def global_norm(tree: Any) -> float:
    """The L2 norm over every array of a host tree (float64; inf when it overflows)."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for x in jax.tree.leaves(tree):
            x = np.asarray(x, dtype=np.float64)
            total += float(np.sum(x * x))
    return math.sqrt(total) if math.isfinite(total) else float("inf")


class Guard:
    """Checks a run's losses and parameter norms against its divergence bounds.

    `reference` is what an earlier segment of the run stored in its checkpoint's meta (see
    `reference()`); without one (a fresh run, or a checkpoint from before this check) the first
    loss and the first checkpointed parameter norm seen set it.
    """

    def __init__(self, config: Any, num_classes: int, reference: dict | None = None,
                 fresh: bool = True):
        self.factor = float(config.get("divergence_factor", DEFAULT_FACTOR))
        self.param_factor = float(config.get("divergence_param_factor", DEFAULT_PARAM_FACTOR))
        self.uniform_loss = math.log(max(int(num_classes), 2))
        reference = reference or {}
        self.ref_loss = reference.get("loss")
        self.ref_param_norm = reference.get("param_norm")
        self.fresh = fresh  # only a run's first step sets the reference loss

    def reference(self) -> dict:
        """What a checkpoint stores so that a resumed run keeps the same bounds."""
        return {"loss": self.ref_loss, "param_norm": self.ref_param_norm}

    def loss_bound(self) -> float:
        if self.factor <= 0:
            return float("inf")
        return self.factor * max(self.ref_loss or 0.0, self.uniform_loss)

    def first_bad(self, losses: np.ndarray, upto: int) -> tuple[int, str] | None:
        """(step, what) of the first diverged step among `losses` (the steps ending at
        `upto`; NaN marks a non-finite gradient norm too), or None."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        first = upto - len(losses) + 1
        if self.ref_loss is None and self.fresh and len(losses) and first == 1 \
                and math.isfinite(losses[0]):
            self.ref_loss = float(losses[0])
        finite = np.isfinite(losses)
        bound = self.loss_bound()
        for i, loss in enumerate(losses):
            if not finite[i]:
                return first + i, "Non-finite training loss or gradient norm"
            if loss > bound:
                return first + i, (
                    f"Training loss {loss:.4g} above the divergence bound {bound:.4g} "
                    f"(config.divergence_factor={self.factor:g} x the reference loss "
                    f"{max(self.ref_loss or 0.0, self.uniform_loss):.4g})")
        return None

    def check_params(self, params: Any) -> str | None:
        """Why the parameters (a host tree) have diverged, or None."""
        norm = global_norm(params)
        if not math.isfinite(norm):
            return "Non-finite parameters"
        if self.ref_param_norm is None:
            self.ref_param_norm = norm
            return None
        if self.param_factor > 0 and norm > self.param_factor * max(self.ref_param_norm, 1e-6):
            return (f"Parameter norm {norm:.4g} above the divergence bound "
                    f"(config.divergence_param_factor={self.param_factor:g} x its starting "
                    f"value {self.ref_param_norm:.4g})")
        return None


def set_aside(store: Any, from_step: int) -> tuple[list[int], str | None]:
    """Moves the checkpoints at `from_step` and later to DIR/checkpoints_diverged/ (kept, never
    deleted). Returns (moved steps, destination)."""
    moved = [s for s in store.steps() if s >= from_step]
    if not moved:
        return [], None
    dst_root = os.path.join(os.path.dirname(store.directory), DIVERGED_SUBDIR)
    os.makedirs(dst_root, exist_ok=True)
    for step in moved:
        dst, n = os.path.join(dst_root, str(step)), 1
        while os.path.exists(dst):
            dst, n = os.path.join(dst_root, f"{step}.{n}"), n + 1
        shutil.move(os.path.join(store.directory, str(step)), dst)
    store.manager.reload()
    return moved, dst_root


def stop(store: Any, step: int, what: str, steps_per_epoch: int, *, params_bad: bool,
         is_writer: bool, config: Any) -> NonFiniteLossError:
    """The error that stops a run diverged at `step`, after setting aside the checkpoints that
    hold diverged parameters (from `step` when the parameters were checked, else `step - 1`)."""
    store.wait()
    first_bad = step if params_bad else step - 1
    moved, where = (set_aside(store, first_bad) if is_writer else ([], None))
    good = [s for s in store.steps() if s < first_bad]
    aside = (f" The checkpoint(s) of step(s) {', '.join(map(str, moved))}, which hold the "
             f"diverged parameters, were moved to {where}." if moved else "")
    last = f"step {good[-1]} in {store.directory}" if good else "none (a re-run starts afresh)"
    resume = (f" (a re-run resumes from it; to change optim.lr for it, add --force, or use a new "
              f"--workdir)" if good else "")
    return NonFiniteLossError(
        f"{what} at step {step} (epoch {step / steps_per_epoch:.2f}): training stopped, no "
        f"checkpoint of this state was saved.{aside} Last good checkpoint: {last}{resume}. "
        f"Lower optim.lr (now {config.optim.lr:g}), set grad_clip_norm, or check the data.")
