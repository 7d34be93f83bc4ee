"""benchmarks/parallel_race.py: each parallel method checked against a one-process reference
on tiny data (2 processes, a 4-block MLP of width 32), bad flags refused before anything is
written, a dead stage named in one line with nothing left running, and the mechanisms
underneath (the balanced split, the activation meter)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, read_run

SCRIPT = "benchmarks/parallel_race.py"
TINY = ["--network", "mlp", "--width", "32", "--depth", "4", "--batch-size", "40", "--eval-every", "3",
        "--eval-size", "200", "--peer-timeout", "10"]
STEPS = 3


def run(tiny_data, out, *flags, timeout=90):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, SCRIPT, "run", "--dataset", "mnist", "--data-dir", str(tiny_data),
                           "--out", str(out), *TINY, *map(str, flags)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def trained(tiny_data, tmp_path, method, *flags):
    """Run `method` for STEPS steps with plain SGD; every rank's final weights, by their name
    in the whole network."""
    out = tmp_path / method
    result = run(tiny_data, out, "--method", method, "--steps", STEPS, "--optimizer", "sgd", "--lr", "0.1",
                 "--save-weights", *flags)
    assert result.returncode == 0, result.stderr
    weights = {}
    for k in range(2):
        weights.update(torch.load(out / f"stage_{k}.pt"))
    return weights


def reference(tiny_data, step):
    """The whole network, the batches and an SGD step function, as one process sees them."""
    from common.data import Batches, load_data
    from common.stage_networks import build_network
    data = load_data("mnist", tiny_data, torch.device("cpu"))
    net = build_network("mlp", 0, width=32, depth=4)
    batches = Batches(torch.arange(len(data.train_x)), data.train_y, 40, seed=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _, (index, y) in zip(range(STEPS), batches):
        optimizer.zero_grad(set_to_none=True)
        step(net, data.train_x[index], y).backward()
        optimizer.step()
    return dict(net.named_parameters())


def assert_same(weights, expected):
    assert weights, "no weights saved"
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name].detach(), rtol=1e-5, atol=1e-6, msg=name)


def backprop_loss(net, x, y):
    return F.cross_entropy(net(x), y)


@pytest.mark.parametrize("method", ["gpipe", "1f1b"])
def test_pipelined_backprop_equals_one_process_backprop(tiny_data, tmp_path, method):
    """torch's GPipe and 1F1B, 4 microbatches on 2 stages, leave every weight where
    one-process backprop on the whole batch does."""
    weights = trained(tiny_data, tmp_path, method, "--microbatches", 4)
    assert len(weights) == 4 * 4 + 2   # 4 blocks (Linear, LayerNorm) and the output layer, nothing else
    assert_same(weights, reference(tiny_data, backprop_loss))


def test_ddp_equals_one_process_backprop_on_the_global_batch(tiny_data, tmp_path):
    """Each of 2 ranks takes half the batch; the all-reduced update is the whole batch's."""
    weights = trained(tiny_data, tmp_path, "ddp")
    assert_same(weights, reference(tiny_data, backprop_loss))


def test_pipelined_dgl_equals_the_strategy_in_one_process(tiny_data, tmp_path):
    """Two concurrent stages, each on its local loss, end where layerwise_demo's decoupled
    strategy ends in one process on the same batches, whatever their timing."""
    from common.stage_networks import split, stage_of
    from layerwise_demo import decoupled_losses
    weights = trained(tiny_data, tmp_path, "dgl")

    def dgl_loss(net, x, y):
        parts = [stage_of(net, split(net, 2)[0], k) for k in range(2)]
        return sum(loss for loss, _ in decoupled_losses([b for b, _ in parts], [h for _, h in parts], x, y))
    expected = reference(tiny_data, dgl_loss)
    assert sum(n.startswith("heads.") and n.endswith("weight") for n in weights) == 2   # a local head per stage
    assert_same(weights, expected)


