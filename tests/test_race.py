"""benchmarks/race.py: the protocol on made-up cells (which runs, which configuration is
chosen, how rows and ratios come out), how a run folder is read, and RaceCurve's
confirmation on the whole test set."""
import json
import types

import pytest
import torch

from benchmarks import race
from common.race_curve import RaceCurve
from common.run_folder import Run

NET = "tfcnn"
METHODS = ["backprop (Adam)", "backprop (SGD)", "staged"]


def settings(**extra):
    defaults = dict(networks=[NET], methods=METHODS, factors=[0.5, 1.0, 2.0], seeds=[0, 1, 2],
                    targets=[0.85, 0.87], quick=False)
    return types.SimpleNamespace(**{**defaults, **extra})


def outcome(low, high, final=0.88):
    return dict(seconds={"0.85": low, "0.87": high}, final=final, curve=[(1.0, 0.5), (2.0, final)])


def cell(runner, factor, seed, methods, probe=(100, 100), network=NET):
    return dict(network=network, runner=runner, factor=factor, lr=1e-3 * factor, seed=seed, methods=methods,
                probe=list(probe))


def measured(args, network=NET):
    return {network: race.settings(args, network)}


def test_grid_first_then_the_best_and_original_configurations_on_the_other_seeds():
    args, cells = settings(), {}
    assert race.plan(args, cells) == [(NET, m, f, 0) for m in METHODS for f in args.factors]
    # seed 0: Adam best at x2 (reaches 87 % first), SGD best at x1, staged never reaches 87 %
    adam, sgd = "backprop (Adam)", "backprop (SGD)"
    times = {(adam, 0.5): (9, 20), (adam, 1.0): (8, 15), (adam, 2.0): (9, 12),
             (sgd, 0.5): (None, None), (sgd, 1.0): (10, 18), (sgd, 2.0): (11, 19),
             ("staged", 0.5): (5, None), ("staged", 1.0): (3, None), ("staged", 2.0): (4, None)}
    for (m, f), (low, high) in times.items():
        cells[race.key(NET, m, f, 0)] = cell(m, f, 0, {m: outcome(low, high)})
    assert race.best_factor(cells, NET, "backprop (Adam)", args.factors, args.targets) == 2.0
    assert race.best_factor(cells, NET, "staged", args.factors, args.targets) == 1.0   # no 87 %: faster to 85 %
    # the tuned configurations on the other seeds first, then the original ones not yet among them
    assert race.plan(args, cells) == [(NET, "backprop (Adam)", 2.0, 1), (NET, "backprop (Adam)", 2.0, 2),
                                      (NET, "backprop (SGD)", 1.0, 1), (NET, "backprop (SGD)", 1.0, 2),
                                      (NET, "staged", 1.0, 1), (NET, "staged", 1.0, 2),
                                      (NET, "backprop (Adam)", 1.0, 1), (NET, "backprop (Adam)", 1.0, 2)]


def test_a_runner_of_several_methods_runs_once_per_configuration_any_of_them_needs():
    net, runner = "dni-mlp", "synthgrad_demo"
    args, cells = settings(networks=[net], methods=None, factors=[1.0, 3.0, 10.0]), {}
    assert race.plan(args, cells) == [(net, runner, f, 0) for f in args.factors]
    best = {"backprop (Adam)": 10.0, "DNI": 3.0, "cDNI": 3.0}   # each method's fastest factor
    for f in args.factors:
        cells[race.key(net, runner, f, 0)] = cell(runner, f, 0, {m: outcome(5 if b == f else 9, 8 if b == f else 12)
                                                                  for m, b in best.items()}, network=net)
    assert race.plan(args, cells) == [(net, runner, 10.0, 1), (net, runner, 10.0, 2), (net, runner, 3.0, 1),
                                      (net, runner, 3.0, 2), (net, runner, 1.0, 1), (net, runner, 1.0, 2)]
    for f in args.factors:
        for s in (1, 2):
            cells[race.key(net, runner, f, s)] = dict(cells[race.key(net, runner, f, 0)], seed=s)
    rows = race.summarise(cells, measured(args, net), args.seeds)
    dni = [r for r in rows if r["method"] == "DNI" and r["tuned"]]
    assert [r["seconds"] for r in dni] == [[5, 5, 5], [8, 8, 8]] and dni[0]["backprop"] == "backprop (Adam) x10"
    assert dni[0]["backprop_seconds"] == [5, 5, 5] and dni[0]["within"] == "2000 steps"


