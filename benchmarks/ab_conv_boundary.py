"""A/B of a switch of `cnn_jax.ops` (`--flag`, default CPU_CONV_INPUT_BOUNDARY): the engine's
train step with and without it (for the boundary also with channel floors, `--variants=off,8,16`).

    python benchmarks/ab_conv_boundary.py --model=resnet20 [--batch=128] [--rounds=6] [--steps=10]
        [--set widths=8,16,32] [--mode=infer] [--json=PATH] [--flag=CPU_COL2IM_INPUT_GRAD]

Both variants are compiled in one process (each traced with the setting it names), start from
the same parameters and take the same batch; then `--rounds` rounds time `--steps` steps of each,
the order alternating between rounds (A B, B A, ...) so that a drift of the machine's speed hits
all. Prints img/s per round and variant, each variant's per-round ratio to the first, its median,
and whether the variants' losses after the same steps are equal (bit for bit for the boundary;
other switches change the float summation order, so they print the difference). Also counts
the conditionals and transpose fusions in each compiled step. `--json=PATH` writes the raw
figures. Written by hand: no library runs an interleaved A/B of two compiled variants.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--set", action="append", default=[],
                   help="model field override KEY=VALUE, as cnn_jax.benchmark's (e.g. widths=8,16,32)")
    p.add_argument("--variants", default="off,on",
                   help="comma-separated: off (no boundary), on (the default floor), or a channel "
                        "floor N (ops.BOUNDARY_MIN_CHANNELS=N); the first is the baseline")
    p.add_argument("--json", default="")
    p.add_argument("--flag", default="CPU_CONV_INPUT_BOUNDARY",
                   help="the boolean switch of cnn_jax.ops that the variants off/on set")
    args = p.parse_args()
    if min(args.batch, args.steps, args.rounds) < 1:
        raise SystemExit("ERROR: --batch, --steps and --rounds must be >= 1")

    from cnn_jax.benchmark import (RECOMMENDED_CPU_XLA_FLAGS, _make_train, apply_xla_flags,
                                   parse_overrides)
    apply_xla_flags(RECOMMENDED_CPU_XLA_FLAGS)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnn_jax import models, ops

    if args.model not in models.list_models():
        raise SystemExit(f"ERROR: --model={args.model!r} is not registered; one of "
                         f"{', '.join(models.list_models())}")
    num_classes = models.default_num_classes(args.model)
    model = models.build(args.model, num_classes=num_classes, **dict(parse_overrides(args.set)))
    shape = models.default_input_shape(args.model)
    init, train_step = _make_train(model, shape, num_classes)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(args.batch, *shape)).astype(np.float32)),
             "label": jnp.asarray(rng.integers(0, num_classes, args.batch).astype(np.int32))}

    default_floor = ops.BOUNDARY_MIN_CHANNELS
    if not isinstance(getattr(ops, args.flag, None), bool) or not args.flag.isupper():
        raise SystemExit(f"ERROR: --flag={args.flag!r} is not a boolean switch of cnn_jax.ops "
                         "(CPU_CONV_INPUT_BOUNDARY, CPU_COL2IM_INPUT_GRAD, FIRST_MAX_POOL_GRAD)")
    default_on = getattr(ops, args.flag)
    variants = {}
    for v in args.variants.split(","):
        if v not in ("off", "on") and not (v.isdigit() and args.flag == "CPU_CONV_INPUT_BOUNDARY"):
            raise SystemExit(f"ERROR: --variants={args.variants!r}: {v!r} is not off, on or a "
                             "channel count")
        variants[v] = (v != "off", default_floor if v in ("off", "on") else int(v))
    if len(variants) < 2:
        raise SystemExit(f"ERROR: --variants={args.variants!r}: give at least two distinct ones")
    fns, states, hlo_counts, compile_s = {}, {}, {}, {}
    for name, (on, floor) in variants.items():
        setattr(ops, args.flag, on)
        ops.BOUNDARY_MIN_CHANNELS = floor
        state = init()
        if args.mode == "train":
            fn = jax.jit(lambda s, b: train_step(s, b), donate_argnums=0)
            arg = state
        else:
            fn = jax.jit(lambda v, b: (v, model.apply(v, b["image"], train=False)))
            arg = {"params": state.params, "batch_stats": state.batch_stats}
        t0 = time.perf_counter()
        compiled = fn.lower(arg, batch).compile()
        compile_s[name] = time.perf_counter() - t0
        text = compiled.as_text()
        hlo_counts[name] = {"conditional": text.count(" conditional("),
                            "transpose_fusions": len(set(
                                w for w in text.split() if w.startswith("%transpose")))}
        fns[name] = compiled
        states[name], _ = compiled(arg, batch)  # warm-up call
        jax.block_until_ready(states[name])
    setattr(ops, args.flag, default_on)
    ops.BOUNDARY_MIN_CHANNELS = default_floor

    losses = {}
    if args.mode == "train":
        for name in variants:
            s, m = fns[name](states[name], batch)
            states[name] = s
            losses[name] = float(m["loss"])
    rates = {name: [] for name in variants}
    order = list(variants)
    base = order[0]
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            fn, s = fns[name], states[name]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                s, _ = fn(s, batch)
            jax.block_until_ready(s)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
            states[name] = s
        print(f"round {r}: " + "   ".join(
            f"{n} {rates[n][-1]:8.1f} img/s" + ("" if n == base else
                                                f" ({rates[n][-1] / rates[base][-1]:.2f}x)")
            for n in order), flush=True)
    ratios = {n: [b / a for a, b in zip(rates[base], rates[n])] for n in order[1:]}
    same = len(set(losses.values())) == 1 if losses else None
    print(f"{args.model} {args.mode} batch {args.batch} {args.set or ''}: median img/s " + ", ".join(
        f"{n} {statistics.median(rates[n]):.1f}" for n in order) + "; per-round ratio to "
        f"{base}: " + ", ".join(f"{n} median {statistics.median(r):.2f} (min {min(r):.2f}, "
                                f"max {max(r):.2f})" for n, r in ratios.items()))
    print(f"HLO: {hlo_counts}; compile s: { {k: round(v, 1) for k, v in compile_s.items()} }")
    if losses:
        spread = max(losses.values()) - min(losses.values())
        print(f"loss after the same steps: {losses} -> "
              f"{'equal' if same else f'differ by {spread:.3g}'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rates": rates, "ratios": ratios, "losses": losses,
                       "losses_equal": same, "hlo": hlo_counts, "compile_s": compile_s,
                       "jax": jax.__version__, "machine": platform.node(),
                       "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
    main()
