"""layerwise_demo.py: the local losses against references, block isolation,
a smoke run of every strategy, and bad flags."""
import json
import types

import pytest
import torch
import torch.nn.functional as F

import layerwise_demo as lw
from common.run_folder import Run
from conftest import read_run, run_script

SCRIPT = "layerwise_demo.py"


def tiny_args(tmp_path, *extra):
    args = lw.build_parser().parse_args(["--out", str(tmp_path), "--eval-every", "1000",
                                         "--batch-size", "20", *extra])
    args.budget_steps = True
    return args


def toy_data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.arange(n) % 10
    return types.SimpleNamespace(train_x=x, train_y=y, test_x=x[:40], test_y=y[:40])


def snapshot(modules):
    return [[p.detach().clone() for p in m.parameters()] for m in modules]


def changed(before, modules):
    return [any(not torch.equal(a, p) for a, p in zip(old, m.parameters()))
            for old, m in zip(before, modules)]


# -- the models ------------------------------------------------------------------------

@pytest.mark.parametrize("name, blocks, params", [
    # TF tutorial CNN: 5*5*32+32, 5*5*32*64+64, 3136*1024+1024, 1024*10+10
    ("tfcnn", 3, 832 + 51264 + 3212288 + 10250),
    # LeNet-like: 6*25+6, 16*6*25+16, 400*120+120, 120*84+84, 84*10+10
    ("lenet", 4, 156 + 2416 + 48120 + 10164 + 850),
    ("mlp", 3, 785 * 1024 + 2 * 1025 * 1024 + 1025 * 10),
])
def test_models_are_the_described_networks(name, blocks, params):
    layers = lw.BLOCK_MODELS[name](num_classes=10)
    assert len(layers) - 1 == blocks
    assert sum(p.numel() for p in layers.parameters()) == params
    x = torch.randn(3, 1, 28, 28)
    for layer in layers:
        x = layer(x)
    assert x.shape == (3, 10)


# -- block isolation -----------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["submodel", "staged", "maxdiff", "kl"])
def test_greedy_stage_changes_only_its_block(tmp_path, strategy):
    """The budget gives block 2 all the steps: blocks 1 and 3 and the other heads stay put."""
    args = tiny_args(tmp_path, "--model", "mlp")
    data = toy_data()
    blocks, heads = lw.build_model("mlp", 10, (1, 28, 28), seed=0)
    before_blocks, before_heads = snapshot(blocks), snapshot(heads)
    with Run(args, "layerwise_demo", torch.device("cpu")) as run:
        curve = lw.Curve(run, strategy, data, args)
        stream = iter(lw.Batches(torch.arange(100), data.train_y, 20, 0))
        lw.train_greedy(strategy, blocks, heads, stream, curve, [0, 3, 3], data, args,
                        torch.device("cpu"))
    assert curve.steps == 3
    assert changed(before_blocks, blocks) == [False, True, False]
    assert changed(before_heads, heads) == [False, True, False]


def test_decoupled_loss_reaches_only_its_block():
    blocks, heads = lw.build_model("lenet", 10, (1, 28, 28), seed=0)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    losses = lw.decoupled_losses(blocks, heads, x, y)
    losses[1][0].backward()
    grads = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in b.parameters())
             for b in list(blocks) + list(heads)]
    assert grads == [False, True, False, False] + [False, True, False, False]
    # Reference: the same gradient as training block 2 on a frozen block 1's output.
    got = [p.grad.clone() for p in blocks[1].parameters()]
    for p in blocks[1].parameters():
        p.grad = None
    with torch.no_grad():
        h = blocks[0](x)
    F.cross_entropy(heads[1](blocks[1](h)), y).backward()
    for g, p in zip(got, blocks[1].parameters()):
        torch.testing.assert_close(g, p.grad)


# -- maximum difference --------------------------------------------------------------

def test_maxdiff_sign_and_equal_pairs():
    e1, e2, e3 = torch.eye(3)
    # pairs (row 0, row 2) and (row 1, row 3); labels: pair 0 differs, pair 1 agrees
    y = torch.tensor([0, 1, 5, 1])
    apart = torch.stack([e1, e3, e2, e3])   # different-label pair orthogonal: d = 1
    close = torch.stack([e1, e3, e1, e3])   # different-label pair identical: d = 0
    assert lw.maxdiff_loss(apart, y).item() == pytest.approx(-1.0)
    assert lw.maxdiff_loss(close, y).item() == pytest.approx(0.0)
    # the equal-label pair is ignored by default, counted with pull
    spread = torch.stack([e1, e3, e2, e2])  # equal-label pair now orthogonal
    assert lw.maxdiff_loss(spread, y).item() == pytest.approx(-1.0)
    assert lw.maxdiff_loss(spread, y, pull=True).item() == pytest.approx(0.0)
    assert lw.maxdiff_loss(apart, y, pull=True).item() == pytest.approx(-1.0)
    # a gradient step moves a different-label pair apart
    h = (torch.stack([e1, e3, e1 + 0.5 * e2, e3])).requires_grad_(True)
    cos = lambda h: F.cosine_similarity(h[0], h[2], dim=0)
    before = cos(h).item()
    lw.maxdiff_loss(h, y).backward()
    with torch.no_grad():
        h -= 0.1 * h.grad
    assert cos(h).item() < before


# -- Kullback-Leibler ------------------------------------------------------------------

