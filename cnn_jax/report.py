"""Tables and plots from run directories: `python -m cnn_jax.report DIR [--filters] [--feature_maps IMG]`.

DIR is a sweep directory (one run per subdirectory, `sweep.json` naming the axes) or one run
directory. Writes `summary.csv`, `summary.md`, `curves*.png` (train error thin, validation error
bold, against epoch; one figure per group) and `error_vs_depth.png` when a depth axis exists.
Errors are top-1 / top-5 ERROR in percent (100 * (1 - accuracy)).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cnn_jax import sweep

SPLITS = ("train", "val", "test")
RUN_MARKERS = ("results.json", "metrics.jsonl", "config.json", sweep.STATUS_FILE)
METRIC_COLUMNS = (
    "status", "epochs",
    "train_top1_err", "val_top1_err", "test_top1_err",
    "best_train_top1_err", "best_val_top1_err", "best_test_top1_err",
    "train_top5_err", "val_top5_err", "test_top5_err",
    "params", "macs", "wall_time_s", "img_per_s", "error",
)


@dataclass
class Run:
    """One run directory (or a planned sweep point that has none yet) and what it recorded."""
    name: str
    path: Path
    axes: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None
    sweep_status: dict[str, Any] | None = None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete or repair it") from None
    return obj if isinstance(obj, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a torn last line (run killed mid-write) is skipped, and a step
    logged twice (before a kill and again after resuming) keeps its newest row."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}, line {i + 1}: not valid JSON: {line[:80]!r}") from None
        if isinstance(row, dict):
            rows.append(row)
    # A resumed run logs again the steps after its last checkpoint: keep the newest of each.
    newest = {(r.get("split"), r.get("step")): i for i, r in enumerate(rows)}
    return [r for i, r in enumerate(rows) if newest[(r.get("split"), r.get("step"))] == i]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def load_run(path: Path, name: str | None = None, axes: dict | None = None) -> Run:
    config = _read_json(path / "config.json") or {}
    return Run(name=name or path.name, path=path, axes=dict(axes or {}), config=flatten(config),
               metrics=read_metrics(path / "metrics.jsonl"),
               results=_read_json(path / "results.json"),
               sweep_status=_read_json(path / sweep.STATUS_FILE))


def _axis_name(key: str) -> str:
    return key[len(sweep.CONFIG_PREFIX):] if key.startswith(sweep.CONFIG_PREFIX) else key


def find_runs(directory: str | Path) -> list[Run]:
    """The runs under a sweep directory (in sweep order), or the directory itself if it is one."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"report directory {str(root)!r} does not exist")
    if is_run_dir(root):
        return [load_run(root)]
    plan = _read_json(root / sweep.SWEEP_FILE)
    runs: list[Run] = []
    planned = set()
    if plan:
        for point in plan.get("points", []):
            name = point["name"]
            planned.add(name)
            axes = {_axis_name(k): v for k, v in point.get("axes", {}).items()}
            runs.append(load_run(root / name, name, axes))
    for sub in sorted(p for p in root.iterdir() if p.name not in planned and is_run_dir(p)):
        runs.append(load_run(sub))
    if not any(is_run_dir(r.path) for r in runs):
        if plan:
            raise FileNotFoundError(
                f"no runs yet in {root}: its sweep.json plans {len(runs)} points but none has "
                "started; run them (launch.py ... --sweep, or the commands of --sweep_dry_run) "
                "and report again")
        raise FileNotFoundError(
            f"no runs in {root}: a run directory holds results.json, metrics.jsonl or config.json "
            "(give a run directory, or a sweep directory with one run per subdirectory)")
    if not plan and len(runs) > 1:
        _derive_axes(runs)
    return runs


def _derive_axes(runs: list[Run]) -> None:
    """Without a sweep plan, the axes are the config fields whose values differ between runs."""
    keys = sorted({k for r in runs for k in r.config})
    for key in keys:
        values = {repr(r.config.get(key)) for r in runs}
        if len(values) > 1 and key not in ("workdir",):
            for r in runs:
                r.axes[key] = r.config.get(key)


# ----------------------------------------------------------------------------------------------
# Numbers.


