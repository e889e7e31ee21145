"""Launches an experiment: train (default), evaluate, predict, or run a sweep.

    python launch.py --config=experiments/NAME.py[:ARGS] --workdir=DIR [--config.a.b=V ...]
    python launch.py --config=... --workdir=DIR --mode=eval        # -> DIR/eval_metrics.json
    python launch.py --config=... --workdir=DIR --mode=predict --images=a.jpg,b.png
    python launch.py --config=experiments/SWEEP.py --workdir=DIR --sweep [--sweep_parallel=N]
    python launch.py --config=experiments/SWEEP.py --workdir=DIR --sweep --sweep_executor=slurm

The same as `python -m cnn_jax ...`; the flags and what they do are in cnn_jax/launch.py.
Re-running a train command resumes from the newest good checkpoint in DIR.
"""

from cnn_jax import launch

launch.define_flags()

if __name__ == "__main__":
    launch.cli()
