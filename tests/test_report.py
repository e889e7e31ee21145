"""The report on fabricated run directories: tables, errors in %, failed points, plots, bad input."""

import csv
import json
from pathlib import Path

import pytest

from cnn_jax import report, rundir


def _make_run(d: Path, train_acc: list[float], val_acc: list[float], *, finished=True,
              failed_error=None, params=1000, test_acc=None):
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (tr, va) in enumerate(zip(train_acc, val_acc)):
        rows.append({"step": 10 * (i + 1), "epoch": i + 0.5, "split": "train", "loss": 1.0,
                     "top1": tr, "top5": min(1.0, tr + 0.2), "lr": 0.1, "img_per_s": 100.0 + i,
                     "wall_time": float(i)})
        rows.append({"step": 10 * (i + 1), "epoch": float(i + 1), "split": "val", "loss": 1.0,
                     "top1": va, "top5": min(1.0, va + 0.3), "lr": 0.1, "wall_time": float(i)})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.json").write_text(json.dumps({"model": {"name": d.name}, "seed": 0}))
    if finished:
        test = test_acc if test_acc is not None else val_acc[-1] - 0.01
        (d / "results.json").write_text(json.dumps({
            "status": "finished", "step": 10 * len(rows), "epochs": float(len(train_acc)),
            "final": {"train": {"loss": 0.5, "top1": train_acc[-1], "top5": 0.99},
                      "val": {"loss": 0.6, "top1": val_acc[-1], "top5": 0.95},
                      "test": {"loss": 0.6, "top1": test, "top5": 0.94}},
            "best_val_top1": max(val_acc), "params": params, "macs": 5 * params,
            "wall_time_s": 12.0, "img_per_s": 321.0}))
    if failed_error:
        (d / rundir.STATUS_FILE).write_text(json.dumps({"status": "failed",
                                                       "error": failed_error}))


def _make_sweep(root: Path) -> None:
    points = []
    accs = {(20, True): 0.9, (20, False): 0.88, (32, True): 0.92, (32, False): 0.85}
    for (depth, residual), acc in accs.items():
        name = rundir.point_name({"depth": depth, "residual": residual})
        failed = (depth, residual) == (32, False)
        _make_run(root / name, [acc - 0.2, acc], [acc - 0.25, acc - 0.05, acc - 0.07][:2],
                  finished=not failed, failed_error="FloatingPointError: nan loss" if failed
                  else None)
        points.append({"name": name, "axes": {"depth": depth, "residual": residual}})
    (root / rundir.SWEEP_FILE).write_text(json.dumps({
        "config": "experiments/ablation_depth.py:runlocal", "overrides": [], "points": points}))


def _csv(path: Path) -> dict[str, dict[str, str]]:
    return {r["point"]: r for r in csv.DictReader(open(path))}


def test_sweep_report_has_one_row_per_point_with_errors_in_percent(tmp_path):
    _make_sweep(tmp_path)
    written = report.write_report(tmp_path)
    names = {p.name for p in written}
    assert {"summary.csv", "summary.md", "curves_residual.png", "curves_noresidual.png",
            "error_vs_depth.png"} <= names
    for p in written:
        assert p.stat().st_size > 0
    rows = _csv(tmp_path / "summary.csv")
    assert list(rows) == ["depth20_residual", "depth20_noresidual", "depth32_residual",
                          "depth32_noresidual"]  # the plan's order
    r = rows["depth20_residual"]
    assert (r["depth"], r["residual"], r["status"]) == ("20", "True", "finished")
    assert float(r["train_top1_err"]) == pytest.approx(10.0)     # 1 - 0.90
    assert float(r["val_top1_err"]) == pytest.approx(15.0)       # 1 - 0.85
    assert float(r["test_top1_err"]) == pytest.approx(16.0)
    assert float(r["best_val_top1_err"]) == pytest.approx(15.0)  # best of 35% and 15%
    assert float(r["best_train_top1_err"]) == pytest.approx(10.0)
    assert float(r["val_top5_err"]) == pytest.approx(5.0)
    assert (r["params"], r["macs"], r["wall_time_s"], r["img_per_s"]) == (
        "1000", "5000", "12.0", "321.0")


