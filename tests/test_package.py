import cnn_jax


def test_version_is_set():
    assert cnn_jax.__version__.count(".") == 2
