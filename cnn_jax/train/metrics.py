"""Where metrics go: `DIR/metrics.jsonl`, TensorBoard event files and the console.

TensorBoard gets plain `simple_value` scalars (what `EventAccumulator.Scalars` and every
TensorBoard reader understand) and the HParams plugin's record of the run's flattened config.
"""


from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np
from absl import logging

from cnn_jax import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
PER_CLASS_KEYS = ("per_class_top1", "confusion_matrix")


def _clean(value: Any) -> Any:
    """JSON-safe values: floats stay floats, NaN/inf become strings so that the line parses
    (also inside lists and dicts, e.g. per-class metrics)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    elif hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def truncate_jsonl(path: str, last_step: int, *, evals_at_last: bool = True) -> int:
    """Keeps the records with step <= last_step (and drops a torn last line); returns the count.

    Called on resume so that metrics.jsonl has no duplicated and no missing steps.
    `evals_at_last=False` also drops the evaluation records (split other than train) of
    last_step: for a finished run that evaluates its last step again.
    """
    if not os.path.exists(path):
        return 0
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not record.get("step", math.inf) <= last_step:
                continue
            if not evals_at_last and record["step"] == last_step and record.get("split") != "train":
                continue
            kept.append(json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=True,
                                   allow_nan=False))
    files.write_text(path, "".join(line + "\n" for line in kept))
    return len(kept)


def per_class(confusion: Any) -> dict:
    """`per_class_top1` (None for a class without examples) and `confusion_matrix` (lists of
    ints, rows the true class, columns the predicted one) from a summed confusion matrix."""
    counts = np.asarray(confusion, np.int64)
    totals = counts.sum(axis=1)
    top1 = [float(counts[i, i] / n) if n else None for i, n in enumerate(totals)]
    return {"per_class_top1": top1, "confusion_matrix": counts.tolist()}


def hparams_of(cfg_dict: dict) -> dict[str, bool | int | float | str]:
    """The flattened config ('optim.lr': 0.1) with values TensorBoard's HParams plugin accepts."""
    out: dict[str, bool | int | float | str] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                ok = isinstance(v, (bool, int, float, str))
                out[f"{prefix}{k}"] = v if ok else json.dumps(v)
    walk(cfg_dict, "")
    return out


class _LocalEventFile:
    """A TensorBoard event file on a local disk: TensorBoard's record format over a plain file.

    TensorBoard's `EventFileWriter` creates its file through `tf.io.gfile`, and with TensorFlow
    installed that imports TensorFlow: 3.15 s on the critical path of a re-launched ResNet-20 run,
    before its first step (issue 15, benchmarks/RESULTS.md). A local file needs no gfile, so
    this writes the same records (TensorBoard's `RecordWriter`) to an ordinary file, flushed after
    every event.
    """

    def __init__(self, logdir: str):
        import socket

        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{id(self)}")
        self._file = open(os.path.join(logdir, name), "wb")
        self._records = RecordWriter(self._file)
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: Any) -> None:
        self._records.write(event.SerializeToString())
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _EventWriter:
    """One TensorBoard event file written with TensorBoard's own record format: directly for a
    local directory, through TensorBoard's `EventFileWriter` (tf.io.gfile) for a remote one."""

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        if "://" in logdir:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
            self._writer = EventFileWriter(logdir)
        else:
            self._writer = _LocalEventFile(logdir)

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self.write_summary(step, self._summary(value=values))

    def write_summary(self, step: int, summary: Any) -> None:
        self._writer.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_jsonl(path: str) -> list[dict]:
    """Every parseable record of a metrics.jsonl file."""
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


class MetricsLogger:
    """Appends records to metrics.jsonl and TensorBoard (one event directory per split).

    `hparams` (the resolved config as a dict) goes to the HParams plugin in the TensorBoard
    root, so that the runs of a sweep compare side by side. Only the process that owns the
    files (process 0) writes; the others get a no-op logger.
    """

    def __init__(self, workdir: str, enabled: bool = True, hparams: dict | None = None):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb_root = os.path.join(workdir, TENSORBOARD_SUBDIR)
        self._writers: dict[str, Any] = {}
        self._warned = False
        self._file = open(self.path, "a") if enabled else None
        if enabled and hparams is not None:
            self._write_hparams(hparams)

    def _writer(self, split: str) -> Any:
        """The split's TensorBoard writer ("" = the root); None without TensorBoard installed."""
        if split not in self._writers:
            try:
                writer = _EventWriter(os.path.join(self._tb_root, split))
            except ImportError as e:
                if not self._warned:
                    logging.warning("TensorBoard files skipped (%s); metrics go to %s only.", e,
                                    self.path)
                    self._warned = True
                return None
            self._writers[split] = writer
        return self._writers[split]

    def _write_hparams(self, cfg_dict: dict) -> None:
        writer = self._writer("")
        if writer is not None:
            from tensorboard.plugins.hparams import summary_v2 as hp
            writer.write_summary(0, hp.hparams_pb(hparams_of(cfg_dict)))

    def write(self, record: dict) -> None:
        """One record: needs `step` and `split`; numbers also go to TensorBoard."""
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in record.items()
                   if k not in ("step", "split") and isinstance(v, (int, float))}
        writer = self._writer(record["split"])
        if writer is not None:
            writer.write_scalars(int(record["step"]), scalars)

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for w in self._writers.values():
            w.close()
        self._writers = {}


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def weights_note(m: dict) -> str:
    """'' for the live weights; for an EMA run, that it scored the EMA and the live figures."""
    if m.get("weights") != "ema":
        return ""
    return (f" [EMA weights; live weights: top1 {100 * m['raw_top1']:.2f}% "
            f"top5 {100 * m['raw_top5']:.2f}% loss {m['raw_loss']:.4f}]")


class Progress:
    """Console progress lines: a bar, step, epoch, loss, accuracy, lr, img/s and ETA."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.total = max(total_steps, 1)
        self.start_step = start_step
        self.start_time = time.time()
        self.enabled = enabled

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return math.nan
        return (time.time() - self.start_time) / done * (self.total - step)

    def train_line(self, step: int, epoch: float, m: dict) -> None:
        if not self.enabled:
            return
        frac = min(step / self.total, 1.0)
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        eta = self.eta(step)
        print(f"[{bar}] step {step}/{self.total} ep {epoch:.2f} | loss {m['loss']:.4f} "
              f"top1 {100 * m['top1']:.2f}% | lr {m['lr']:.4g} | {m['img_per_s']:.0f} img/s | "
              f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}", flush=True)

    def eval_line(self, step: int, split: str, m: dict) -> None:
        if self.enabled:
            print(f"  eval {split} @ step {step}: loss {m['loss']:.4f} top1 {100 * m['top1']:.2f}% "
                  f"top5 {100 * m['top5']:.2f}% ({m['num_examples']} examples, "
                  f"{m['seconds']:.1f}s){weights_note(m)}", flush=True)
