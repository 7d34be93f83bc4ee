"""layerwise_demo.py: the local losses against references, block isolation, the
caches' shared memory budget, a smoke run of every strategy, and bad flags."""
import types

import pytest
import torch
import torch.nn.functional as F

import layerwise_demo as lw
from common.data import LazyCache, MemoryBudget
from common.race_curve import RaceCurve
from common.run_folder import Run
from conftest import read_run, run_script

SCRIPT = "layerwise_demo.py"


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
    args = lw.build_parser().parse_args(["--out", str(tmp_path), "--model", "mlp"])
    data = toy_data()
    net = lw.layerwise_net("mlp", 10, (1, 28, 28), seed=0, staged=strategy == "staged")
    before_blocks, before_heads = snapshot(net.blocks), snapshot(net.heads)
    race = types.SimpleNamespace(data=data, args=args, stage_ends=[0, 3, 3])
    with Run(args, "layerwise_demo", torch.device("cpu")) as run:
        curve = RaceCurve(run, strategy, (data.test_x, data.test_y), 100, budget_steps=True,
                          every_steps=1000, kind="strategy")
        batches = iter(lw.Batches(torch.arange(100), data.train_y, 20, 0))
        lw.train_greedy(strategy, net, curve, batches, race)
    assert curve.steps == 3
    assert changed(before_blocks, net.blocks) == [False, True, False]
    assert changed(before_heads, net.heads) == [False, True, False]


def test_decoupled_loss_reaches_only_its_block():
    net = lw.layerwise_net("lenet", 10, (1, 28, 28), seed=0)
    blocks, heads = net.blocks, net.heads
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


# -- similarity matching (sim, predsim) ----------------------------------------------

def test_similarity_of_labels_and_of_conv_outputs():
    # one-hot rows centred: cos = 1 for equal labels, -1/(C - 1) for different ones
    y = torch.tensor([0, 1, 0, 3])
    S = lw.similarity(F.one_hot(y, 4).float())
    expected = torch.tensor([[1, -1 / 3, 1, -1 / 3], [-1 / 3, 1, -1 / 3, -1 / 3],
                             [1, -1 / 3, 1, -1 / 3], [-1 / 3, -1 / 3, -1 / 3, 1]])
    torch.testing.assert_close(S, expected)
    # a conv output (n, c, h, w) is compared by its channels' spread over the positions
    h = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(lw.similarity(h), lw.similarity(h.flatten(2).std(2)))
    assert not torch.allclose(lw.similarity(h), lw.similarity(h.flatten(1)))


def test_sim_loss_zero_when_the_block_output_is_the_labels():
    y = torch.arange(6) % 3
    identity = torch.nn.ModuleList([torch.nn.Identity()])
    head = torch.nn.ModuleList([torch.nn.Linear(3, 3)])
    x = F.one_hot(y, 3).float() * 5 + 2   # any scale and offset: S is centred and normalised
    [(loss, logits)] = lw.decoupled_losses(identity, head, x, y, "sim")
    readout = F.cross_entropy(logits, y)
    assert (loss - readout).abs() < 1e-6   # the sim part is zero, the readout's CE remains
    [(loss, _)] = lw.decoupled_losses(identity, head, x, y, "predsim", beta=1.0)
    assert loss.abs() < 1e-6


@pytest.mark.parametrize("strategy", ["sim", "predsim"])
def test_sim_losses_reach_only_their_block(strategy):
    net = lw.layerwise_net("lenet", 10, (1, 28, 28), seed=0)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    losses = lw.decoupled_losses(net.blocks, net.heads, x, y, strategy, beta=0.9)
    losses[1][0].backward()
    grads = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
             for m in net.parts()]
    assert grads == [False, True, False, False] + [False, True, False, False]
    # Reference on a frozen block 1's output: sim moves the block by the similarity alone
    # (its head reads a detached copy), predsim by (1 - beta) CE + beta sim through both.
    got = [p.grad.clone() for p in net.blocks[1].parameters()]
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        h = net.blocks[0](x)
    h = net.blocks[1](h)
    sim = ((lw.similarity(h) - lw.similarity(F.one_hot(y, 10).float())) ** 2).mean()
    (sim if strategy == "sim" else 0.1 * F.cross_entropy(net.heads[1](h), y) + 0.9 * sim).backward()
    for g, p in zip(got, net.blocks[1].parameters()):
        torch.testing.assert_close(g, p.grad)


