"""Per-layer summary of a model: output shape, parameters and multiply-accumulates (MACs).

Everything is shape inference (`jax.eval_shape` of `model.init`), so no parameter is materialised
and nothing is compiled: VGG-19 is summarised in about a second.

Counting convention (that of torchvision's and the papers' "FLOPs" tables):
  * params: entries of the `params` collection only (BatchNorm running mean/var are not parameters);
  * MACs per example: conv = out_h * out_w * out_c * k_h * k_w * in_c / groups, dense = in * out
    (times any extra non-batch axes); biases, normalisation, activations, pooling, additions and
    concatenations count 0.

    python -m cnn_jax.summary resnet50 [--input_shape=224,224,3] [--num_classes=1000]
        [--set stride_on_1x1=True ...] [--depth=1] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _num_params(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _subtree(tree: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return {}
        tree = tree[key]
    return tree


def _own_macs(module: nn.Module, args: tuple, out: Any) -> int:
    """MACs per example of one Conv or Dense call (0 for every other module)."""
    if isinstance(module, nn.Conv):
        x = args[0]
        kernel = math.prod(module.kernel_size) if not isinstance(module.kernel_size, int) \
            else module.kernel_size ** (x.ndim - 2)
        return math.prod(out.shape[1:]) * kernel * x.shape[-1] // module.feature_group_count
    if isinstance(module, nn.Dense):
        return math.prod(out.shape[1:]) * args[0].shape[-1]
    return 0


def _shapes(out: Any) -> Any:
    if hasattr(out, "shape"):
        return list(out.shape)
    if isinstance(out, (tuple, list)):
        return [_shapes(o) for o in out]
    return None


def summarize(model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1,
              train: bool = False, depth: int | None = None) -> dict[str, Any]:
    """Totals and per-layer rows (name, type, output_shape, params, macs) of `model`.

    Rows are the leaf modules (convs, norms, dense, pools, ...) in call order, or with `depth`
    the modules at that nesting depth (e.g. depth=1: stem, blocks, fc) with their subtree totals.
    MACs are per example; output shapes include the batch axis (`batch_size`).
    """
    calls: dict[tuple[str, ...], dict[str, Any]] = {}
    stack: list[tuple[str, ...]] = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        module = context.module
        path = tuple(module.scope.path) if module.scope is not None else ()
        shared = bool(stack) and stack[-1] == path  # nn.share_scope child: same layer
        if not shared and path not in calls:
            calls[path] = {"type": type(module).__name__, "macs": 0, "output_shape": None}
        stack.append(path)
        try:
            out = next_fun(*args, **kwargs)
        finally:
            stack.pop()
        if not shared:
            calls[path]["macs"] += _own_macs(module, args, out)
            calls[path]["output_shape"] = _shapes(out)
        return out

    x = jax.ShapeDtypeStruct((batch_size, *tuple(int(d) for d in input_shape)), jnp.float32)

    def init(inputs):
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        return model.init(rngs, inputs, train=train)

    with nn.intercept_methods(interceptor):
        variables = jax.eval_shape(init, x)
    params = variables.get("params", {})

    paths = [p for p in calls if p]
    parents = {p[:i] for p in paths for i in range(1, len(p))}
    if depth is None:
        shown = [p for p in paths if p not in parents]
    else:
        shown = [p for p in paths if len(p) == depth or (len(p) < depth and p not in parents)]
    rows = []
    for path in shown:
        macs = sum(c["macs"] for p, c in calls.items() if p[:len(path)] == path)
        rows.append({"name": "/".join(path), "type": calls[path]["type"],
                     "output_shape": calls[path]["output_shape"],
                     "params": _num_params(_subtree(params, path)), "macs": macs})
    return {
        "model": type(model).__name__,
        "input_shape": [int(d) for d in input_shape],
        "output_shape": calls[()]["output_shape"] if () in calls else None,
        "params": _num_params(params),
        "macs": sum(c["macs"] for c in calls.values()),
        "non_trainable": _num_params({k: v for k, v in variables.items() if k != "params"}),
        "layers": rows,
    }


def human(n: float) -> str:
    """1234567 -> '1.23M' (K, M, G)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_table(summary: dict[str, Any]) -> str:
    """The per-layer table with totals, as plain text."""
    def shape(s: Any) -> str:  # per-example shape, e.g. 28x28x6; nested lists for tuples
        return "x".join(map(str, s[1:])) if s and isinstance(s[0], int) else str(s)

    head = ("layer", "type", "output shape", "params", "MACs")
    body = [(r["name"], r["type"], shape(r["output_shape"]), f"{r['params']:,}", human(r["macs"]))
            for r in summary["layers"]]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    lines = [fmt.format(*head), rule, *(fmt.format(*row) for row in body), rule]
    lines.append(f"{summary['model']} on {'x'.join(map(str, summary['input_shape']))}: "
                 f"params {summary['params']:,} ({human(summary['params'])}), "
                 f"MACs {summary['macs']:,} ({human(summary['macs'])}) per example, "
                 f"non-trainable state {summary['non_trainable']:,}")
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """A --set value: int, float, bool, None, tuple ('1,2,3' or '(1, 2)') or else a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        if "," in text:
            return tuple(parse_value(p) for p in text.split(",") if p.strip())
        return text.strip()
    return tuple(value) if isinstance(value, list) else value


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """['norm=group', 'width=32'] -> {'norm': 'group', 'width': 32}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} must look like KEY=VALUE, e.g. --set norm=group")
        out[key.strip()] = parse_value(value)
    return out


def parse_shape(text: str) -> tuple[int, int, int]:
    """'224,224,3' -> (224, 224, 3)."""
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input_shape={text!r} must be H,W,C with positive ints, e.g. 32,32,3")
    return shape


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    from cnn_jax import models

    parser = argparse.ArgumentParser(prog="python -m cnn_jax.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registered name, e.g. resnet50 (see --list)", nargs="?")
    parser.add_argument("--input_shape", help="H,W,C (default: the model's designed input)")
    parser.add_argument("--num_classes", type=int,
                        help="default: 10 for MNIST/CIFAR models, 1000 for ImageNet models")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model field override, repeatable (e.g. --set norm=group); "
                        "--set module=my_pkg.models imports a module that registers models")
    parser.add_argument("--depth", type=int, help="rows at this module depth (default: leaves)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--list", action="store_true", help="list the registered models")
    args = parser.parse_args(argv)
    if args.list or not args.model:
        print("\n".join(models.list_models()))
        return 0 if args.list else 2
    try:
        overrides = parse_sets(args.set)
        models.import_module(overrides.pop("module", ""))  # --set module=my_pkg.models
        shape = (parse_shape(args.input_shape) if args.input_shape
                 else models.default_input_shape(args.model))
        num_classes = (args.num_classes if args.num_classes is not None
                       else models.default_num_classes(args.model))
        model = models.build(args.model, num_classes=num_classes, **overrides)
        result = summarize(model, shape, depth=args.depth)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(model=args.model, num_classes=num_classes,
                  overrides={k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                             for k, v in overrides.items()})
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