def _err(acc: Any) -> float | None:
    if acc is None or not isinstance(acc, (int, float)) or math.isnan(acc):
        return None
    return 100.0 * (1.0 - float(acc))


def split_rows(run: Run, split: str) -> list[dict[str, Any]]:
    return [r for r in run.metrics if r.get("split") == split and r.get("top1") is not None]


def run_status(run: Run) -> tuple[str, str]:
    """(status, error line): finished, failed, incomplete (started, not finished) or pending."""
    if run.results and run.results.get("status") == "finished":
        return "finished", ""
    st = run.sweep_status or {}
    if st.get("status") == "failed":
        return "failed", str(st.get("error", ""))
    if run.results and run.results.get("status"):
        return str(run.results["status"]), str(run.results.get("error") or st.get("error", ""))
    if run.metrics or st or run.config:
        return "incomplete", ""
    return "pending", ""


def summarize(run: Run) -> dict[str, Any]:
    """One summary row: final and best top-1 error per split, final top-5 error, cost, status."""
    status, error = run_status(run)
    res = run.results or {}
    final = res.get("final") or {}
    row: dict[str, Any] = {"point": run.name, "status": status, "error": error}
    for split in SPLITS:
        rows = split_rows(run, split)
        last = final.get(split) or (rows[-1] if rows else {})
        row[f"{split}_top1_err"] = _err(last.get("top1"))
        row[f"{split}_top5_err"] = _err(last.get("top5"))
        errs = [e for e in (_err(r.get("top1")) for r in rows) if e is not None]
        if row[f"{split}_top1_err"] is not None:
            errs.append(row[f"{split}_top1_err"])
        row[f"best_{split}_top1_err"] = min(errs) if errs else None
    if res.get("best_val_top1") is not None:
        row["best_val_top1_err"] = _err(res["best_val_top1"])
    epochs = res.get("epochs")
    if epochs is None and run.metrics:
        epochs = max((r.get("epoch") or 0.0) for r in run.metrics)
    row["epochs"] = epochs
    row["params"] = res.get("params")
    row["macs"] = res.get("macs")
    row["wall_time_s"] = res.get("wall_time_s")
    img_per_s = res.get("img_per_s")
    if img_per_s is None:
        speeds = sorted(r["img_per_s"] for r in split_rows(run, "train") if r.get("img_per_s"))
        img_per_s = speeds[len(speeds) // 2] if speeds else None
    row["img_per_s"] = img_per_s
    return row


def axis_keys(runs: Sequence[Run]) -> list[str]:
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.axes if k not in keys]
    return keys


def table(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    axes = axis_keys(runs)
    rows = []
    for r in runs:
        row = summarize(r)
        row.update({k: r.axes.get(k) for k in axes})
        rows.append(row)
    return ["point", *axes, *METRIC_COLUMNS], rows


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if column.endswith("_err"):
            return f"{value:.2f}"
        if column in ("params", "macs"):
            return f"{value:.4g}"
        if column in ("epochs",):
            return f"{value:.3g}"
        return f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool) and column in ("params", "macs"):
        return _human(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else
                                 round(row[c], 4) if isinstance(row[c], float) else
                                 _cell(row[c], "") if isinstance(row[c], (list, tuple)) else row[c])
                             for c in columns})


