"""synthgrad_demo.py: the DNI update against backprop, the gradient modules, the
lumpy target, the shared-memory channel, smoke runs of both tasks and of --async,
a killed worker, a diverged --async run, Ctrl-C, and bad flags."""
import copy
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import synthgrad_demo as sg
from common import cli
from common.data import lumpy_function
from common.models import mlp_blocks_and_head
from common.shm_channel import Channel
from conftest import ROOT, ctrl_c_reaches_child, read_run, run_script


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ----------------------------------------------------------------------------- mechanism
def test_perfect_synthetic_gradient_reproduces_backprop_update():
    """With M_i replaced by an oracle that returns the true dL/dh_i, one DNI step
    moves every parameter (and BatchNorm statistic) exactly as one backprop step."""
    torch.manual_seed(0)
    blocks, head = mlp_blocks_and_head(20, 16, 3, 10)
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    bp_blocks, bp_head = copy.deepcopy(blocks), copy.deepcopy(head)
    ref_blocks, ref_head = copy.deepcopy(blocks), copy.deepcopy(head)   # frozen, for the oracle
    true, true_h = sg.true_gradients(ref_blocks, ref_head, F.cross_entropy, x, y)

    def oracle(i, h, labels):
        assert torch.allclose(h, true_h[i], atol=1e-6)   # layer i sees the activations backprop sees
        return true[i]

    # SGD, not Adam: Adam's first step is lr * sign(grad) and would hide a wrong gradient scale.
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in [*blocks, head]]
    sg.dni_step(blocks, head, F.cross_entropy, optimizers, x, y, oracle)
    bp_optimizer = torch.optim.SGD([*bp_blocks.parameters(), *bp_head.parameters()], lr=0.1)
    sg.backprop_step(torch.nn.Sequential(*bp_blocks, bp_head), F.cross_entropy, bp_optimizer, x, y)

    after = dict(blocks.state_dict()) | {"head." + k: v for k, v in head.state_dict().items()}
    reference = dict(bp_blocks.state_dict()) | {"head." + k: v for k, v in bp_head.state_dict().items()}
    before = dict(ref_blocks.state_dict()) | {"head." + k: v for k, v in ref_head.state_dict().items()}
    for name, value in reference.items():
        torch.testing.assert_close(after[name], value, atol=1e-6, rtol=1e-5, msg=name)
    moved = [n for n in reference if n.endswith("weight") and not torch.equal(before[n], reference[n])]
    assert len(moved) == 7   # 3 Linear + 3 BatchNorm + head: the step really moved them


def test_synthetic_module_targets_are_what_the_layer_above_sends_back(monkeypatch):
    """M_{i-1}'s regression target is g_i^T dh_i/dh_{i-1}; with true g_i that is the true dL/dh_{i-1}."""
    torch.manual_seed(1)
    blocks, head = mlp_blocks_and_head(12, 8, 2, 10)
    x, y = torch.randn(16, 12), torch.randint(0, 10, (16,))
    true, _ = sg.true_gradients(copy.deepcopy(blocks), copy.deepcopy(head), F.cross_entropy, x, y)
    synth = torch.nn.ModuleList(sg.SyntheticGradient(8, [8]) for _ in blocks)
    for m in synth:   # give them non-zero outputs so the regression has something to fit
        torch.nn.init.normal_(m.net[-1].weight)
    seen = {}
    real_mse = F.mse_loss

    def spy(prediction, target):
        seen.setdefault("targets", []).append(target.clone())
        return real_mse(prediction, target)

    optimizers = [torch.optim.SGD(m.parameters(), lr=0.0) for m in [*blocks, head]]
    synth_optimizer = torch.optim.SGD(synth.parameters(), lr=0.0)
    predicted = [None, None]

    def synthetic(i, h, labels):
        predicted[i] = synth[i](h, labels)
        return true[i] if i == 1 else predicted[i]   # layer 2 gets the true gradient
    monkeypatch.setattr(sg.F, "mse_loss", spy)   # undone after the test, however it ends
    sg.dni_step(blocks, head, F.cross_entropy, optimizers, x, y, synthetic, synth_optimizer)
    torch.testing.assert_close(seen["targets"][0], true[0], atol=1e-6, rtol=1e-5)  # from layer 2
    torch.testing.assert_close(seen["targets"][1], true[1], atol=1e-6, rtol=1e-5)  # from the loss


