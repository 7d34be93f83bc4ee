"""The virtual-time backend (common/virtual_time.py, async_mach.py --backend virtual):
deterministic (at the fixed default prices too), a probe (--machine measure) that refuses
an implausible machine, messages never arrive before their latency, staleness as computed
by hand, and speeds that slow one machine down."""
import json

import pytest
from conftest import read_run

import async_mach as am
from common import cli, machine_prices
from common.runtime_flags import DEFAULT_MACHINE
from common.machine_prices import check_plausible
from common.virtual_time import VirtualWorld


def run_virtual(tiny_data, out, *extra, machine=("10", "1", "10")):
    """async_mach.main in this process (no interpreter to start): the run's folder.
    machine=None: no --machine flag, the defaults."""
    am.main([str(a) for a in ("--dataset", "mnist", "--data-dir", tiny_data, "--threads", "1",
                              "--out", out, "--backend", "virtual", *(("--machine", *machine) if machine else ()),
                              "--eval-every", "10", "--log-seconds", "0.05", *extra)])
    return read_run(out)


def test_the_default_command_twice_gives_the_same_numbers_at_the_default_prices(tiny_data, tmp_path, capsys):
    # no --machine: fixed prices, not a probe of this (loaded, shared) machine
    runs = [run_virtual(tiny_data, tmp_path / name, "--components", "3", "--iterations", "15",
                        machine=None) for name in ("a", "b")]
    (_, a, rows_a), (_, b, rows_b) = runs
    assert rows_a == rows_b and len(rows_a) > 3   # accuracies and virtual times, line by line
    assert a["components"] == b["components"] and a["test_accuracy"] == b["test_accuracy"]
    assert [c["steps"] for c in a["components"].values()] == [15, 15, 15]
    assert a["machine"] == b["machine"] == DEFAULT_MACHINE
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["machine"] == list(DEFAULT_MACHINE.values())
    prices = " ".join(f"{v:g}" for v in DEFAULT_MACHINE.values())
    out = capsys.readouterr().out
    assert out.count(f"(the defaults); the same numbers elsewhere: the same flags with --machine {prices}\n") == 2
    assert f"default: {prices}," in " ".join(am.build_parser().format_help().split())


def test_measure_probes_this_machine_and_prints_the_flag_that_repeats_the_run(tiny_data, tmp_path, capsys):
    try:
        summary = run_virtual(tiny_data, tmp_path / "run", "--components", "2", "--iterations", "3",
                              machine=("measure",))[1]
    except cli.UserError as error:   # refused: tested below, where the bounds are forced
        pytest.skip(f"this machine was too busy to measure: {error}")
    machine = summary["machine"]
    for name, (low, high) in machine_prices.PLAUSIBLE.items():
        assert low <= machine[name] <= high   # one thread
    prices = " ".join(f"{v:.15g}" for v in machine.values())
    assert f"(measured here); the same numbers elsewhere: the same flags with --machine {prices}\n" \
        in capsys.readouterr().out


