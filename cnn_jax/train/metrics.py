"""Where metrics go: `DIR/metrics.jsonl`, TensorBoard event files (clu) and the console."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import logging

from cnn_jax import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"


def _clean(value: Any) -> Any:
    """JSON-safe scalars: floats stay floats, NaN/inf become strings so that the line parses."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def truncate_jsonl(path: str, last_step: int) -> int:
    """Keeps the records with step <= last_step (and drops a torn last line); returns the count.

    Called on resume so that metrics.jsonl has no duplicated and no missing steps.
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
            if isinstance(record, dict) and record.get("step", math.inf) <= last_step:
                kept.append(json.dumps(record, sort_keys=True))
    files.write_text(path, "".join(line + "\n" for line in kept))
    return len(kept)


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

    Only the process that owns the files (process 0) writes; the others get a no-op logger.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb_root = os.path.join(workdir, TENSORBOARD_SUBDIR)
        self._writers: dict[str, Any] = {}
        self._warned = False
        self._file = open(self.path, "a") if enabled else None

    def _writer(self, split: str) -> Any:
        """The split's TensorBoard writer; None where clu/TensorFlow cannot be imported."""
        if split not in self._writers:
            try:
                from clu import metric_writers  # local: its TensorBoard writer imports TensorFlow
            except ImportError as e:
                if not self._warned:
                    logging.warning("TensorBoard files skipped (%s); metrics go to %s only.", e,
                                    self.path)
                    self._warned = True
                return None
            self._writers[split] = metric_writers.SummaryWriter(os.path.join(self._tb_root, split))
        return self._writers[split]

    def write(self, record: dict) -> None:
        """One record: needs `step` and `split`; numbers also go to TensorBoard."""
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
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
                  f"{m['seconds']:.1f}s)", flush=True)
