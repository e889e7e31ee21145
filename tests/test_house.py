"""House rules of the package (issue "House"): no import cycles, no library file over 500 lines,
no test-tree names in the library, a lock file that pins every declared dependency, and no
tracked file that names one machine's paths."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import import_cycles  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "cnn_jax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cnn_jax.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from cnn_jax import a\n")
    (pkg / "c.py").write_text("import cnn_jax.a\n")
    graph = import_cycles.module_graph(str(pkg))
    found = import_cycles.cycles(graph)
    assert len(found) == 1 and len(found[0]) == 2, (graph, found)


def test_no_import_cycles_in_cnn_jax():
    out = subprocess.run([sys.executable, "tools/import_cycles.py"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_no_library_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "cnn_jax").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_library_names_no_test_tree_and_imports_no_pytest():
    bad = []
    for p in (ROOT / "cnn_jax").rglob("*.py"):
        text = p.read_text()
        if re.search(r"^\s*(import|from)\s+pytest\b", text, re.M) or "tests/" in text \
                or "tiny_config" in text:
            bad.append(str(p.relative_to(ROOT)))
    assert not bad, bad


def _requirement_names(text):
    return {re.split(r"[<>=!~\[ ;]", line.strip().strip('",'))[0].lower().replace("_", "-")
            for line in text.splitlines()
            if line.strip().startswith('"') and not line.strip().startswith('"#')}


def test_lock_pins_every_declared_dependency_exactly():
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = pyproject[pyproject.index("dependencies = ["):pyproject.index("[tool.setuptools")]
    declared = _requirement_names(deps) - {""}
    pinned = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock line {line!r} is not an exact pin"
            pinned[name.lower().replace("_", "-")] = version
    assert declared and declared <= set(pinned), sorted(declared - set(pinned))
    assert "hypothesis" not in pinned


# A home folder or this project's machines' roots, as an absolute path (not inside a URL).
_MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(root|work|home/[^/\s]+|Users/[^/\s]+)/")


def test_the_machine_path_pattern():
    # the positive examples are put together here, so that this file itself names no such path
    for root, rest in (("work", "main/.venv/lib"), ("root", "data/x"), ("home", "ada/runs"),
                       ("Users", "ada/data")):
        for text in (f"from /{root}/{rest}", f'"path": "/{root}/{rest}"', f"(/{root}/{rest})"):
            assert _MACHINE_PATH.search(text), text
    for text in ("~/data/cifar10-jpeg", "../shared/datasets", "https://example.org/" + "work/x",
                 "$OUT/results.jsonl", "/tmp/cnn_jax_compare.x/results.jsonl", "./.venv/lib"):
        assert not _MACHINE_PATH.search(text), text


def test_no_tracked_file_names_a_machine_path():
    """Records, logs and docs write paths as `~`, an environment variable or relative to the
    repository, so that they hold on another machine (binary files are not read)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    found = []
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        data = path.read_bytes() if path.is_file() else b""
        if b"\0" in data[:8192]:
            continue
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if _MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()[:80]}")
                break
    assert not found, found