def write_markdown(path: Path, title: str, columns: list[str], rows: list[dict[str, Any]],
                   notes: Sequence[str] = (), images: Sequence[str] = ()) -> None:
    keep = [c for c in columns if c in ("point", "status") or any(r.get(c) not in (None, "")
                                                                 for r in rows)]
    lines = [f"# {title}", ""]
    lines += [f"{n}  " for n in notes]
    lines += ["", "Errors are top-1 / top-5 error in % (100 - accuracy); `best_*` is the lowest "
              "over the run's evaluations.", ""]
    lines.append("| " + " | ".join(keep) + " |")
    lines.append("|" + "|".join("---" for _ in keep) + "|")
    for row in rows:
        cells = [_cell(row.get(c), c).replace("|", "\\|")[:120] for c in keep]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed points", ""]
        lines += [f"- `{r['point']}`: {r.get('error') or '(no error line)'}" for r in failed]
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(i).stem}]({i})" for i in images]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Plots.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def choose_group_axis(runs: Sequence[Run]) -> str | None:
    """The axis that splits the curves into figures: a bool (residual) or the smallest categorical."""
    varying = {}
    for key in axis_keys(runs):
        values = {repr(r.axes.get(key)) for r in runs}
        if len(values) > 1:
            varying[key] = [r.axes.get(key) for r in runs]
    if len(varying) < 2:
        return None
    bools = [k for k, vs in varying.items() if all(isinstance(v, bool) for v in vs)]
    if bools:
        return bools[0]
    categorical = [k for k, vs in varying.items()
                   if not all(isinstance(v, (int, float)) for v in vs)]
    if categorical:
        return min(categorical, key=lambda k: len({repr(v) for v in varying[k]}))
    return list(varying)[-1]


def _groups(runs: Sequence[Run], axis: str | None) -> list[tuple[str, list[Run]]]:
    if axis is None:
        return [("", list(runs))]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(sweep.point_name({axis: r.axes.get(axis)}), []).append(r)
    return list(groups.items())


def _label(run: Run, skip: str | None) -> str:
    axes = {k: v for k, v in run.axes.items() if k != skip}
    return sweep.point_name(axes) if axes else run.name