def test_one_regression_step_lowers_the_module_loss():
    """A gradient module learns from the targets it is given: one SGD step on a fixed batch
    lowers its loss by about what the first-order expansion predicts, lr * |grad|^2."""
    torch.manual_seed(0)
    module = sg.SyntheticGradient(8, [16, 16])
    h, target = torch.rand(32, 8), 0.1 * torch.randn(32, 8)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    before = F.mse_loss(module(h), target)
    optimizer.zero_grad()
    before.backward()
    predicted_drop = 0.5 * sum(p.grad.pow(2).sum() for p in module.parameters()).item()
    optimizer.step()
    drop = before.item() - F.mse_loss(module(h), target).item()
    assert predicted_drop > 0 and 0.8 * predicted_drop < drop < 1.2 * predicted_drop


def test_gradient_quality_of_an_exact_and_of_a_dead_module():
    """cos and norm ratio against autograd's dL/dh: 1 and 1 for the true gradient, 0 for a dead one."""
    torch.manual_seed(2)
    blocks, head = mlp_blocks_and_head(12, 8, 2, 10)
    x, y = torch.randn(16, 12), torch.randint(0, 10, (16,))
    true, hs = sg.true_gradients(blocks, head, F.cross_entropy, x, y)
    exact = [lambda h, labels, g=g: g for g in true]
    for layer in sg.gradient_quality(blocks, head, F.cross_entropy, exact, x, y):
        assert abs(layer["cos"] - 1) < 1e-5 and abs(layer["ratio"] - 1) < 1e-5
    dead = torch.nn.ModuleList(sg.SyntheticGradient(8, [8]) for _ in blocks)   # zero last layer
    assert all(layer == {"cos": 0.0, "ratio": 0.0}
               for layer in sg.gradient_quality(blocks, head, F.cross_entropy, dead, x, y))


def test_the_layers_of_a_dni_net_learn_at_the_scaled_rates():
    """--first/--hidden-lr-scale slow DNI's layers, not its head, and not cDNI's (whose linear
    modules see the label and keep up)."""
    args = sg.build_parser().parse_args(["--lr", "1e-3", "--first-lr-scale", "0.1", "--hidden-lr-scale", "0.5",
                                         "--sg-lr", "1e-2"])
    blocks, head = mlp_blocks_and_head(8, 4, 3, 3)
    synth = torch.nn.ModuleList(sg.SyntheticGradient(4, [4]) for _ in blocks)
    dni = sg.Learner("dni", blocks, head, synth, F.cross_entropy, "adam", args, torch.device("cpu"))
    rates = [o.param_groups[0]["lr"] for o in dni.optimizers]   # layers 1, 2, 3, head
    assert rates == pytest.approx([1e-4, 5e-4, 5e-4, 1e-3])
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    before = [p.detach().clone() for p in blocks.parameters()]
    for _ in range(8):   # modules start at zero: M_1 speaks once M_2 and M_3 have
        dni.step(x, y)
    moved = [(p - b).abs().max().item() for p, b in zip(blocks.parameters(), before)]
    first, second = moved[0], moved[4]   # layer 1's weight, layer 2's weight
    assert 0 < first < 0.3 * second
    cdni = sg.Learner("cdni", blocks, head, synth, F.cross_entropy, "adam", args, torch.device("cpu"))
    assert [o.param_groups[0]["lr"] for o in cdni.optimizers] == pytest.approx([1e-3] * 4)  # sees y


