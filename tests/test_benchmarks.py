"""The benchmark suite's quick mode runs end to end and writes its figures."""
import json
import subprocess
import sys

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