def _curve(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        x = r.get("epoch", r.get("step"))
        e = _err(r.get("top1"))
        if x is not None and e is not None:
            xs.append(float(x))
            ys.append(e)
    return xs, ys


def plot_curves(runs: Sequence[Run], out_dir: Path, group_axis: str | None) -> list[str]:
    """Train (thin) and validation (bold) top-1 error against epoch, one figure per group."""
    plt = _pyplot()
    written = []
    for group, members in _groups(runs, group_axis):
        eval_split = "val" if any(split_rows(r, "val") for r in members) else "test"
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for i, run in enumerate(members):
            color = f"C{i % 10}"
            tx, ty = _curve(split_rows(run, "train"))
            vx, vy = _curve(split_rows(run, eval_split))
            if tx:
                ax.plot(tx, ty, color=color, lw=0.8, alpha=0.7)
            if vx:
                ax.plot(vx, vy, color=color, lw=2.4, marker="o" if len(vx) < 3 else None)
            if tx or vx:
                drawn = True
                status = run_status(run)[0]
                label = _label(run, group_axis) + ("" if status == "finished" else f" ({status})")
                ax.plot([], [], color=color, lw=2.4, label=label)
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 error (%)")
        title = f"thin: train, bold: {eval_split}"
        ax.set_title(f"{group}  ({title})" if group else title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        name = f"curves_{group}.png" if group else "curves.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def plot_depth(runs: Sequence[Run], rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Final train (dashed) and eval (solid) top-1 error against the `depth` axis, per group.

    Only finished points are drawn: a failed or interrupted run's last numbers are not final.
    """
    if "depth" not in axis_keys(runs):
        return []
    depths = {r.axes.get("depth") for r in runs}
    if len(depths) < 2 or not all(isinstance(d, (int, float)) for d in depths):
        return []
    plt = _pyplot()
    by_name = {row["point"]: row for row in rows}
    others = [k for k in axis_keys(runs) if k != "depth"]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        key = sweep.point_name({k: r.axes.get(k) for k in others}) if others else ""
        groups.setdefault(key, []).append(r)
    has_val = any(row.get("val_top1_err") is not None for row in rows)
    eval_col, eval_name = ("val_top1_err", "val") if has_val else ("test_top1_err", "test")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    drawn = False
    for i, (key, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: r.axes["depth"])
        color = f"C{i % 10}"
        for col, style, what in (("train_top1_err", "--", "train"), (eval_col, "-", eval_name)):
            pts = [(r.axes["depth"], by_name[r.name][col]) for r in members
                   if by_name[r.name].get(col) is not None
                   and by_name[r.name]["status"] == "finished"]
            if pts:
                drawn = True
                ax.plot(*zip(*pts), style, color=color, marker="o",
                        label=f"{key or 'all'} {what}")
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("final top-1 error (%)")
    ax.set_title("final error vs depth (dashed: train, solid: %s)" % eval_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "error_vs_depth.png", dpi=110)
    plt.close(fig)
    return ["error_vs_depth.png"]


# ----------------------------------------------------------------------------------------------
# Filters and feature maps of a checkpoint.


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def first_conv_kernel(params: Any, order: Sequence[str] = ()) -> tuple[str, Any]:
    """(path, kernel HWIO) of the first convolution: the first of `order` (module paths in call
    order) that has a 4-D kernel, else the 4-D kernel with the fewest input channels (the one that
    sees the image). Raises ValueError when the model has no convolution (an MLP)."""
    import jax
    import numpy as np

    kernels = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _path_str(path)
        if name.endswith("kernel") and np.ndim(leaf) == 4:
            kernels[name] = np.asarray(leaf, np.float32)
    if not kernels:
        raise ValueError("the checkpoint's model has no convolution kernel (4-D 'kernel' "
                         "parameter), so there are no filters to draw")
    for module in order:
        name = f"{module}/kernel" if module else "kernel"
        if name in kernels:
            return name, kernels[name]
    fewest = min(k.shape[2] for k in kernels.values())
    name = min((n for n, k in kernels.items() if k.shape[2] == fewest), key=lambda n: (len(n), n))
    return name, kernels[name]


def filter_grid(kernel: Any) -> Any:
    """HWIO kernel -> (rows*H', cols*W', 3) image in [0, 1], each kernel min-max normalised.

    RGB when the kernel sees 3 channels, else grey (the mean over its input channels)."""
    import numpy as np

    k = np.asarray(kernel, np.float32)
    kh, kw, cin, cout = k.shape
    tiles = k.transpose(3, 0, 1, 2)  # (cout, kh, kw, cin)
    if cin != 3:
        tiles = np.repeat(tiles.mean(axis=3, keepdims=True), 3, axis=3)
    lo = tiles.min(axis=(1, 2, 3), keepdims=True)
    hi = tiles.max(axis=(1, 2, 3), keepdims=True)
    tiles = (tiles - lo) / np.maximum(hi - lo, 1e-12)
    cols = int(math.ceil(math.sqrt(cout)))
    rows = int(math.ceil(cout / cols))
    pad = 1
    grid = np.ones((rows * (kh + pad) + pad, cols * (kw + pad) + pad, 3), np.float32)
    for i in range(cout):
        r, c = divmod(i, cols)
        y, x = pad + r * (kh + pad), pad + c * (kw + pad)
        grid[y:y + kh, x:x + kw] = tiles[i]
    return grid


def plot_filters(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draws the first conv layer's kernels of the newest checkpoint into `filters.png`."""
    from cnn_jax.train import checkpoint

    run_dir = Path(run_dir)
    variables, config, step = checkpoint.load_latest(str(run_dir))
    name, kernel = first_conv_kernel(variables["params"], _module_order(config, variables))
    plt = _pyplot()
    kh, kw, cin, cout = kernel.shape
    grid = filter_grid(kernel)
    scale = max(3.0, min(10.0, grid.shape[1] / 12))
    fig, ax = plt.subplots(figsize=(scale, scale * grid.shape[0] / grid.shape[1] + 0.6))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{run_dir.name}: {name}\n{cout} kernels {kh}x{kw}x{cin}, step {step}",
                 fontsize=9)
    out = Path(out) if out else run_dir / "filters.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _module_order(config: dict, variables: dict) -> list[str]:
    """Module paths in call order, when the model can be rebuilt (else [] and a heuristic)."""
    try:
        model, _, shape, _ = _rebuild(config)
    except Exception:  # the filter plot does not need the model; fall back to the heuristic
        return []
    import jax.numpy as jnp

    calls, _ = _trace(model, variables, jnp.zeros((1, *shape), jnp.float32))
    return [path for path, _, _ in calls]


def _rebuild(config: dict):
    """(model, data info, input shape (H, W, C), config) of a run, from its checkpoint's config."""
    import ml_collections

    from cnn_jax import data as data_lib
    from cnn_jax.train import loop

    config = ml_collections.ConfigDict(config)
    info = data_lib.get_info(config.data)
    model = loop.build_model(config, int(info.num_classes))
    return model, info, tuple(loop.input_shape(config, info)), config


def _trace(model, variables: dict, x) -> tuple[list[tuple[str, str, Any]], Any]:
    """Runs the model in eval mode; [(module path, class name, output)] in call (entry) order."""
    import flax.linen as nn

    calls: list[list[Any]] = []

    def record(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        entry = ["/".join(context.module.scope.path), type(context.module).__name__, None]
        calls.append(entry)
        entry[2] = out = next_fun(*args, **kwargs)
        return out

    with nn.intercept_methods(record):
        logits = model.apply(variables, x, train=False)
    return [tuple(c) for c in calls], logits


def first_layer_activations(run_dir: str | Path, image: str | Path, num_layers: int = 4
                            ) -> dict[str, Any]:
    """The first `num_layers` conv layers' outputs for one image, from the newest checkpoint.

    A layer is a ConvBlock (conv -> norm -> activation) when the model has them, else a conv.
    Returns {'layers': [(module path, (H, W, C) array)], 'input', 'prediction', 'step'}.
    """
    import jax.numpy as jnp
    import numpy as np

    from cnn_jax.train import checkpoint, loop

    if num_layers < 1:
        raise ValueError(f"--num_layers={num_layers} must be >= 1")
    run_dir = Path(run_dir)
    variables, config, step = checkpoint.load_latest(str(run_dir))
    model, info, shape, config = _rebuild(config)
    mean = std = None
    if config.data.get("normalize", "train_stats") != "none":
        mean, std = getattr(info, "mean", None), getattr(info, "std", None)
    x = loop.load_image(str(image), shape, mean, std)
    calls, logits = _trace(model, variables, jnp.asarray(x[None]))
    four_d = [(p, c, np.asarray(o)[0]) for p, c, o in calls
              if hasattr(o, "ndim") and o.ndim == 4 and o.shape[0] == 1]
    layers = [t for t in four_d if t[1] == "ConvBlock"] or [t for t in four_d if "Conv" in t[1]]
    if not layers:
        raise ValueError(f"{run_dir}: the model ({config.model.name}) has no convolution "
                         "layer, so there are no feature maps to draw")
    pred = int(np.argmax(np.asarray(logits)[0]))
    names = list(getattr(info, "class_names", None) or [])
    return {"layers": [(p or c, o) for p, c, o in layers[:num_layers]], "input": x,
            "prediction": names[pred] if pred < len(names) else str(pred), "step": step}


def plot_feature_maps(run_dir: str | Path, image: str | Path, num_layers: int = 4,
                      max_maps: int = 16, out: str | Path | None = None) -> Path:
    """Draws the first layers' activations for one image into feature_maps.png (each map min-max
    scaled on its own; the input shown as the model sees it, after normalisation)."""
    if max_maps < 1:
        raise ValueError(f"--max_maps={max_maps} must be >= 1")
    run_dir = Path(run_dir)
    acts = first_layer_activations(run_dir, image, num_layers)
    layers, x = acts["layers"], acts["input"]
    cols = min(max_maps, max(o.shape[-1] for _, o in layers))
    plt = _pyplot()
    fig, axes = plt.subplots(len(layers) + 1, cols, squeeze=False,
                             figsize=(1.2 * cols + 1, 1.3 * (len(layers) + 1)))
    for ax in axes.flat:
        ax.set_axis_off()
    shown = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    axes[0, 0].imshow(shown if x.shape[-1] == 3 else shown[..., 0], cmap="gray")
    axes[0, 0].set_title(f"input -> {acts['prediction']}", fontsize=7, loc="left")
    for row, (path, maps) in enumerate(layers, start=1):
        for j in range(min(cols, maps.shape[-1])):
            m = maps[..., j]
            axes[row, j].imshow((m - m.min()) / max(float(m.max() - m.min()), 1e-12),
                                cmap="viridis", interpolation="nearest")
        axes[row, 0].set_title(f"{path} {tuple(maps.shape)}", fontsize=7, loc="left")
    fig.suptitle(f"{run_dir.name}: first {len(layers)} layers' activations for "
                 f"{Path(image).name} (step {acts['step']})", fontsize=9)
    out = Path(out) if out else run_dir / "feature_maps.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------
# Entry points.


def write_report(directory: str | Path, group_by: str | None = None) -> list[Path]:
    """Writes summary.csv, summary.md and the plots into `directory`; returns the files written."""
    root = Path(directory)
    runs = find_runs(root)
    columns, rows = table(runs)
    if group_by is not None and group_by not in axis_keys(runs):
        raise ValueError(f"--group_by={group_by!r} is not an axis; axes: {axis_keys(runs)}")
    group_axis = group_by if group_by is not None else choose_group_axis(runs)
    images = plot_curves(runs, root, group_axis) + plot_depth(runs, rows, root)
    write_csv(root / "summary.csv", columns, rows)
    plan = _read_json(root / sweep.SWEEP_FILE) or {}
    notes = [f"Directory: `{root}`",
             f"Generated: {datetime.datetime.now().isoformat(timespec='seconds')}"]
    if plan.get("config"):
        cmd = shlex.join(["python", "launch.py", f"--config={plan['config']}",
                          f"--workdir={root}", "--sweep", *plan.get("overrides", [])])
        notes.insert(0, f"Sweep: `{cmd}`")
    last = plan.get("last_run") or {}
    if last:
        notes.append(f"Last sweep run: {last.get('started')} on {last.get('machine')}, "
                     f"{last.get('points_run')} point(s), {last.get('parallel')} at a time, "
                     f"{last.get('elapsed_s')} s wall time")
    walls = [row["wall_time_s"] for row in rows if isinstance(row.get("wall_time_s"), (int, float))]
    if walls:
        notes.append(f"Training wall time, summed over points: {sum(walls):.0f} s")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    notes.append("Points: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    title = f"Summary of {root.resolve().name}"
    write_markdown(root / "summary.md", title, columns, rows, notes, images)
    return [root / "summary.csv", root / "summary.md", *(root / i for i in images)]


def cli() -> None:
    """`python -m cnn_jax.report DIR [...]`; flags are defined here so importing stays side-free."""
    from absl import app, flags

    flags.DEFINE_bool("filters", False, "Also draw the first conv layer's kernels of each run's "
                      "newest checkpoint (filters.png in the run directory).")
    flags.DEFINE_string("feature_maps", None, "Image file: also draw the first layers' "
                        "activations for it (feature_maps.png in each run directory).")
    flags.DEFINE_string("group_by", None, "Axis that splits the curves into one figure per "
                        "value (default: a bool axis such as residual, else the smallest "
                        "categorical one).")
    flags.DEFINE_integer("num_layers", 4, "--feature_maps: how many of the first layers to draw.")
    flags.DEFINE_integer("max_maps", 16, "--feature_maps: channels drawn per layer.")
    FLAGS = flags.FLAGS  # noqa: N806 (absl's convention)

    def main(argv: Sequence[str]) -> None:
        if len(argv) != 2:
            raise app.UsageError("usage: python -m cnn_jax.report DIR [--filters] "
                                 "[--feature_maps IMAGE] [--group_by AXIS]")
        try:
            written = _cli_report(argv[1], FLAGS)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"error: {e}")
        for path in written:
            print(path)

    app.run(main)


def _cli_report(directory: str, FLAGS) -> list[Path]:  # noqa: N803
    written = write_report(directory, group_by=FLAGS.group_by)
    if FLAGS.filters or FLAGS.feature_maps:
        runs = find_runs(directory)
        for run in runs:
            try:
                if FLAGS.filters:
                    written.append(plot_filters(run.path))
                if FLAGS.feature_maps:
                    written.append(plot_feature_maps(run.path, FLAGS.feature_maps,
                                                     FLAGS.num_layers, FLAGS.max_maps))
            except (FileNotFoundError, ValueError) as e:
                if len(runs) == 1:
                    raise
                print(f"{run.name}: no filters/feature maps: {e}")  # e.g. an MLP point
    return written


if __name__ == "__main__":
    cli()
