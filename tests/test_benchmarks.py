"""The benchmark suite's quick mode runs end to end and writes its figures."""
import importlib
import json
import subprocess
import sys

import pytest

from conftest import ROOT, needs_fashion


@needs_fashion
def test_quick_mode_writes_every_benchmark(tmp_path):
    """Every benchmark's quick mode runs and states its goals. Speeds are the benchmarks'
    figures, not asserted here: this VM's speed drifts 2-4x within minutes."""
    result = subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick",
                             "--json-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data_path = json.loads((tmp_path / "data_path.json").read_text())
    assert data_path["speedup"] > 0 and 0 < data_path["data_share_of_step"] < 1
    efficiency = json.loads((tmp_path / "compute_efficiency.json").read_text())
    assert all(row["efficiency"] > 0 for row in efficiency["rows"])
    # every benchmark states its goals with the measured value and its own verdict
    speedup, share = data_path["targets"]
    assert speedup["value"] == data_path["speedup"] and speedup["met"] == (data_path["speedup"] >= 10)
    assert share["value"] == data_path["data_share_of_step"] and share["met"] == (share["value"] < 0.05)
    (row,) = efficiency["rows"]
    assert efficiency["targets"] == [{"figure": efficiency["targets"][0]["figure"], "value": row["efficiency"],
                                      "target": ">= 0.7", "met": row["efficiency"] >= 0.7}]
    message = json.loads((tmp_path / "message_cost.json").read_text())
    assert [(t["value"], t["target"], t["met"]) for t in message["targets"]] == [
        (message["http_over_gloo"], None, None), (message["http_over_channel"], None, None)]
    transport = json.loads((tmp_path / "synthgrad_transport.json").read_text())
    assert transport["targets"][0]["value"] is None and transport["targets"][0]["met"] is None  # skipped


@pytest.mark.parametrize("name, flags, message", [
    ("compute_efficiency", ["--seconds", "0"], "--seconds: expected a positive number, got 0"),
    ("data_path", ["--steps", "0"], "--steps: expected a positive integer, got 0"),
    ("message_cost", ["--messages", "-3"], "--messages: expected a positive integer, got -3"),
    ("async_efficiency", ["--latencies", "-1"], "--latencies: expected a number >= 0, got -1"),
    ("synthgrad_transport", ["--lr", "fast"], "--lr"),  # a synthgrad_demo flag, checked up front
    ("run_all", ["--only", "everything"], "--only: invalid choice"),
    ("make_results", ["--bogus"], "unrecognized arguments: --bogus"),
    ("soak", ["--minutes", "1", "--settle-minutes", "2"], "--settle-minutes 2 is not below --minutes 1"),
    ("race", ["--seeds", "1", "2"], "--seeds: the tuning runs on seed 0; include 0"),
    ("race", ["--methods", "backprop"], "--methods: no method ['backprop']; choose among"),
    ("race", ["--targets", "85"], "--targets: expected a number in [0, 1], got 85"),
])
def test_bad_flags_exit_2_with_one_line(name, flags, message, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as stop:
        module.main(flags)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_targets_say_met_missed_or_not_measured():
    """Each benchmark's verdict on made-up figures either side of its goal."""
    from benchmarks import async_efficiency, compute_efficiency, data_path, synthgrad_transport
    verdicts = [t["met"] for t in data_path.targets(
        {"speedup": 9.9, "speedup_target": 10, "data_share_of_step": 0.01, "data_share_target": 0.05})]
    assert verdicts == [False, True]
    rows = [{"script": "a", "efficiency": 0.71, "efficiency_repeats": [0.71]},
            {"script": "b", "efficiency": 0.69, "efficiency_repeats": [0.69, 0.7],
             "efficiency_compiled": 0.75, "efficiency_compiled_repeats": [0.75, 0.74], "compile_s": 3.0}]
    assert [t["met"] for t in compute_efficiency.targets(rows)] == [True, False, True]
    assert [t["met"] for t in synthgrad_transport.targets({"time_ratio_to_backprop": {"dni_async": 2.1}})] \
        == [False]
    only_slow = {"slow_child": {"slow_ms": 100, "parent_normal": 10.0, "parent_with_slow_child": 7.9,
                                "child_normal": 9.0, "child_slowed": 1.0, "ratio": 0.79}}
    tables = async_efficiency.tables(only_slow)
    assert [(t["value"], t["met"]) for t in tables["targets"]] == [(None, None), (0.79, False), (None, None)]
    assert list(tables["rows"]) == ["rates, time to accuracy, slow child"]
    assert {"figure": "parent steps/s, slowed ÷ normal", "value": 0.79} in tables["rows"][
        "rates, time to accuracy, slow child"]


def test_soak_verdicts_either_side_of_its_goals():
    """Memory growth of 1.10 is met, 1.11 missed; a message lost is missed; nothing left running."""
    import argparse
    from benchmarks import soak
    args = argparse.Namespace(settle_minutes=1.0, minutes=10.0, components=2, sample_seconds=10.0)
    samples = [{"t_s": t, "component_0": 100.0 * (1 + 0.11 * (t >= 300)), "component_1": 100.0 * (1 + 0.1 * (t >= 300)),
                "launcher": 50.0} for t in range(0, 600, 10)]
    parts = {f"component_{i}": {"messages_sent": 10, "messages_received": 10 - i, "grads_lost": 0, "drops": 0,
                                "steps": 5, "steps_per_second": 1.0, "bad_messages": 0} for i in range(2)}
    data = soak.figures(args, samples, {"component_0": 1, "component_1": 2, "launcher": 3}, 5.0, 0,
                        {"status": "completed", "components": parts}, {}, [])
    verdicts = {t["figure"].split(",")[0].split(" RSS")[0]: t["met"] for t in data["targets"]}
    assert verdicts["soak: component_0"] is False and verdicts["soak: component_1"] is True
    assert verdicts["soak: launcher"] is True
    assert verdicts["soak: the run ends with status completed"] is True
    assert verdicts["soak: processes of the run left running after it"] is True
    assert verdicts["soak: messages received ÷ sent"] is False   # 19 of 20 arrived