def test_cdni_depends_on_label_and_dni_does_not():
    torch.manual_seed(2)
    h = torch.randn(6, 8)
    y1, y2 = torch.zeros(6, dtype=torch.long), torch.full((6,), 3)
    dni, cdni = sg.SyntheticGradient(8, [16]), sg.SyntheticGradient(8, [], num_classes=10)
    assert torch.equal(dni(h, y1), torch.zeros(6, 8))    # zero-initialised last layer
    assert torch.equal(cdni(h, y1), torch.zeros(6, 8))
    for m in (dni, cdni):
        torch.nn.init.normal_(m.net[-1].weight)
    assert torch.equal(dni(h, y1), dni(h, y2))
    assert not torch.allclose(cdni(h, y1), cdni(h, y2))
    assert cdni.net[0].in_features == 18                 # linear map of [h, onehot(y)]


def test_lumpy_target_matches_hand_computed_values():
    s2 = math.sqrt(0.5)
    expected = [
        # (1, 0): r 1, theta 0, k 0.3, b 0
        0.3 * math.sin(3.75) + 0.35 * math.cos(0.6),
        # (0, 1): r 1, theta pi/2, k 0.6, b sin(pi) = 0, c cos(3 pi + 0.6) = -cos 0.6
        0.6 * math.sin(3.75) - 0.2 * math.cos(0.6),
        # (-0.5, 0.5): r sqrt(1/2), theta 3pi/4, b -sqrt(1/2), c cos(pi/2 + 0.6) = -sin 0.6
        0.3 * (s2 + 1) * math.sin(2 - 0.25 * s2) + (1 - 0.3 * (s2 + 1)) / 2 * (-s2 - math.sin(0.6)),
    ]
    got = lumpy_function(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.5, 0.5]], dtype=torch.float64))
    assert got.shape == (3, 1)
    for value, want in zip(got[:, 0].tolist(), expected):
        assert value == pytest.approx(want, abs=1e-12)


def test_channel_is_bounded_and_drops_when_full():
    ctx = mp.get_context("spawn")
    channel = Channel(ctx, 2, (3,))
    # mp.Queue hands items over through a feeder thread: give the first sends a moment.
    assert channel.send(torch.ones(3), timeout=1) and channel.send(2 * torch.ones(3), timeout=1)
    assert not channel.send(3 * torch.ones(3), timeout=0.05)   # full: dropped, not queued
    assert torch.equal(channel.receive(timeout=1)[0], torch.ones(3))
    assert torch.equal(channel.receive(timeout=1)[0], 2 * torch.ones(3))


# ----------------------------------------------------------------------------- smoke runs
def test_mnist_smoke(tiny_data, tmp_path):
    result = run_script("synthgrad_demo.py", "--dataset", "mnist", "--data-dir", tiny_data,
                        "--threads", 1, "--iterations", 6, "--eval-every", 3, "--batch-size", 32,
                        "--width", 16, "--sg-hidden", 16, "--out", tmp_path, "--plot")
    assert result.returncode == 0, result.stderr
    config, summary, rows = read_run(tmp_path)
    methods = {"backprop", "dni", "cdni"}
    # --plot: the accuracy curves, and each module's cosine and norm ratio beside them
    assert {"curves.png", "gradient_cos.png", "gradient_ratio.png"} <= set(summary["results"]["figures"])
    assert summary["status"] == "completed" and config["dataset"] == "mnist"
    assert set(summary["test_accuracy"]) == methods and set(summary["seconds_per_method"]) == methods
    assert len(rows) == 2 and {"cos/dni/h3", "cos/cdni/h1"} <= set(rows[0])
    assert "acc backprop" in result.stdout and "cos/cdni/h3" not in result.stdout  # in the CSV only
    # the own clocks in the summary are the last logged ones
    assert all(summary["seconds_per_method"][m] == float(rows[-1][f"sec/{m}"]) for m in methods)
    declared = {(r["name"], r["metric"]): r for r in summary["results"]["rows"]}
    assert {(m, "own training seconds") for m in methods} | {(m, "test accuracy") for m in methods} \
        == set(declared)
    assert all("Jaderberg" in declared[(m, "test accuracy")]["reference"] for m in methods)
    # time to 95 % of backprop's final accuracy, recomputed by hand from metrics.csv
    target = 0.95 * float(rows[-1]["acc/backprop"])
    first = {m: next((float(r[f"sec/{m}"]) for r in rows if float(r[f"acc/{m}"]) >= target), None)
             for m in methods}
    pairs = summary["time_to_target"]["pairs"]
    assert [(p["method"], p["baseline"]) for p in pairs] == [("dni", "backprop"), ("cdni", "backprop")]
    assert all(p["seconds"] == first[p["method"]] and p["baseline_seconds"] == first["backprop"]
               for p in pairs)
    assert summary["results"]["baseline"] == "backprop"