def test_truncated_network_is_the_first_blocks_and_their_head():
    full = lw.layerwise_net("tfcnn", 10, (1, 28, 28), seed=0)
    two = lw.layerwise_net("tfcnn", 10, (1, 28, 28), seed=0, keep=2)
    assert len(two.blocks) == len(two.heads) == 2
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(two.eval()(x), full.heads[1](full.blocks[1](full.blocks[0](x))))


# -- the local-loss paper's blocks: projection, losses before pooling, zero heads -----

def by_hand_similarity(v):
    """S by its formula: rows centred, scaled to unit length, all their dot products."""
    v = v - v.mean(1, keepdim=True)
    v = v / v.norm(dim=1, keepdim=True)
    return v @ v.T


def test_paper_sim_reads_the_projection_before_pooling():
    """tfcnn with --norm batch --local-before-pool --sim-projection, block 1 written out:
    a = relu(bn(conv(x))) before the max-pool; sim_1 = mean (S(P a) - S(Y))^2, S of a conv
    output on each channel's std over positions; head 1 reads avgpool_(4,2)(a); block 2 reads
    maxpool(a)."""
    net = lw.layerwise_net("tfcnn", 10, (1, 28, 28), seed=0, norm="batch", before_pool=True,
                           projection=True).eval()   # eval: BatchNorm's fixed statistics, no dropout
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    conv, bn = net.blocks[0][0], net.blocks[0][1]
    a = torch.relu(F.batch_norm(F.conv2d(x, conv.weight, conv.bias, padding=2), bn.running_mean,
                                bn.running_var, bn.weight, bn.bias))
    p = F.conv2d(a, net.projections[0].weight, padding=1)
    target = by_hand_similarity(F.one_hot(y, 10).float())
    sim = ((by_hand_similarity(p.flatten(2).std(2)) - target) ** 2).mean()
    linear = net.heads[0][-1]
    logits = F.avg_pool2d(a, (4, 2)).flatten(1) @ linear.weight.T + linear.bias
    losses = lw.decoupled_losses(net.blocks, net.heads, x, y, "predsim", 0.99, net.projections, True)
    torch.testing.assert_close(losses[0][1], logits)
    torch.testing.assert_close(losses[0][0], 0.01 * F.cross_entropy(logits, y) + 0.99 * sim)
    # block 2 goes on from the pooled a, as the whole network does
    b = net.blocks[1][:3](F.max_pool2d(a, 2))
    torch.testing.assert_close(losses[1][1], net.heads[1](b))
    # sim: the same similarity, its readout beside it on sg(a)
    [first, *_] = lw.decoupled_losses(net.blocks, net.heads, x, y, "sim", 0.99, net.projections, True)
    torch.testing.assert_close(first[0], F.cross_entropy(logits, y) + sim)


def test_paper_dense_projection_and_the_output_layer_after_dropout():
    """mlp, one block kept, leaky ReLU, dropout: sim_1 = mean (S(a W_p^T) - S(Y))^2 with a before
    the dropout; the last head, G_K, reads the block's output after it (in training mode)."""
    net = lw.layerwise_net("mlp", 10, (1, 28, 28), seed=0, keep=1, nonlin="leakyrelu", dropout=0.5,
                           before_pool=True, projection=True)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    linear = net.blocks[0][1]
    z = x.flatten(1) @ linear.weight.T + linear.bias
    a = torch.where(z > 0, z, 0.01 * z)
    sim = ((by_hand_similarity(a @ net.projections[0].weight.T)
            - by_hand_similarity(F.one_hot(y, 10).float())) ** 2).mean()
    torch.manual_seed(5)
    [(loss, logits)] = lw.decoupled_losses(net.blocks, net.heads, x, y, "sim", 0.99, net.projections, True)
    torch.manual_seed(5)
    dropped = F.dropout(a, 0.5)   # the same mask: the same random draws
    head = net.heads[0][-1]
    assert 0 < (dropped == 0).float().mean() < 1   # a real mask
    torch.testing.assert_close(logits, dropped @ head.weight.T + head.bias)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y) + sim)


