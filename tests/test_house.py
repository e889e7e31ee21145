"""House rules of the package (issue "House"): no import cycles, no library file over 500 lines,
no test-tree names in the library, and a lock file that pins every declared dependency."""

import re
import subprocess
import sys
from pathlib import Path

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