@pytest.mark.parametrize("flags, says", [
    (["--method", "dgl", "--K", "5"], "mlp has 4 blocks"),
    (["--method", "1f1b", "--K", "4", "--microbatches", "2"], "M >= K"),
    (["--method", "dgl", "--microbatches", "4"], "--microbatches: --method dgl has none"),
    (["--method", "ddp", "--queue", "3"], "--queue: --method ddp has none"),
    (["--method", "backprop", "--K", "2"], "leave --K out"),
    (["--method", "gpipe", "--microbatches", "3"], "does not split into 3"),
])
def test_bad_flags_are_refused_in_one_line_and_nothing_is_written(tiny_data, tmp_path, flags, says):
    result = run(tiny_data, tmp_path / "out", *flags, timeout=30)
    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_dead_stage_ends_the_run_in_one_line_naming_it_and_nothing_is_left(tiny_data, tmp_path):
    """Kill stage 1 mid-run: the run ends within --peer-timeout + 5 s, names stage_1, leaves
    no process behind and keeps the rows logged so far."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, SCRIPT, "run", "--method", "dgl", "--dataset", "mnist", "--data-dir", str(tiny_data),
               "--out", str(out), *TINY, "--steps", "100000", "--peer-timeout", "5"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "metrics.csv").exists() or len((out / "metrics.csv").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        pids = json.loads((out / "stages.json").read_text())
        os.kill(pids["stage_1"], signal.SIGKILL)
        killed = time.time()
        _, stderr = proc.communicate(timeout=5 + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.time() - killed < 5 + 5
    assert proc.returncode == 1
    assert stderr.strip().splitlines() == [stderr.strip()] and "stage_1: process killed by signal 9" in stderr
    for pid in pids.values():   # every stage process is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    _, summary, rows = read_run(out)
    assert summary["status"] == "failed" and len(rows) >= 2 and summary["ranks"][0]["steps"] > 0


# -- the mechanisms underneath, in this process ------------------------------------------------
def test_the_split_is_contiguous_and_balances_the_largest_stage():
    from common.stage_networks import balanced_split, block_flops, build_network
    assert balanced_split([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert balanced_split([5, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]
    assert balanced_split([1] * 16, 16) == [(k, k + 1) for k in range(16)]
    flops = block_flops(build_network("tfcnn", 0))   # conv 1.3 M, conv 20 M, dense 6.4 M
    assert balanced_split(flops, 2) == [(0, 2), (2, 3)]


def test_the_meter_counts_saved_activations_until_the_graph_is_freed():
    from common.stage_meters import ActivationMeter
    linear = torch.nn.Linear(10, 10)
    meter = ActivationMeter(linear.parameters())
    x = torch.randn(4, 10)
    with meter:
        y = torch.relu(linear(x))   # saves x (the weights are parameters: not counted) and relu's output
    assert meter.bytes == 2 * 4 * 10 * 4
    y.sum().backward()
    assert meter.bytes == 0 and meter.peak == 2 * 4 * 10 * 4


def test_calibration_prices_the_real_runs_and_the_schedule_model_tracks_them(tiny_data, tmp_path):
    """benchmarks/parallel_calibration.py on a real (tiny) race: every row's priced figures,
    ratios that are the priced ÷ real seconds, each rank's measured actions read back."""
    from benchmarks.parallel_race import key
    cells, runs = {}, tmp_path / "runs"
    for method, M in (("1f1b", 2),):   # one run: each costs seconds of start-up
        config = ("mlp", method, 2, M, 1)
        folder = runs / key(config, 1.0, 0).replace("/", "-")
        result = run(tiny_data, folder, "--method", method, "--K", 2, "--steps", 12,
                     *(["--microbatches", M] if M else []))
        assert result.returncode == 0, result.stderr
        cells[key(config, 1.0, 0)] = dict(network="mlp", method=method, K=2, microbatches=M, threads=1,
                                          factor=1.0, lr=1e-4, seed=0)
    rows = [dict(network="mlp", method=c["method"], K=2, microbatches=c["microbatches"], threads_per_rank=1,
                 lr=1e-4, seeds=[0]) for c in cells.values()]
    race = tmp_path / "race.json"
    race.write_text(json.dumps(dict(cells=cells, rows=rows)))
    out = tmp_path / "calibration.json"
    from benchmarks import parallel_calibration
    from common import cli
    threads = torch.get_num_threads()
    try:   # in-process (fast); main() prices on one thread, as the ranks ran
        parallel_calibration.main(["--race", str(race), "--runs", str(runs), "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    written = json.loads(out.read_text())
    assert [r["method"] for r in written["rows"]] == ["1f1b"]
    for r in written["rows"]:
        assert r["schedule_ratio"] == pytest.approx(r["schedule_seconds_per_step"] / r["real_seconds_per_step"],
                                                    abs=2e-3)
        assert len(r["machine_bubble"]) == 2 and all(0 < s for s in r["real_cpu_per_step"])
    actions = written["measured_action_seconds"]
    assert {"0/forward", "0/backward", "1/forward", "1/backward", "1/update"} <= set(actions["1f1b"])
    assert [t["met"] in (True, False) for t in written["targets"]] == [True, True, True]
    with pytest.raises(cli.UserError, match="no such file"):   # cli.run_script makes it one line, exit 2
        parallel_calibration.main(["--race", str(tmp_path / "none.json")])