@pytest.mark.parametrize("strategy", ["sim", "predsim"])
def test_paper_losses_reach_only_their_block_and_projection(strategy):
    net = lw.layerwise_net("tfcnn", 10, (1, 28, 28), seed=0, norm="batch", before_pool=True,
                           projection=True, zero_heads=True)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    losses = lw.decoupled_losses(net.blocks, net.heads, x, y, strategy, 0.9, net.projections, True)
    losses[1][0].backward()
    grads = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
             for m in [*net.parts(), *net.projections]]
    # block 2, its head (sim: its readout's own CE) and its projection; nothing else
    assert grads == [False, True, False] + [False, True, False] + [False, True, False]


def test_output_apart_gives_the_last_block_its_own_head_and_trains_the_output_on_its_detached_output():
    """The local-loss code's layout: the same network (same weights, same outputs), one head more
    (for B_K, at zero), and the output layer's predsim loss reaches the output layer only."""
    plain = lw.layerwise_net("mlp", 10, (1, 28, 28), seed=0, norm="batch", zero_heads=True)
    apart = lw.layerwise_net("mlp", 10, (1, 28, 28), seed=0, norm="batch", zero_heads=True, output_apart=True)
    assert len(apart.blocks) == len(plain.blocks) + 1 == 4 and len(list(apart.blocks[-1].parameters())) == 0
    for mine, theirs in zip([*plain.blocks, *plain.heads[:-1]], [*apart.blocks[:3], *apart.heads[:2]]):
        assert all(torch.equal(p, q) for p, q in zip(mine.parameters(), theirs.parameters()))
    assert apart.heads[-1] is not apart.heads[-2] and torch.equal(apart.heads[-1].bias, plain.heads[-1].bias)
    assert not apart.heads[2][-1].weight.any()   # B_3's own head, at zero
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    plain.eval(), apart.eval()
    torch.testing.assert_close(apart(x), plain(x))
    apart.train()
    losses = lw.decoupled_losses(apart.blocks, apart.heads, x, y, "predsim", 0.99)
    (0.01 * F.cross_entropy(apart.heads[-1](apart.blocks[2](apart.blocks[1](apart.blocks[0](x)))), y)
     ).backward()   # what the output layer's loss should be: nothing from it reaches the blocks
    expected = apart.heads[-1].weight.grad.clone()
    apart.zero_grad()
    losses[3][0].backward()
    assert not any(p.grad is not None and p.grad.any() for p in apart.blocks.parameters())
    torch.testing.assert_close(apart.heads[-1].weight.grad, expected)


@pytest.mark.parametrize("strategy", ["backprop", "predsim"])
def test_the_learning_rate_steps_down_at_fractions_of_the_budget(tmp_path, monkeypatch, strategy):
    """Budget 8 steps, --lr-decay-at 0.5 0.75, factor 0.25: steps 0-3 at lr, 4-5 at lr/4, 6-7 at lr/16."""
    args = lw.build_parser().parse_args(["--out", str(tmp_path), "--model", "mlp", "--lr-decay-at", "0.5", "0.75"])
    data, seen, make_optimizer = toy_data(), [], lw.make_optimizer

    def watched(*given, **options):
        optimizer = make_optimizer(*given, **options)
        optimizer.register_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
        return optimizer
    monkeypatch.setattr(lw, "make_optimizer", watched)
    race = types.SimpleNamespace(data=data, args=args, total=8, stage_ends=[8, 8, 8])
    net = lw.layerwise_net("mlp", 10, (1, 28, 28), seed=0)
    with Run(args, "layerwise_demo", torch.device("cpu")) as run:
        curve = RaceCurve(run, strategy, (data.test_x, data.test_y), 100, budget_steps=True,
                          every_steps=1000, kind="strategy")
        batches = iter(lw.Batches(data.train_x, data.train_y, 20, 0))
        if strategy == "backprop":
            lw.train_end_to_end(net, curve, batches, watched(net.parameters(), "adam", 1e-3), 8, race)
        else:
            lw.train_decoupled(strategy, net, curve, batches, race)
    assert seen == pytest.approx([1e-3] * 4 + [2.5e-4] * 2 + [6.25e-5] * 2, rel=1e-12)


