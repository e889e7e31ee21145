"""cnn_jax.native: compile_library puts a library at its path, into a folder that does not exist
yet, and a compiler error is a RuntimeError naming what was built (needs a C++ compiler, as
`make venv` does); `python -m ... build` says what failed and what is used instead."""

import ctypes

import pytest

from cnn_jax import native

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")


@needs_compiler
def test_compile_library_into_a_new_folder(tmp_path):
    source = tmp_path / "seven.cc"
    source.write_text('extern "C" int seven() { return 7; }\n')
    out = tmp_path / "new" / "lib" / "libseven.so"
    assert native.compile_library(source, out, [], "a test library") == out
    assert ctypes.CDLL(str(out)).seven() == 7
    assert [p.name for p in out.parent.iterdir()] == ["libseven.so"]  # no temporary file left


@needs_compiler
def test_compile_error_is_a_runtime_error(tmp_path):
    source = tmp_path / "broken.cc"
    source.write_text("int broken( {\n")
    out = tmp_path / "lib" / "libbroken.so"
    with pytest.raises(RuntimeError, match="building a test library failed"):
        native.compile_library(source, out, [], "a test library")
    assert list(out.parent.iterdir()) == []


def test_build_command_says_what_failed_and_what_is_used_instead(capsys, monkeypatch):
    monkeypatch.setattr(native, "supported_platform", lambda: True)

    def fails():
        raise RuntimeError("cannot build the handlers: missing g++")

    assert native.build_command(["prog", "build"], "cnn_jax.x", fails, "XLA's ops are") == 1
    err = capsys.readouterr().err
    assert err == "ERROR: cannot build the handlers: missing g++\nXLA's ops are used instead.\n"
    assert native.build_command(["prog"], "cnn_jax.x", fails, "XLA's ops are") == 2
    assert "usage: python -m cnn_jax.x build" in capsys.readouterr().err