def test_rows_divide_by_the_tuned_backprop_seed_for_seed_with_the_speed_correction():
    args, cells = settings(factors=[1.0, 2.0]), {}
    for m, f, low, high in [("backprop (Adam)", 2.0, 8, 12), ("backprop (SGD)", 1.0, 10, 18), ("staged", 1.0, 4, None)]:
        for s in args.seeds:
            cells[race.key(NET, m, f, s)] = cell(m, f, s, {m: outcome(low + s, high and high + s)})
    cells[race.key(NET, "staged", 1.0, 2)]["probe"] = [50, 50]   # ran while the machine was at half speed
    rows = race.summarise(cells, measured(args), args.seeds)
    staged = [r for r in rows if r["method"] == "staged"]
    assert [r["target"] for r in staged] == [0.85, 0.87] and staged[0]["tuned"] and staged[0]["original"]
    low = staged[0]
    assert low["seeds"] == [0, 1, 2] and low["seconds"] == [4, 5, 6] and low["backprop_seconds"] == [8, 9, 10]
    assert low["backprop"] == "backprop (Adam) x2"
    assert low["raw_ratio"] == pytest.approx((4 / 8 + 5 / 9 + 6 / 10) / 3, abs=1e-3)
    assert low["ratio"] == pytest.approx((4 / 8 + 5 / 9 + 0.5 * 6 / 10) / 3, abs=1e-3)
    assert staged[1]["ratio"] is None and staged[1]["seconds"] == [None] * 3
    tuned, original = race.headline(rows).values()
    assert [t["seconds to target"] for t in tuned if t["method"] == "staged"] == [
        "5.0 ± 0.8", "not reached within 45 s"]
    assert [t["÷ speed-corrected"] for t in original if t["method"] == "staged"] == [f"{low['ratio']:.2f}", "-"]
    assert [t["÷ tuned backprop, raw"] for t in original if t["method"] == "staged"][0] == f"{low['raw_ratio']:.2f}"
    # the tuned Adam and its original (x1, never run here) are separate rows
    adam = {(r["tuned"], r["original"]) for r in rows if r["method"] == "backprop (Adam)"}
    assert adam == {(True, False)}


def test_a_method_of_components_is_as_accurate_as_its_least_accurate_one():
    method = race.Method(("teacher_0", "teacher_1"), "train_seconds")
    rows = [{"train_seconds": "1.0", "acc/teacher_0": "0.86", "acc/teacher_1": "0.80"},
            {"train_seconds": "2.0", "acc/teacher_0": "0.84", "acc/teacher_1": "0.86"},
            {"train_seconds": "3.0", "acc/teacher_0": "0.88", "acc/teacher_1": "0.87"}]
    got = race.read(method, rows, {"test_accuracy": {"teacher_0": 0.88, "teacher_1": 0.87}}, [0.85, 0.87])
    assert got == {"seconds": {"0.85": 3.0, "0.87": 3.0}, "final": 0.87,
                   "curve": [(1.0, 0.80), (2.0, 0.84), (3.0, 0.87)]}
    # with a confirming column, only a confirmed point counts; a row without the accuracy is no point
    confirmed = race.Method(("staged",), "strategy_seconds", confirm="full_test_accuracy")
    rows = [{"strategy_seconds": "1.0", "acc/staged": "0.9", "full_test_accuracy": "0.84"},
            {"strategy_seconds": "2.0", "acc/staged": "0.9", "full_test_accuracy": ""},
            {"strategy_seconds": "3.0", "acc/staged": "0.9", "full_test_accuracy": "0.86"},
            {"strategy_seconds": "3.0", "acc/staged": "", "full_test_accuracy": "0.95"}]
    got = race.read(confirmed, rows, {"test_accuracy": {"staged": 0.95}}, [0.85])
    assert got["seconds"] == {"0.85": 3.0} and len(got["curve"]) == 3


def test_a_crossing_counts_once_the_whole_test_set_confirms_it(tmp_path):
    args = types.SimpleNamespace(out=str(tmp_path), seed=0, plot=False)
    x = torch.arange(10.0)[:, None]
    y = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    with Run(args, "test", torch.device("cpu")) as run:
        curve = RaceCurve(run, "m", (x, y), 10, budget_steps=True, every_steps=1, eval_size=4,
                          targets=[0.5, 0.9])
        always_one = lambda x: torch.stack([torch.zeros(len(x)), torch.ones(len(x))], 1)
        assert curve.point(always_one, [], "all") == 1.0   # the slice: all 1s
        # the slice reached both targets; the whole set (4 of 10) confirms neither
        assert curve.unconfirmed == [0.5, 0.9] and run.rows[-1]["full_test_accuracy"] == 0.4
        right = lambda x: torch.stack([(x[:, 0] >= 4).float(), (x[:, 0] < 4).float()], 1)
        curve.point(right, [], "all")
        assert curve.unconfirmed == [] and run.rows[-1]["full_test_accuracy"] == 1.0
        curve.point(right, [], "all")                         # nothing left to confirm
        assert "full_test_accuracy" not in run.rows[-1] or run.rows[-1]["full_test_accuracy"] in ("", None)
        assert run.rows[-1]["eval_examples"] == 4


def test_cells_of_other_settings_are_not_mixed_in(tmp_path, capsys):
    path = tmp_path / "race.json"
    kept = {"dataset": "fashion-mnist", "networks": {"tfcnn": race.settings(settings(factors=None, targets=None), NET)},
            "cells": {"x": {"network": "tfcnn"}}}
    path.write_text(json.dumps(kept))
    with pytest.raises(SystemExit) as stop:
        race.main(["--json", str(path), "--networks", "tfcnn", "--factors", "1", "3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "holds cells measured with other settings" in err and "--fresh" in err and err.count("\n") == 1
    assert json.loads(path.read_text()) == kept
