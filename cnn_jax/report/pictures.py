"""Pictures of a trained network: its first conv layer's kernels and its first layers'
activations for one image, from the run's newest checkpoint (filters.png, feature_maps.png)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from cnn_jax.report.plots import pyplot


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
    from cnn_jax.train import checkpoint, quiet

    run_dir = Path(run_dir)
    with quiet.orbax_read_only():  # Orbax's restore chatter only with --verbosity
        variables, config, step = checkpoint.load_latest(str(run_dir))
    name, kernel = first_conv_kernel(variables["params"], _module_order(config, variables))
    plt = pyplot()
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
    from cnn_jax.train import setup

    config = ml_collections.ConfigDict(config)
    info = data_lib.get_info(config.data)
    model = setup.build_model(config, int(info.num_classes))
    return model, info, tuple(setup.input_shape(config, info)), config


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

    from cnn_jax.data import eval_image
    from cnn_jax.train import checkpoint, quiet

    if num_layers < 1:
        raise ValueError(f"--num_layers={num_layers} must be >= 1")
    run_dir = Path(run_dir)
    with quiet.orbax_read_only():  # Orbax's restore chatter only with --verbosity
        variables, config, step = checkpoint.load_latest(str(run_dir))
    model, info, _, config = _rebuild(config)
    x = eval_image.load(config.data, [str(image)])[0]  # as evaluation (and predict) see it
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
    plt = pyplot()
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