# -- the paper's augmentation ----------------------------------------------------------

def test_crop_flip_by_hand():
    """A 2x2 image [[1, 2], [3, 4]] padded by one 0 on each side, cropped from (top, left),
    mirrored where asked."""
    from common.augment import crop_flip
    x = torch.tensor([[1.0, 2], [3, 4]]).expand(5, 1, 2, 2)
    top, left = torch.tensor([0, 2, 1, 1, 0]), torch.tensor([0, 2, 1, 1, 1])
    flip = torch.tensor([False, False, False, True, True])
    expected = torch.tensor([[[0, 0], [0, 1]], [[4, 0], [0, 0]], [[1, 2], [3, 4]], [[2, 1], [4, 3]],
                             [[0, 0], [2, 1]]], dtype=torch.float)
    torch.testing.assert_close(crop_flip(x, top, left, flip, pad=1)[:, 0], expected)
    # channels move together; the pad value is `fill`
    two = torch.stack([x[0, 0], 10 * x[0, 0]])[None]
    out = crop_flip(two, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), pad=1, fill=-5.0)
    torch.testing.assert_close(out[0], torch.tensor([[[-5.0, -5], [-5, 1]], [[-5, -5], [-5, 10]]]))


def test_random_crop_flip_is_torchvisions_crop_then_flip():
    """Reference: torchvision's functional pad, crop and hflip, one image at a time, with the draws
    the same seeded generator gives."""
    import torchvision.transforms.functional as TF
    from common.augment import crop_flip_batches, random_crop_flip
    x = torch.randn(16, 1, 28, 28)
    out = random_crop_flip(x, torch.Generator().manual_seed(7), pad=2, fill=-0.8)
    g = torch.Generator().manual_seed(7)
    top, left = torch.randint(0, 5, (2, 16), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    assert 0 < flip.sum() < 16 and len(set(top.tolist())) > 1
    for i in range(16):
        ref = TF.crop(TF.pad(x[i], [2], fill=-0.8), int(top[i]), int(left[i]), 28, 28)
        torch.testing.assert_close(out[i], TF.hflip(ref) if flip[i] else ref)
    # wrapped around a batch stream: the same labels in the same order
    ys = [torch.arange(4) + k for k in range(3)]
    served = list(crop_flip_batches(iter([(x[:4], y) for y in ys]), 0, fill=0.0))
    assert [torch.equal(y, got) for (_, got), y in zip(served, ys)] == [True] * 3


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


def test_kl_estimates_the_kl_of_known_gaussians():
    """Reference: the closed-form KL of the Gaussians the samples are drawn from,
    N(mu_c, S) with known means and one known covariance S, by torch.distributions."""
    g = torch.Generator().manual_seed(1)
    mus = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0.5]])
    root = torch.tensor([[1.0, 0, 0], [0.3, 1, 0], [0, 0.2, 0.5]])   # S = root root^T
    n = 20000
    y = torch.arange(3).repeat_interleave(n)
    z = mus[y] + torch.randn(3 * n, 3, generator=g) @ root.T
    true = [torch.distributions.MultivariateNormal(m, scale_tril=root) for m in mus]
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    expected = sum(torch.distributions.kl_divergence(true[a], true[b]) for a, b in pairs) / 6
    assert lw.gaussian_kl(z, y).item() == pytest.approx(expected.item(), rel=0.02)
    # closed form for one pair, by hand: 1/2 (mu_a - mu_b)^T S^-1 (mu_a - mu_b)
    diff = mus[2] - mus[0]
    by_hand = 0.5 * diff @ torch.linalg.solve(root @ root.T, diff)
    assert torch.distributions.kl_divergence(true[2], true[0]).item() == pytest.approx(by_hand.item())