def test_failed_point_is_marked_with_its_error_line(tmp_path):
    _make_sweep(tmp_path)
    report.write_report(tmp_path)
    failed = _csv(tmp_path / "summary.csv")["depth32_noresidual"]
    assert failed["status"] == "failed"
    assert failed["error"] == "FloatingPointError: nan loss"
    # Its last logged numbers still show, from metrics.jsonl.
    assert float(failed["val_top1_err"]) == pytest.approx(20.0)
    md = (tmp_path / "summary.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| depth32_noresidual"))
    assert "failed" in row and "FloatingPointError: nan loss" in row
    assert "1 failed, 3 finished" in md


def test_best_val_is_the_lowest_error_over_evaluations(tmp_path):
    _make_run(tmp_path / "r", [0.5, 0.6, 0.7], [0.6, 0.8, 0.7])
    report.write_report(tmp_path / "r")
    row = _csv(tmp_path / "r" / "summary.csv")["r"]
    assert float(row["val_top1_err"]) == pytest.approx(30.0)
    assert float(row["best_val_top1_err"]) == pytest.approx(20.0)


def test_report_on_a_single_run_directory(tmp_path):
    run = tmp_path / "lenet"
    _make_run(run, [0.5, 0.8], [0.45, 0.75], finished=False)
    written = report.write_report(run)
    assert {p.name for p in written} == {"summary.csv", "summary.md", "curves.png"}
    (row,) = _csv(run / "summary.csv").values()
    assert row["point"] == "lenet" and row["status"] == "incomplete"
    assert float(row["val_top1_err"]) == pytest.approx(25.0)


def test_without_a_plan_the_axes_are_the_differing_config_fields(tmp_path):
    _make_run(tmp_path / "a", [0.5], [0.5])
    _make_run(tmp_path / "b", [0.6], [0.6])
    (tmp_path / "notes").mkdir()  # not a run: ignored
    report.write_report(tmp_path)
    rows = _csv(tmp_path / "summary.csv")
    assert set(rows) == {"a", "b"}
    assert rows["a"]["model.name"] == "a" and "seed" not in rows["a"]


def test_planned_points_without_a_directory_are_pending(tmp_path):
    _make_sweep(tmp_path)
    plan = json.loads((tmp_path / rundir.SWEEP_FILE).read_text())
    plan["points"].append({"name": "depth44_residual", "axes": {"depth": 44, "residual": True}})
    (tmp_path / rundir.SWEEP_FILE).write_text(json.dumps(plan))
    report.write_report(tmp_path)
    assert _csv(tmp_path / "summary.csv")["depth44_residual"]["status"] == "pending"


def test_report_on_a_directory_with_no_runs_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs in"):
        report.write_report(tmp_path)
    (tmp_path / rundir.SWEEP_FILE).write_text(json.dumps(
        {"config": "x.py", "points": [{"name": "a", "axes": {}}]}))
    with pytest.raises(FileNotFoundError, match="none has started"):
        report.write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_report(tmp_path / "missing")


def test_corrupt_results_file_is_a_clear_error(tmp_path):
    _make_run(tmp_path / "r", [0.5], [0.5])
    (tmp_path / "r" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"results.json is not valid JSON"):
        report.write_report(tmp_path / "r")


def test_torn_last_metrics_line_is_skipped(tmp_path):
    _make_run(tmp_path / "r", [0.5, 0.6], [0.5, 0.6], finished=False)
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "split": "tr')
    report.write_report(tmp_path / "r")
    assert float(_csv(tmp_path / "r" / "summary.csv")["r"]["train_top1_err"]) == pytest.approx(40.0)


def test_group_axis_prefers_a_bool_axis_then_the_smallest_categorical():
    runs = [report.Run(name=str(i), path=Path("."), axes=a) for i, a in enumerate([
        {"norm": "batch", "residual": True}, {"norm": "group", "residual": False},
        {"norm": "layer", "residual": True}])]
    assert report.choose_group_axis(runs) == "residual"
    runs = [report.Run(name=str(i), path=Path("."), axes=a) for i, a in enumerate([
        {"depth": 20, "arch": "a"}, {"depth": 32, "arch": "b"}])]
    assert report.choose_group_axis(runs) == "arch"
    assert report.choose_group_axis(runs[:1]) is None


def test_unknown_group_by_is_an_error(tmp_path):
    _make_sweep(tmp_path)
    with pytest.raises(ValueError, match="not an axis"):
        report.write_report(tmp_path, group_by="dpeth")