def test_lumpy_sync_smoke(tmp_path):
    """Backprop's target and seconds, and DNI's seconds to reach it, against metrics.csv."""
    result = run_script("synthgrad_demo.py", "--task", "lumpy", "--threads", 1, "--iterations", 100,
                        "--eval-every", 50, "--max-time-ratio", 100, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    config, summary, rows = read_run(tmp_path)
    assert set(summary["test_mse"]) == {"backprop", "dni"}
    assert config["device_used"] == "cpu" and summary["dataset"] == "lumpy" and config["dataset"] is None
    backprop = [r for r in rows if r["method"] == "backprop"]
    dni = [r for r in rows if r["method"] == "dni"]
    target, bp_seconds = float(backprop[-1]["test_mse"]), float(backprop[-1]["method_seconds"])
    assert int(backprop[-1]["iteration"]) == 100 and summary["test_mse"]["backprop"] == target
    assert summary["seconds_to_target"]["backprop"] == pytest.approx(bp_seconds, abs=1e-3)
    # DNI stops at its first measurement at or below backprop's final MSE
    assert [float(r["test_mse"]) <= target for r in dni] == [False] * (len(dni) - 1) + [True]
    reached = float(dni[-1]["method_seconds"])
    assert summary["seconds_to_target"]["dni"] == pytest.approx(reached, abs=1e-3)
    # the ratio of the unrounded seconds: the CSV's 3 decimals are too coarse when backprop takes ~10 ms
    seconds = summary["seconds_to_target"]
    assert summary["time_ratio_to_backprop"]["dni"] == pytest.approx(seconds["dni"] / seconds["backprop"], abs=1e-3)
    declared = {(r["name"], r["metric"]): r["value"] for r in summary["results"]["rows"]}
    assert declared[("dni", "time to backprop's final MSE, ÷ backprop's")] \
        == summary["time_ratio_to_backprop"]["dni"]
    assert declared[("backprop", "test MSE")] == pytest.approx(target, abs=1e-6)
    assert summary["results"]["baseline"] == "backprop"


def test_lumpy_records_the_cpu_it_runs_on(tmp_path, monkeypatch):
    """Where --device auto picks a GPU, the lumpy task still runs, and says it runs, on the CPU."""
    monkeypatch.setattr(cli, "resolve_device", lambda spec: torch.device("cuda"))
    sg.main(["--task", "lumpy", "--method", "backprop", "--iterations", "20", "--eval-every", "10",
             "--out", str(tmp_path)])
    config, summary, _ = read_run(tmp_path)
    assert config["device_used"] == "cpu" and summary["device"] == "cpu"


def test_lumpy_async_smoke(tmp_path):
    result = run_script("synthgrad_demo.py", "--task", "lumpy", "--async", "--threads", 1,
                        "--iterations", 300, "--eval-every", 100, "--max-time-ratio", 3,
                        "--eval-seconds", 0.1, "--out", tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    _, summary, rows = read_run(tmp_path)
    assert summary["status"] == "completed"
    assert set(summary["test_mse"]) == {"backprop", "dni_async"}
    async_rows = [r for r in rows if r["method"] == "dni_async"]
    assert async_rows and int(async_rows[-1]["iteration"]) > 0 and int(async_rows[-1]["output_steps"]) > 0
    started = result.stdout.split("processes: ")[1].splitlines()[0].split(", ")
    assert all(gone(int(w.split()[-1])) for w in started)


def start_async(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "synthgrad_demo.py"), "--task", "lumpy",
                             "--async", "--threads", "1", "--iterations", "300", "--eval-every", "100",
                             "--max-time-ratio", "1000", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_reaches_child)
    for line in proc.stdout:
        if line.startswith("processes: "):
            pids = {part.split()[0]: int(part.split()[-1]) for part in line[11:].strip().split(", ")}
            break
    else:
        raise AssertionError(proc.stderr.read())
    for line in proc.stdout:   # training has begun once the first async measurement is printed
        if "dni_async" in line:
            break
    return proc, pids


def test_killed_worker_ends_the_run_naming_it(tmp_path):
    proc, pids = start_async(tmp_path)
    os.kill(pids["oracle"], signal.SIGKILL)
    began = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - began < 10
    assert proc.returncode == 1
    assert "oracle process" in stderr and str(pids["oracle"]) in stderr and "Traceback" not in stderr
    assert all(gone(pid) for pid in pids.values())
    _, summary, _ = read_run(tmp_path)
    assert summary["status"] == "failed" and "oracle" in summary["error"]


def test_ctrl_c_stops_all_three(tmp_path):
    proc, pids = start_async(tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert all(gone(pid) for pid in pids.values())
    _, summary, _ = read_run(tmp_path)
    assert summary["status"] == "interrupted"


def test_diverged_async_run_says_diverged(tmp_path):
    """An oracle learning at an absurd rate poisons layer 1: NaN test MSE, status diverged, exit 1."""
    result = run_script("synthgrad_demo.py", "--task", "lumpy", "--async", "--threads", 1,
                        "--iterations", 100, "--eval-every", 100, "--sg-lr", 1e30, "--max-time-ratio", 1000,
                        "--eval-seconds", 0.1, "--out", tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "diverged" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    _, summary, rows = read_run(tmp_path)
    assert summary["status"] == "diverged" and math.isnan(float(rows[-1]["test_mse"]))


# ----------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("flags, message", [
    (["--layers", "0"], "--layers: expected a positive integer, got 0"),
    (["--width", "0"], "--width: expected a positive integer, got 0"),
    (["--method", "hebbian"], "argument --method: invalid choice: 'hebbian'"),
    (["--task", "lumpy", "--method", "cdni"], "--method cdni: the lumpy task has no label"),
    (["--async"], "--async: only the lumpy task runs as three processes; add --task lumpy"),
    (["--task", "lumpy", "--async", "--method", "backprop"], "--async --method backprop"),
    (["--task", "lumpy", "--dataset", "mnist"], "--dataset mnist: the lumpy task makes its own data"),
    (["--task", "lumpy", "--device", "cuda"], "--device cuda: the lumpy task runs on the CPU"),
    (["--task", "lumpy", "--first-lr-scale", "0.1"], "--first/--hidden-lr-scale: the lumpy task's one"),
    (["--task", "lumpy", "--hidden-lr-scale", "0.1"], "--first/--hidden-lr-scale: the lumpy task's one"),
])
def test_bad_flags(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        sg.main([*flags, "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_refused_run_creates_nothing(tmp_path):
    out = tmp_path / "X"
    result = run_script("synthgrad_demo.py", "--task", "mnist", "--async", "--out", out)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "synthgrad_demo.py: error: --async: only the lumpy task runs as three processes; add --task lumpy"]
    assert not out.exists()