def test_kl_zero_for_identical_and_grows_with_separation():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, 4, generator=g)
    y = torch.tensor([0] * 50 + [1] * 50)
    same = torch.cat([base, base])
    assert lw.gaussian_kl(same, y).item() == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 0, 0, 0])
    kls = [lw.gaussian_kl(torch.cat([base, base + s * shift]), y).item() for s in (0.5, 1, 2, 4)]
    assert kls == sorted(kls) and kls[0] > 0
    # scaling the features does not change the estimate
    z = torch.cat([base, base + shift])
    assert lw.gaussian_kl(10 * z, y).item() == pytest.approx(lw.gaussian_kl(z, y).item(), rel=1e-4)


def test_kl_matches_torch_distributions():
    """Reference: KL of the two Gaussians built from the same estimated means and covariance."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(60, 3, generator=g) @ torch.tensor([[1.0, 0.3, 0], [0, 1, 0.2], [0, 0, 0.5]])
    y = torch.tensor([0] * 20 + [1] * 20 + [2] * 20)
    z = z + torch.tensor([[0.0, 0, 0]] * 20 + [[1.0, 0, 0]] * 20 + [[0, 2.0, 0]] * 20)
    mus = [z[y == c].mean(0) for c in range(3)]
    centred = torch.cat([z[y == c] - mus[c] for c in range(3)])
    cov = centred.T @ centred / (60 - 3)
    cov = cov + 1e-3 * cov.trace() / 3 * torch.eye(3) + 1e-8 * torch.eye(3)
    normal = [torch.distributions.MultivariateNormal(m, cov) for m in mus]
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    expected = sum(torch.distributions.kl_divergence(normal[a], normal[b]) for a, b in pairs) / 6
    assert lw.gaussian_kl(z, y).item() == pytest.approx(expected.item(), rel=1e-4)


# -- smoke runs ------------------------------------------------------------------------

def test_every_strategy_runs_and_writes_its_files(tiny_data, tmp_path):
    out = tmp_path / "all"
    result = run_script(SCRIPT, "--dataset", "mnist", "--data-dir", tiny_data, "--threads", "1",
                        "--model", "lenet", "--seconds", "0.6", "--eval-seconds", "0.25",
                        "--out", out, "--plot")
    assert result.returncode == 0, result.stderr
    config, summary, rows = read_run(out)
    assert summary["status"] == "completed"
    assert list(summary["test_accuracy"]) == list(lw.STRATEGIES)
    assert all(0.0 <= a <= 1.0 for a in summary["test_accuracy"].values())
    assert set(summary["time_to_target"]) == set(lw.STRATEGIES)
    for name in ("loss_vs_time.png", "accuracy_vs_time.png", "curves.png", "config.json"):
        assert (out / name).stat().st_size > 0
    for strategy in lw.STRATEGIES:
        points = [r for r in rows if r["strategy"] == strategy]
        assert points[-1]["stage"] == "final (full test set)"
        seconds = [float(r["strategy_seconds"]) for r in points]
        # the last point comes after the budget, at most one (possibly slow) step later
        assert seconds == sorted(seconds) and 0.6 <= seconds[-1] < 10
    assert any(r["local_loss/4"] for r in rows if r["strategy"] == "decoupled")
    assert "t90% s (x bp)" in result.stdout and "decoupled block 4: local loss" in result.stdout


def test_step_budget_layer_split_and_finetune(tiny_data, tmp_path):
    out = tmp_path / "steps"
    result = run_script(SCRIPT, "--dataset", "mnist", "--data-dir", tiny_data, "--threads", "1",
                        "--model", "mlp", "--strategy", "backprop", "submodel",
                        "--iterations", "12", "--layer-budget", "1", "1", "2",
                        "--eval-every", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    _, summary, rows = read_run(out)
    assert summary["steps"] == {"backprop": 12, "submodel": 12}
    assert summary["stage_ends"] == [3, 6, 12]
    stages = [r["stage"] for r in rows if r["strategy"] == "submodel"]
    assert stages[:4] == ["block 1", "block 2", "block 3", "block 3"]  # steps 3, 6, 9, 12

    out = tmp_path / "ft"
    result = run_script(SCRIPT, "--dataset", "mnist", "--data-dir", tiny_data, "--threads", "1",
                        "--model", "lenet", "--strategy", "staged", "--seconds", "1.5",
                        "--finetune-seconds", "0.7", "--eval-every", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    _, summary, rows = read_run(out)
    assert list(summary["test_accuracy"]) == ["staged+ft0.7"]
    stages = [r["stage"] for r in rows]
    assert "before finetune" in stages and stages.index("before finetune") < len(stages) - 2
    finetune = [float(r["strategy_seconds"]) for r in rows if r["stage"] == "finetune"]
    assert finetune and all(t >= 0.8 for t in finetune)  # after the local 1.5 - 0.7 s


# -- bad flags -------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--strategy", "backprop", "greedy"], "invalid choice: 'greedy'"),
    (["--model", "vgg"], "invalid choice: 'vgg'"),
    (["--seconds", "0"], "--seconds: expected a positive number, got 0"),
    (["--seconds", "-3"], "--seconds: expected a positive number"),
    (["--epochs", "0"], "--epochs: expected a positive number"),
    (["--layer-budget", "1", "0", "1"], "--layer-budget: expected a positive number, got 0"),
    (["--layer-budget", "1", "2"], "tfcnn has 3 blocks, got 2 weights"),
    (["--finetune-seconds", "60"], "leaves nothing of --seconds 60"),
    (["--epochs", "1", "--iterations", "5"], "--epochs and --iterations both set"),
    (["--strategy", "maxdiff", "--batch-size", "2"], "use at least 4"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        lw.main(["--out", str(tmp_path), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_flag_from_the_command_line(tmp_path):
    result = run_script(SCRIPT, "--strategy", "all", "sgd", "--out", tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'sgd'" in result.stderr and "Traceback" not in result.stderr