def test_first_conv_kernel_is_the_one_that_sees_the_image():
    import numpy as np

    params = {"stage1": {"conv": {"kernel": np.zeros((3, 3, 16, 16))}},
              "stem": {"conv": {"kernel": np.ones((3, 3, 3, 16)), "bias": np.zeros(16)}},
              "head": {"kernel": np.zeros((16, 10))}}
    name, kernel = report.first_conv_kernel(params)
    assert name == "stem/conv/kernel" and kernel.shape == (3, 3, 3, 16)
    # A known call order wins over the heuristic.
    name, _ = report.first_conv_kernel(params, order=["", "stage1/conv", "stem/conv"])
    assert name == "stage1/conv/kernel"
    with pytest.raises(ValueError, match="no convolution"):
        report.first_conv_kernel({"dense": {"kernel": np.zeros((4, 2))}})


def test_filter_grid_normalises_each_kernel_and_keeps_rgb():
    import numpy as np

    rng = np.random.default_rng(0)
    k = rng.normal(size=(5, 5, 3, 6)).astype(np.float32)
    k[..., 1] *= 100.0  # a large kernel must not wash out the others
    grid = report.filter_grid(k)
    assert grid.shape == (2 * 6 + 1, 3 * 6 + 1, 3)  # 6 kernels: 2 rows x 3 columns
    tile0, tile1 = grid[1:6, 1:6], grid[1:6, 7:12]
    for tile in (tile0, tile1):
        assert tile.min() == pytest.approx(0.0) and tile.max() == pytest.approx(1.0)
    assert not np.allclose(tile0[..., 0], tile0[..., 1])  # colour kept
    grey = report.filter_grid(rng.normal(size=(3, 3, 1, 4)))
    assert np.allclose(grey[..., 0], grey[..., 2])


def test_steps_logged_again_after_a_resume_keep_the_newest_row(tmp_path):
    _make_run(tmp_path / "r", [0.5, 0.6], [0.5, 0.6], finished=False)
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "epoch": 2.0, "split": "val", "top1": 0.7}) + "\n")
    rows = report.read_metrics(tmp_path / "r" / "metrics.jsonl")
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20] and val[-1]["top1"] == 0.7


