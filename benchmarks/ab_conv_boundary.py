"""A/B of `cnn_jax.ops.CPU_CONV_INPUT_BOUNDARY`: the engine's train step with and without it.

    python benchmarks/ab_conv_boundary.py --model=resnet20 [--batch=128] [--rounds=6] [--steps=10]

Both variants are compiled in one process (each traced with the setting it names), start from
the same parameters and take the same batch; then `--rounds` rounds time `--steps` steps of each,
the order alternating between rounds (A B, B A, ...) so that a drift of the machine's speed hits
both. Prints img/s per round and variant, the per-round ratio B/A, its median, and whether the
two variants' losses after the same steps are equal (they should be bit for bit). Also counts
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
    p.add_argument("--json", default="")
    args = p.parse_args()
    if min(args.batch, args.steps, args.rounds) < 1:
        raise SystemExit("ERROR: --batch, --steps and --rounds must be >= 1")

    from cnn_jax.benchmark import RECOMMENDED_CPU_XLA_FLAGS, _make_train, apply_xla_flags
    apply_xla_flags(RECOMMENDED_CPU_XLA_FLAGS)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnn_jax import models, ops

    if args.model not in models.list_models():
        raise SystemExit(f"ERROR: --model={args.model!r} is not registered; one of "
                         f"{', '.join(models.list_models())}")
    num_classes = models.default_num_classes(args.model)
    model = models.build(args.model, num_classes=num_classes)
    shape = models.default_input_shape(args.model)
    init, train_step = _make_train(model, shape, num_classes)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(args.batch, *shape)).astype(np.float32)),
             "label": jnp.asarray(rng.integers(0, num_classes, args.batch).astype(np.int32))}

    variants = {"A_no_boundary": False, "B_boundary": True}
    fns, states, hlo_counts, compile_s = {}, {}, {}, {}
    for name, on in variants.items():
        ops.CPU_CONV_INPUT_BOUNDARY = on
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
    ops.CPU_CONV_INPUT_BOUNDARY = True

    losses = {}
    if args.mode == "train":
        for name in variants:
            s, m = fns[name](states[name], batch)
            states[name] = s
            losses[name] = float(m["loss"])
    rates = {name: [] for name in variants}
    order = list(variants)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            fn, s = fns[name], states[name]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                s, _ = fn(s, batch)
            jax.block_until_ready(s)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
            states[name] = s
        a, b = rates[order[0]][-1], rates[order[1]][-1]
        print(f"round {r}: A {a:8.1f} img/s   B {b:8.1f} img/s   B/A {b / a:5.2f}", flush=True)
    ratios = [b / a for a, b in zip(rates[order[0]], rates[order[1]])]
    same = len(set(losses.values())) == 1 if losses else None
    print(f"{args.model} {args.mode} batch {args.batch}: median A {statistics.median(rates[order[0]]):.1f}"
          f" img/s, median B {statistics.median(rates[order[1]]):.1f} img/s, median B/A "
          f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    print(f"HLO: {hlo_counts}; compile s: { {k: round(v, 1) for k, v in compile_s.items()} }")
    if losses:
        print(f"loss after the same steps: {losses} -> {'equal' if same else 'DIFFERENT'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rates": rates, "ratios": ratios, "losses": losses,
                       "losses_equal": same, "hlo": hlo_counts, "compile_s": compile_s,
                       "jax": jax.__version__, "machine": platform.node(),
                       "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
    main()