def test_an_implausible_probe_is_refused_and_the_run_leaves_nothing(tiny_data, tmp_path, monkeypatch):
    # the probes on a 2-core machine: 21,979 GFLOPS; op_us 2331 under load
    for machine, figure in ((dict(gflops=21979.0, gelements=8.0, op_us=6.0), "measured 21979 GFLOPS"),
                            (dict(gflops=80.0, gelements=8.0, op_us=2331.0), "measured 2331 us per op")):
        with pytest.raises(cli.UserError, match=figure) as refused:
            check_plausible(machine, threads=2)
        assert "rerun on an idle machine" in str(refused.value) and "--machine GFLOPS" in str(refused.value)
    monkeypatch.setitem(machine_prices.PLAUSIBLE, "op_us", (1e6, 1e7))   # no machine is this slow
    with pytest.raises(cli.UserError, match=r"us per op, outside 1e\+06 to 1e\+07"):
        run_virtual(tiny_data, tmp_path / "run", "--iterations", "3", machine=("measure",))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (("--machine", "measure", "1"), "--machine measure 1: give three prices, GFLOPS GELEMENTS OP_US, or `measure`"),
    (("--machine", "1", "2"), "--machine 1 2: give three prices"),
    (("--machine", "fast", "1", "2"), "--machine: expected a positive number, got 'fast'"),
    (("--machine", "1", "0", "1"), "--machine: expected a positive number, got 0"),
])
def test_a_bad_machine_exits_2_with_one_line(tiny_data, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        am.main(["--dataset", "mnist", "--data-dir", str(tiny_data), "--out", str(tmp_path / "run"),
                 "--backend", "virtual", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_same_seed_gives_the_same_numbers(tiny_data, tmp_path, capsys):
    runs = [run_virtual(tiny_data, tmp_path / name, "--iterations", "20", "--forward", "child",
                        "--latency-ms", "3", "--jitter-ms", "4") for name in ("a", "b")]
    assert " virtual s " in capsys.readouterr().out   # times are labelled virtual
    (_, a, rows_a), (_, b, rows_b) = runs
    assert a["clock"] == "virtual" and a["real_seconds"] > 0
    assert rows_a == rows_b and len(rows_a) > 3   # every logged number, virtual times included
    assert a["components"] == b["components"] and a["test_accuracy"] == b["test_accuracy"]
    assert sum(c["messages_received"] for c in a["components"].values()) > 0


def test_a_message_arrives_no_earlier_than_its_latency_and_links_stay_in_order():
    world = VirtualWorld(2, machine=dict(gflops=1.0, gelements=1.0, op_us=1.0), speeds=[1.0, 1.0], latency_s=0.050, jitter_s=0.020,
                         seed=0, stopped=RuntimeError)
    sender, receiver = world.transports[0], world.transports[1]
    sent = []
    for i, t in enumerate([1.000, 1.001, 1.002, 1.003]):
        world.clocks[0].t = t
        sender.send(1, {"kind": "x", "n": i})
        sent.append(t)
    arrivals = [arrival for arrival, _, _ in sorted(world.inboxes[1])]
    assert all(a >= t + 0.050 for a, t in zip(arrivals, sent))
    assert all(a <= t + 0.070 for a, t in zip(arrivals, sent))
    clock = world.clocks[1]
    clock.turn_began = sent[0] + 0.050 - 1e-9   # a turn that began before the first arrival
    assert receiver.receive() is None
    clock.turn_began = 2.0                      # long after: all four, in the order sent
    assert [receiver.receive()["n"] for _ in range(4)] == [0, 1, 2, 3]
    assert receiver.receive() is None


def hand_computed_staleness(N):
    """{staleness: gradients learned at it} of either component of a K = 2 kgraph (each is
    the other's parent and child), equal speeds, no latency, --forward student, LIFO, one
    gradient per learn step. The two run mirror images of each other in rounds: a round
    begins with both clocks equal, and in it each handles what the other sent in the round
    before, then steps. With V_r its version (optimizer steps) when round r begins:
      round 1: own step                                   -> staleness 0
      round 2: answers the spike of round 1; own step     -> 0
      round 3: the answer to its spike of round 1 (gradient at V_3), answers a spike; own
               step. LIFO learns own (0), then the answer's gradient (1)
      round r >= 4: also the delayed gradient for the answer it gave in round r-2, at
               V_{r-2}, learned third: staleness V_r + 2 - V_{r-2}: 5 in round 4 (one step
               in round 2), 7 in round 5, then 8 (three learn steps a round)
      round N+1: done, no step: the answer's gradient (0), then the delayed one (7).
    """
    return {"0": N + 1, "1": N - 2, "5": 1, "7": 2, "8": N - 5}


def test_staleness_matches_a_hand_computed_schedule(tiny_data, tmp_path):
    N = 8
    summary = run_virtual(tiny_data, tmp_path / "run", "--components", "2", "--topology", "kgraph",
                          "--iterations", N)[1]
    expected = hand_computed_staleness(N)
    for c in summary["components"].values():
        assert c["steps"] == N and c["learn_steps"] == sum(expected.values()) == 3 * N - 3
        assert c["staleness"] == expected
        assert c["mean_staleness"] == round(49 / 21, 3)


def test_a_slow_machine_is_slow_in_virtual_time_and_holds_nobody_back(tiny_data, tmp_path):
    parts = run_virtual(tiny_data, tmp_path / "run", "--components", "2", "--seconds", "1",
                        "--speeds", "0.1", "1")[1]["components"]
    slow, fast = parts["component_0"]["steps"], parts["component_1"]["steps"]
    assert fast >= 5 * slow > 0
    for c in parts.values():   # --seconds counts virtual time (then the two say goodbye)
        assert 1.0 <= c["seconds"] < 3.0


def test_stop_at_accuracy_ends_the_run_once_every_component_has_reached_it(tiny_data, tmp_path):
    _, summary, rows = run_virtual(tiny_data, tmp_path / "run", "--components", "2", "--iterations",
                                   "1000", "--stop-at-accuracy", "0.5")
    assert summary["status"] == "completed" and summary["stopped_at_accuracy"] == 0.5
    for name in ("component_0", "component_1"):
        assert max(float(r[f"acc/{name}"]) for r in rows if r.get(f"acc/{name}")) >= 0.5
        assert summary["components"][name]["steps"] < 1000