def test_cli_writes_the_report_and_fails_clearly_without_runs(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    empty = subprocess.run([sys.executable, "-m", "cnn_jax.report", str(tmp_path)], cwd=repo,
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 1 and "no runs in" in empty.stderr
    _make_sweep(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "cnn_jax.report", str(tmp_path),
                         "--group_by=depth"], cwd=repo, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    printed = {Path(line).name for line in ok.stdout.split()}
    assert {"summary.csv", "summary.md", "curves_depth20.png", "curves_depth32.png",
            "error_vs_depth.png"} <= printed


@pytest.fixture
def legends(monkeypatch):
    """{png name: legend texts} of every figure the report saves."""
    import matplotlib.figure

    seen = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        seen[Path(fname).name] = [t.get_text() for ax in self.axes if ax.get_legend()
                                  for t in ax.get_legend().get_texts()]
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return seen


def _make_seed_sweep(root: Path, fail: str | None = None, residual: bool = False,
                     bases: tuple = (0.8, 0.7)) -> None:
    """depth {20, 56} x residual x seeds {0, 1}: val accuracy bases[i] + 0.02 * seed."""
    points = []
    for depth, base in zip((20, 56), bases):
        for seed in (0, 1):
            name = rundir.point_name({"depth": depth, "residual": residual}) + f"_seed{seed}"
            acc = base + 0.02 * seed
            _make_run(root / name, [acc - 0.1, acc], [acc - 0.2, acc], finished=name != fail,
                      failed_error="FloatingPointError: loss is nan at step 7" if name == fail
                      else None)
            points.append({"name": name, "axes": {"depth": depth, "residual": residual,
                                                  "seed": seed}})
    (root / rundir.SWEEP_FILE).write_text(json.dumps({
        "config": f"x.py:twins={'residual' if residual else 'plain'}", "points": points,
        "last_run": {"started": "2026-12-06 10:18:25 UTC", "machine": "vm", "points_run": 4,
                     "parallel": 2, "elapsed_s": 4321.0}}))


def test_seeds_are_averaged_into_mean_and_std_columns_and_one_curve(tmp_path, legends):
    _make_seed_sweep(tmp_path)
    report.write_report(tmp_path)
    rows = _csv(tmp_path / "summary.csv")
    a, b = rows["depth20_noresidual_seed0"], rows["depth20_noresidual_seed1"]
    assert a["group"] == b["group"] == "depth20_noresidual"
    assert a["n_seeds"] == "2"
    assert float(a["val_top1_err_mean"]) == pytest.approx(19.0)  # 20% and 18%
    assert float(a["val_top1_err_std"]) == pytest.approx(2 ** 0.5, abs=1e-3)  # of 20, 18
    assert float(rows["depth56_noresidual_seed1"]["val_top1_err_mean"]) == pytest.approx(29.0)
    md = (tmp_path / "summary.md").read_text()
    assert "## Mean ± std over seeds" in md
    assert "| depth20_noresidual | 20 | False | 2 of 2 |" in md and "19.00 ± 1.41" in md
    assert "Mixed protocols" not in md
    (curves,) = [n for n in legends if n.startswith("curves")]
    assert legends[curves] == ["depth20_noresidual (mean of 2 seeds, band min-max)",
                               "depth56_noresidual (mean of 2 seeds, band min-max)"]
    assert "error_vs_depth.png" in legends


def test_a_failed_seed_is_left_out_of_the_mean_and_drawn_with_its_error(tmp_path, legends):
    _make_seed_sweep(tmp_path, fail="depth56_noresidual_seed1")
    report.write_report(tmp_path)
    rows = _csv(tmp_path / "summary.csv")
    assert rows["depth56_noresidual_seed1"]["status"] == "failed"
    assert rows["depth56_noresidual_seed0"]["n_seeds"] == "1"
    assert float(rows["depth56_noresidual_seed0"]["val_top1_err_mean"]) == pytest.approx(30.0)
    assert rows["depth56_noresidual_seed0"]["val_top1_err_std"] == ""
    md = (tmp_path / "summary.md").read_text()
    assert "depth56_noresidual_seed1 (failed)" in md  # in the seed table's "not finished"
    assert "- `depth56_noresidual_seed1`: FloatingPointError: loss is nan at step 7" in md
    (curves,) = [n for n in legends if n.startswith("curves")]
    assert ("depth56_noresidual_seed1 (failed: FloatingPointError: loss is nan at step 7)"
            in legends[curves])
    assert "x: failed point, last value" in legends["error_vs_depth.png"]


def test_a_point_that_failed_before_logging_still_shows_in_the_plot(tmp_path, legends):
    _make_sweep(tmp_path)
    crashed = tmp_path / "depth32_noresidual"
    (crashed / "metrics.jsonl").unlink()
    report.write_report(tmp_path)
    assert ("depth32 (failed, before its first log: FloatingPointError: nan loss)"
            in legends["curves_noresidual.png"])


def test_two_sweeps_are_reported_together_with_their_axes_and_sources(tmp_path, legends):
    plain, residual, out = tmp_path / "plain", tmp_path / "residual", tmp_path / "joint"
    _make_seed_sweep(plain)
    _make_seed_sweep(residual, residual=True, bases=(0.75, 0.76))
    written = report.write_report(out, sources=[plain, residual])
    assert out / "summary.md" in written and not (plain / "summary.md").exists()
    rows = _csv(out / "summary.csv")
    assert len(rows) == 8
    assert rows["depth56_residual_seed1"]["group"] == "depth56_residual"
    assert float(rows["depth56_residual_seed0"]["val_top1_err_mean"]) == pytest.approx(23.0)
    assert float(rows["depth56_noresidual_seed0"]["val_top1_err_mean"]) == pytest.approx(29.0)
    md = (out / "summary.md").read_text()
    assert f"Source: `{plain}` (4 point(s))" in md and f"Source: `{residual}` (4 point(s))" in md
    assert md.count("Sweep: `python -m cnn_jax --config=x.py:twins=") == 2
    assert md.count("4321.0 s wall time") == 2 and "Mixed protocols" not in md
    assert {"curves_residual.png", "curves_noresidual.png", "error_vs_depth.png"} <= set(legends)


def test_a_point_in_two_reported_sweeps_is_an_error_naming_both(tmp_path):
    _make_seed_sweep(tmp_path / "a")
    _make_seed_sweep(tmp_path / "b")
    with pytest.raises(ValueError, match=r"depth20_noresidual_seed0.* is in both .*a.* and .*b"):
        report.write_report(tmp_path / "joint", sources=[tmp_path / "a", tmp_path / "b"])


def test_sweeps_of_different_protocols_reported_together_are_flagged(tmp_path, capsys):
    _make_seed_sweep(tmp_path / "a")
    _make_seed_sweep(tmp_path / "b", residual=True)
    for d, steps in ((tmp_path / "a", 800), (tmp_path / "b", 3000)):
        for run in d.iterdir():
            if run.is_dir():
                (run / "config.json").write_text(json.dumps({"total_steps": steps}))
    report.write_report(tmp_path / "joint", sources=[tmp_path / "a", tmp_path / "b"])
    assert "mixed protocols: total_steps differs between points: 800" in capsys.readouterr().out
    assert "**Mixed protocols" in (tmp_path / "joint" / "summary.md").read_text()


def test_run_directories_reported_together_get_axes_from_their_differing_configs(tmp_path):
    for seed, acc in ((0, 0.8), (1, 0.84)):  # two single runs, e.g. one seed per session
        run = tmp_path / f"cnn_seed{seed}"
        _make_run(run, [acc - 0.1, acc], [acc - 0.2, acc])
        (run / "config.json").write_text(json.dumps({"model": {"name": "resnet20"},
                                                     "seed": seed}))
    report.write_report(tmp_path / "joint", sources=[tmp_path / "cnn_seed0",
                                                     tmp_path / "cnn_seed1"])
    rows = _csv(tmp_path / "joint" / "summary.csv")
    assert rows["cnn_seed0"]["seed"] == "0" and rows["cnn_seed1"]["seed"] == "1"
    assert rows["cnn_seed0"]["n_seeds"] == "2"
    assert float(rows["cnn_seed1"]["val_top1_err_mean"]) == pytest.approx(18.0)  # 20% and 16%


def test_cli_reports_several_directories_into_out_and_needs_out(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    _make_seed_sweep(tmp_path / "a")
    _make_seed_sweep(tmp_path / "b", residual=True)
    cmd = [sys.executable, "-m", "cnn_jax.report", str(tmp_path / "a"), str(tmp_path / "b")]
    no_out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert no_out.returncode == 1 and "but no --out" in no_out.stderr
    ok = subprocess.run(cmd + [f"--out={tmp_path / 'joint'}", "--noconfusion"], cwd=repo,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "joint" / "summary.csv").is_file()
    assert len(_csv(tmp_path / "joint" / "summary.csv")) == 8


def test_a_mix_of_protocols_is_said_in_the_summary_and_on_stdout(tmp_path, capsys):
    _make_sweep(tmp_path)
    for name, split in (("depth20_residual", "train[:90%]"), ("depth32_residual", "train[:512]")):
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"model": {"name": name}, "num_epochs": 2, "data": {"train_split": split}}))
    report.write_report(tmp_path)
    out = capsys.readouterr().out
    assert "WARNING:" in out and "mixed protocols: data.train_split differs" in out
    md = (tmp_path / "summary.md").read_text()
    assert "**Mixed protocols" in md
    assert "- data.train_split differs between points: 'train[:90%]' (depth20_residual); " \
           "'train[:512]' (depth32_residual)" in md


def _cnn_jax_imports(path: Path) -> set[str]:
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnn_jax"):
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cnn_jax")}
    return out


def test_report_and_sweep_share_only_rundir():
    """No import cycle: the report never imports the sweep runner; rundir imports neither (only
    the leaf module cnn_jax/files.py)."""
    package = Path(report.__file__).parent.parent
    for path in (package / "report").glob("*.py"):
        assert not any(m.startswith("cnn_jax.sweep") for m in _cnn_jax_imports(path)), path
    assert _cnn_jax_imports(package / "rundir.py") <= {"cnn_jax", "cnn_jax.files"}
    assert _cnn_jax_imports(package / "files.py") == set()
    for name in ("plan", "point"):  # planning and one point know nothing of the runners
        imports = _cnn_jax_imports(package / "sweep" / f"{name}.py")
        assert not any(m.startswith(("cnn_jax.sweep.execute", "cnn_jax.sweep.slurm",
                                     "cnn_jax.report")) for m in imports), name