# -- the caches --------------------------------------------------------------------------

def test_caches_share_one_memory_budget():
    """--cache-gb is a total: a second cache that does not fit in what is left recomputes."""
    table = torch.arange(40.0).reshape(10, 4)
    computed = {"first": 0, "second": 0}

    def rows_of(name):
        def fn(index):
            computed[name] += len(index)
            return table[index]
        return fn

    row_bytes = 4 * 4 + 1  # four float32 and the filled flag
    budget = MemoryBudget(15 * row_bytes)
    first = LazyCache(rows_of("first"), 10, budget, "cpu")
    second = LazyCache(rows_of("second"), 10, budget, "cpu")  # 10 rows do not fit in 5
    assert first.store is not None and second.store is None and budget.used == 10 * row_bytes
    computed.update(first=0, second=0)
    index = torch.tensor([1, 3, 7])
    for _ in range(2):
        assert torch.equal(first(index), table[index]) and torch.equal(second(index), table[index])
    assert computed == {"first": 3, "second": 6}  # kept once, against recomputed every time


# -- smoke runs ------------------------------------------------------------------------

def test_every_strategy_runs_and_writes_its_files(tiny_data, tmp_path):
    out = tmp_path / "all"
    result = run_script(SCRIPT, "--dataset", "mnist", "--data-dir", tiny_data, "--threads", "1",
                        "--model", "lenet", "--seconds", "0.6", "--eval-seconds", "0.25",
                        "--eval-size", "50", "--out", out, "--plot")
    assert result.returncode == 0, result.stderr
    config, summary, rows = read_run(out)
    assert summary["status"] == "completed"
    assert list(summary["test_accuracy"]) == list(lw.STRATEGIES)
    assert all(0.0 <= a <= 1.0 for a in summary["test_accuracy"].values())
    # --plot draws the two race figures against the strategies' own clocks, and no curves.png
    assert sorted(p.name for p in out.glob("*.png")) == ["accuracy_vs_time.png", "loss_vs_time.png"]
    assert summary["results"]["figures"] == ["accuracy_vs_time.png", "loss_vs_time.png"]
    assert summary["results"]["baseline"] == "backprop"
    assert [r["name"] for r in summary["results"]["rows"]] == list(lw.STRATEGIES)
    timed = summary["time_to_target"]
    assert timed["fraction"] == 0.95
    assert [p["method"] for p in timed["pairs"]] == list(lw.STRATEGIES[1:])
    assert all(p["target"] == round(0.95 * summary["test_accuracy"]["backprop"], 5)
               for p in timed["pairs"])
    for strategy in lw.STRATEGIES:
        points = [r for r in rows if r["strategy"] == strategy]
        final = points[-1]
        assert final["stage"] == lw.FINAL and final["eval_examples"] == "200"
        assert float(final["test_accuracy"]) == summary["test_accuracy"][strategy]
        curve = points[:-1]
        assert curve and all(r["eval_examples"] == "50" for r in curve)
        # best: the curve points only, not the final accuracy on the other test set
        assert final[f"acc/{strategy}"] == ""
        best = max(float(r[f"acc/{strategy}"]) for r in curve)
        assert summary["best_test_accuracy"][strategy] == pytest.approx(best, abs=1e-5)
        seconds = [float(r["strategy_seconds"]) for r in points]
        # the last point comes after the budget, at most one (possibly slow) step later
        assert seconds == sorted(seconds) and 0.6 <= seconds[-1] < 10
    assert any(r["local_loss/4"] for r in rows if r["strategy"] == "decoupled")
    assert "best point" in result.stdout and "all 200 test images" in result.stdout


def test_step_budget_layer_split_and_finetune(tiny_data, tmp_path):
    out = tmp_path / "steps"   # in this process: a subprocess would spend its time importing torch
    lw.main(["--dataset", "mnist", "--data-dir", str(tiny_data), "--model", "mlp", "--strategy", "backprop",
             "submodel", "--iterations", "12", "--layer-budget", "1", "1", "2", "--eval-every", "3",
             "--out", str(out)])
    _, summary, rows = read_run(out)
    assert summary["steps"] == {"backprop": 12, "submodel": 12}
    assert summary["stage_ends"] == [3, 6, 12]
    assert not list(out.glob("*.png")) and summary["results"]["figures"] == []  # no --plot
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


