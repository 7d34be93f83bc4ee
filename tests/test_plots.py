"""Overlaying several run folders from the shell, and the figures the scripts draw."""
import csv

import pytest

from common import plots


def write_metrics(folder, rows):
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_overlay_of_two_runs(tmp_path):
    for name, acc in (("a", 0.8), ("b", 0.6)):
        write_metrics(tmp_path / name, [
            {"iteration": 100, "train_seconds": 6.0, "acc/teacher": acc - 0.1},
            {"iteration": 200, "train_seconds": 12.0, "acc/teacher": acc}])
    out = tmp_path / "compare.png"
    plots.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert out.stat().st_size > 10_000
    metrics = plots.read_metrics(tmp_path / "b")
    assert metrics["acc/teacher"] == [0.5, 0.6] and metrics["train_seconds"] == [6.0, 12.0]


def test_each_method_is_drawn_against_its_own_clock(tmp_path, monkeypatch):
    """The right panel's x values are sec/<method> where the run logs it, else train_seconds."""
    write_metrics(tmp_path / "r", [
        {"iteration": 1, "train_seconds": 10.0, "sec/dni": 3.0, "acc/dni": 0.5, "acc/other": 0.4},
        {"iteration": 2, "train_seconds": 20.0, "sec/dni": 7.0, "acc/dni": 0.6, "acc/other": 0.5}])
    drawn = []
    real_plot = plots.plt.Axes.plot
    monkeypatch.setattr(plots.plt.Axes, "plot", lambda axis, x, y, **kw: drawn.append(
        (kw.get("label"), list(x))) or real_plot(axis, x, y, **kw))
    plots.plot_run(tmp_path / "r")
    assert ("dni", [3.0, 7.0]) in drawn and ("other", [10.0, 20.0]) in drawn


def test_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plots.main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no metrics.csv there" in capsys.readouterr().err


def test_methods_on_named_clocks_and_a_single_evaluation(tmp_path):
    """clock_columns (summary.json) picks each method's clock; one evaluation is one point."""
    write_metrics(tmp_path / "r", [
        {"iteration": 5, "train_seconds": 9.0, "sec/mach": 6.0, "sec/backprop": 3.0,
         "acc/teacher_2": 0.7, "acc/backprop_2": 0.8}])
    (tmp_path / "r" / "summary.json").write_text(
        '{"clock_columns": {"teacher_2": "sec/mach", "backprop_2": "sec/backprop"}}')
    drawn = plots.curves(plots.read_metrics(tmp_path / "r"), plots.clocks_of(tmp_path / "r"))
    assert drawn == {"teacher_2": ([5.0], [6.0], [0.7]), "backprop_2": ([5.0], [3.0], [0.8])}
    assert plots.plot_run(tmp_path / "r").stat().st_size > 10_000
