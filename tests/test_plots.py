"""Overlaying several run folders from the shell."""
import pytest

from common import plots
from test_make_results import write_run


def test_overlay_of_two_runs(tmp_path):
    write_run(tmp_path / "a", 0, 0.8, 0.7, 10.0)
    write_run(tmp_path / "b", 1, 0.6, 0.5, 12.0)
    out = tmp_path / "compare.png"
    plots.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert out.stat().st_size > 10_000
    metrics = plots.read_metrics(tmp_path / "b")
    assert metrics["acc/teacher"] == [0.5, 0.6] and metrics["train_seconds"] == [6.0, 12.0]


def test_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plots.main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no metrics.csv there" in capsys.readouterr().err