def test_the_papers_recipe_and_blocks_run(tiny_data, tmp_path):
    """The documented MLP recipe, scaled down to a few steps; then tfcnn with the paper's
    blocks under every kind of strategy (BatchNorm in frozen, cached and fine-tuned blocks)."""
    out = tmp_path / "recipe"   # in this process: a subprocess would spend its time importing torch
    lw.main(["--dataset", "mnist", "--data-dir", str(tiny_data),
             "--model", "mlp", "--strategy", "backprop", "sim", "predsim", "--norm", "batch",
             "--dropout", "0.025", "--sim-nonlin", "leakyrelu", "--sim-projection",
             "--local-before-pool", "--zero-heads", "--lr", "5e-4", "--batch-size", "128",
             "--augment", "--epochs", "2", "--eval-every", "4",
             "--lr-decay-at", "0.5", "0.75", "0.875", "0.94", "--out", str(out)])
    config, summary, _ = read_run(out)
    assert summary["status"] == "completed" and summary["steps"] == {"backprop": 9, "sim": 9, "predsim": 9}
    assert config["norm"] == "batch" and config["lr_decay_at"] == [0.5, 0.75, 0.875, 0.94]
    out = tmp_path / "tfcnn"
    lw.main(["--dataset", "mnist", "--data-dir", str(tiny_data),
             "--model", "tfcnn", "--norm", "batch", "--local-before-pool", "--sim-projection",
             "--zero-heads", "--strategy", "decoupled", "sim", "staged", "--iterations", "3",
             "--batch-size", "16", "--eval-every", "3", "--eval-size", "40", "--out", str(out)])
    _, summary, _ = read_run(out)
    assert all(0 <= a <= 1 for a in summary["test_accuracy"].values()) and len(summary["test_accuracy"]) == 3


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
    (["--eval-every", "5", "--eval-seconds", "2"], "--eval-every and --eval-seconds both set"),
    (["--strategy", "maxdiff", "--batch-size", "2"], "use at least 4"),
    (["--blocks", "4"], "--blocks 4: truncates tfcnn (3 blocks)"),
    (["--blocks", "2", "--strategy", "backprop", "staged"], "for --strategy backprop/backprop-sgd only"),
    (["--predsim-beta", "1.5"], "--predsim-beta: expected a number in [0, 1], got 1.5"),
    (["--norm", "layer"], "invalid choice: 'layer'"),
    (["--dropout", "2"], "--dropout: expected a number in [0, 1], got 2"),
    (["--lr-decay-at", "1.5"], "--lr-decay-at: expected a number in [0, 1], got 1.5"),
    (["--augment"], "--augment/--lr-decay-at: the greedy strategies"),   # --strategy all has them
    (["--lr-decay-at", "0.5", "--strategy", "backprop", "submodel"], "drop them from --strategy"),
    (["--model", "lenet", "--sim-nonlin", "leakyrelu"], "lenet has its scaled tanh and no dropout"),
    (["--model", "lenet", "--dropout", "0"], "lenet has its scaled tanh and no dropout"),
    (["--norm", "batch", "--batch-size", "1", "--strategy", "backprop"], "BatchNorm needs two examples"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        lw.main(["--out", str(tmp_path), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_refused_run_exits_2_and_creates_nothing(tmp_path):
    out = tmp_path / "X"
    result = run_script(SCRIPT, "--epochs", "1", "--iterations", "5", "--out", out)
    assert result.returncode == 2
    assert "--epochs and --iterations both set" in result.stderr
    assert result.stderr.count("\n") == 1 and not out.exists()


def test_bad_flag_from_the_command_line(tmp_path):
    result = run_script(SCRIPT, "--strategy", "all", "sgd", "--out", tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'sgd'" in result.stderr and "Traceback" not in result.stderr
