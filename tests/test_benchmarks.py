"""The benchmark suite's quick mode runs end to end and writes its figures."""
import importlib
import json
import subprocess
import sys

import pytest

from conftest import ROOT, needs_fashion


@needs_fashion
def test_quick_mode_under_a_minute(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick",
                             "--json-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data_path = json.loads((tmp_path / "data_path.json").read_text())
    assert data_path["speedup"] > 1 and 0 < data_path["data_share_of_step"] < 1
    efficiency = json.loads((tmp_path / "compute_efficiency.json").read_text())
    assert all(0 < row["efficiency"] < 1.5 for row in efficiency["rows"])


@pytest.mark.parametrize("name, flags, message", [
    ("compute_efficiency", ["--seconds", "0"], "--seconds: expected a positive number, got 0"),
    ("data_path", ["--steps", "0"], "--steps: expected a positive integer, got 0"),
    ("message_cost", ["--messages", "-3"], "--messages: expected a positive integer, got -3"),
    ("async_efficiency", ["--latencies", "-1"], "--latencies: expected a number >= 0, got -1"),
    ("synthgrad_transport", ["--lr", "fast"], "--lr"),  # a synthgrad_demo flag, checked up front
    ("run_all", ["--only", "everything"], "--only: invalid choice"),
    ("make_results", ["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_exit_2_with_one_line(name, flags, message, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as stop:
        module.main(flags)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
