"""`python -m cnn_jax --config=experiments/NAME.py --workdir=DIR [...]`: see cnn_jax/launch.py."""

from cnn_jax import launch

if __name__ == "__main__":
    launch.cli()
