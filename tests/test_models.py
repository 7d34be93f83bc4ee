"""common.models: StackedMLP against the trusted reference, n separate plain MLPs; the
layer-wise networks' options (BatchNorm, LeakyReLU, dropout, the local-loss code's head
pooling, projections, zero heads) and the step decay, against hand-worked values."""
import bisect

import pytest
import torch
from torch import nn

from common.layerwise_models import BLOCK_MODELS, ScaledTanh, decoder_pool, layerwise_net, split_tail
from common.models import StackedMLP, decay_lr
from conftest import member_as_mlp

# (sizes, own_input): x only (the students), x and z (the teachers), z only (logits, classrooms)
SHAPES = [([20, 16, 12, 8], 0), ([20, 16, 12, 8], 5), ([20, 16, 8], 20), ([7, 4], 3)]


def inputs(stacked, batch=6):
    x = torch.randn(batch, stacked.shared_input) if stacked.shared_input else None
    z = torch.randn(stacked.n, batch, stacked.own_input) if stacked.own_input else None
    return x, z


def concat(x, z, i):
    return torch.cat([t for t in (x, None if z is None else z[i]) if t is not None], 1)


@pytest.mark.parametrize("sizes,own_input", SHAPES)
@pytest.mark.parametrize("activate_output", [False, True])
def test_every_member_is_the_plain_mlp_it_stands_for(sizes, own_input, activate_output):
    torch.manual_seed(0)
    stacked = StackedMLP(3, sizes, own_input=own_input, activate_output=activate_output)
    x, z = inputs(stacked)
    together = stacked(x, z)
    assert together.shape == (3, 6, sizes[-1])
    for i in range(3):
        reference = member_as_mlp(stacked, i)(concat(x, z, i))
        torch.testing.assert_close(together[i], reference)
        torch.testing.assert_close(stacked(x, None if z is None else z[i], member=i), reference)


@pytest.mark.parametrize("sizes,own_input", SHAPES)
def test_batched_gradients_are_the_sum_of_the_members_gradients(sizes, own_input):
    torch.manual_seed(1)
    stacked = StackedMLP(3, sizes, own_input=own_input, activate_output=True)
    x, z = inputs(stacked)
    weights = torch.randn(3, 6, sizes[-1])  # a different loss per member
    (stacked(x, z) * weights).sum().backward()
    batched = [p.grad.clone() for p in stacked.parameters()]
    stacked.zero_grad()
    sum((stacked(x, None if z is None else z[i], member=i) * weights[i]).sum()
        for i in range(3)).backward()
    for got, expected in zip(batched, (p.grad for p in stacked.parameters())):
        torch.testing.assert_close(got, expected)


def test_a_member_reads_only_its_own_slice():
    """NaN in every other member's parameters, in both paths: member 1 stays finite and unchanged."""
    torch.manual_seed(2)
    stacked = StackedMLP(3, [20, 16, 12, 8], own_input=5)
    x, z = inputs(stacked)
    with torch.no_grad():
        alone, together = stacked(x, z[1], member=1), stacked(x, z)[1]
        for p in stacked.parameters():
            p[0] = float("nan")
            p[2] = float("nan")
        poisoned = stacked(x, z)
        torch.testing.assert_close(stacked(x, z[1], member=1), alone, rtol=0, atol=0)
    torch.testing.assert_close(poisoned[1], together, rtol=0, atol=0)
    assert torch.isnan(poisoned[0]).all() and torch.isnan(poisoned[2]).all()  # the poison is live


def test_inits_follow_the_originals_and_torch():
    torch.manual_seed(3)
    tf = StackedMLP(4, [784, 512, 10], own_input=128, init="tf")
    weights = [tf.first_shared, tf.first_own, *tf.weights]
    assert all(w.abs().max() <= 0.2 and 0.08 < w.std() < 0.1 for w in weights)  # truncated at 2 std
    assert all(torch.equal(b, torch.full_like(b, 0.1)) for b in tf.biases)
    default = StackedMLP(4, [784, 512, 10], own_input=128)
    for weight, bias, fan_in in [(default.first_shared, default.biases[0], 784),
                                 (default.weights[0], default.biases[1], 512)]:
        bound = fan_in ** -0.5  # nn.Linear's uniform bound, over the whole concatenated input
        assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
        assert bias.abs().max() <= bound


@pytest.mark.parametrize("n,sizes,own_input", [(0, [4, 2], 0), (2, [4], 0), (2, [4, 0], 0),
                                               (2, [4, 2], 5)])
def test_bad_shapes_are_refused(n, sizes, own_input):
    with pytest.raises(ValueError, match="StackedMLP needs"):
        StackedMLP(n, sizes, own_input=own_input)


# -- the layer-wise networks' options: BatchNorm, LeakyReLU, dropout, the paper's head pooling

NORMED = (nn.BatchNorm1d, nn.BatchNorm2d)


@pytest.mark.parametrize("name, widths, extra", [
    ("tfcnn", [32, 64, 1024], 2 * (32 + 64 + 1024)),      # a scale and a shift per channel or unit
    ("lenet", [6, 16, 120, 84], 2 * (6 + 16 + 120 + 84)),
    ("mlp", [1024] * 3, 2 * 3 * 1024)])
def test_batchnorm_sits_between_each_layer_and_its_nonlinearity(name, widths, extra):
    plain, normed = BLOCK_MODELS[name](), BLOCK_MODELS[name](norm="batch")
    for block, width in zip(normed[:-1], widths):
        i = next(i for i, m in enumerate(block) if isinstance(m, NORMED))
        assert isinstance(block[i - 1], (nn.Conv2d, nn.Linear)) and block[i].num_features == width
        assert isinstance(block[i + 1], (nn.ReLU, ScaledTanh))
    assert not isinstance(normed[-1], nn.Sequential)  # the output layer: no BatchNorm
    assert sum(p.numel() for p in normed.parameters()) - sum(p.numel() for p in plain.parameters()) == extra
    assert not any(isinstance(m, NORMED) for m in plain.modules())


def test_same_seed_same_weights_with_or_without_batchnorm_and_projections():
    plain = layerwise_net("tfcnn", 10, (1, 28, 28), seed=3)
    paper = layerwise_net("tfcnn", 10, (1, 28, 28), seed=3, norm="batch", projection=True)
    weights = lambda net: [m.weight for part in net.parts() for m in part.modules()
                           if isinstance(m, (nn.Conv2d, nn.Linear))]
    for a, b in zip(weights(plain), weights(paper), strict=True):
        assert torch.equal(a, b)
    # building ran the blocks for the heads' sizes, in eval mode: BatchNorm has seen nothing
    bn = paper.blocks[0][1]
    assert torch.equal(bn.running_mean, torch.zeros(32)) and bn.num_batches_tracked == 0


def test_batchnorm_block_by_hand():
    """mlp block 1 in training mode: relu((x W^T + b - mean_batch) / sqrt(var_batch + 1e-5))."""
    torch.manual_seed(0)
    block = BLOCK_MODELS["mlp"](norm="batch")[0]
    x = torch.randn(6, 1, 28, 28)
    linear = block[1]
    z = x.flatten(1) @ linear.weight.T + linear.bias
    mean, var = z.mean(0), z.var(0, unbiased=False)
    torch.testing.assert_close(block(x), torch.relu((z - mean) / torch.sqrt(var + 1e-5)))


def test_leaky_relu_and_dropout_where_asked():
    torch.manual_seed(0)
    layers = BLOCK_MODELS["mlp"](nonlin="leakyrelu", dropout=0.025)
    for block in layers[:-1]:
        assert isinstance(block[-2], nn.LeakyReLU) and block[-2].negative_slope == 0.01
        assert isinstance(block[-1], nn.Dropout) and block[-1].p == 0.025
    x = torch.randn(4, 1, 28, 28)
    z = x.flatten(1) @ layers[0][1].weight.T + layers[0][1].bias
    torch.testing.assert_close(layers[0].eval()(x), torch.where(z > 0, z, 0.01 * z))  # eval: no dropout
    assert BLOCK_MODELS["tfcnn"](dropout=0.1)[2][-1].p == 0.1 and BLOCK_MODELS["tfcnn"]()[2][-1].p == 0.4
    assert not any(isinstance(m, nn.Dropout) for m in BLOCK_MODELS["mlp"]().modules())  # default: none


def test_split_tail_cuts_before_pooling_and_dropout():
    tfcnn = BLOCK_MODELS["tfcnn"](norm="batch")
    body, tail = split_tail(tfcnn[0])
    assert [type(m) for m in body] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and [type(m) for m in tail] == [nn.MaxPool2d]
    body, tail = split_tail(tfcnn[2])
    assert [type(m) for m in body] == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert [type(m) for m in tail] == [nn.Dropout]
    body, tail = split_tail(BLOCK_MODELS["mlp"]()[1])     # no dropout by default: nothing to cut
    assert [type(m) for m in body] == [nn.Linear, nn.ReLU] and len(tail) == 0
    x = torch.randn(3, 1, 28, 28)
    body, tail = split_tail(tfcnn[0])
    torch.testing.assert_close(tail(body(x)), tfcnn[0](x))


@pytest.mark.parametrize("channels, size, kernel, features", [
    # the local-loss code's rule, worked by hand: halve the height, then the width, until <= 4096
    (32, 28, (4, 2), 32 * 7 * 14),    # 25088 -> 32x14x28 12544 -> 32x14x14 6272 -> 32x7x14 3136
    (64, 14, (2, 2), 64 * 7 * 7),     # 12544 -> 64x7x14 6272 -> 64x7x7 3136
    (6, 28, (2, 1), 6 * 14 * 28),     # 4704 -> 6x14x28 2352
    (16, 10, None, 16 * 10 * 10)])    # 1600: no pooling
def test_decoder_pool_follows_the_local_loss_code(channels, size, kernel, features):
    pool = decoder_pool(channels, size)
    assert (pool[0].kernel_size if pool else None) == kernel
    assert nn.Sequential(*pool)(torch.zeros(1, channels, size, size)).numel() == features


def test_heads_before_pooling_and_zero_initialised():
    net = layerwise_net("tfcnn", 10, (1, 28, 28), seed=0, before_pool=True, zero_heads=True)
    assert [head[-1].in_features for head in net.heads[:-1]] == [3136, 3136]
    for head in net.heads:
        linear = head if isinstance(head, nn.Linear) else head[-1]
        assert not linear.weight.any() and linear.bias.any()   # weights zero, biases as drawn
    lenet = layerwise_net("lenet", 10, (1, 28, 28), seed=0, before_pool=True)
    assert [head[-1].in_features for head in lenet.heads[:-1]] == [2352, 1600, 120]
    default = layerwise_net("tfcnn", 10, (1, 28, 28), seed=0)
    assert [head[-1].in_features for head in default.heads[:-1]] == [32 * 14 * 14, 64 * 7 * 7]
    assert all(head[-1].weight.any() for head in default.heads[:-1]) and default.projections is None


def test_projections_are_the_papers_maps():
    net = layerwise_net("tfcnn", 10, (1, 28, 28), seed=0, before_pool=True, projection=True)
    conv1, conv2, dense = net.projections
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.padding) == (32, 32, (3, 3), (1, 1))
    assert conv2.in_channels == conv2.out_channels == 64 and conv1.bias is None and conv2.bias is None
    assert (dense.in_features, dense.out_features) == (1024, 1024) and dense.bias is None
    assert len(layerwise_net("mlp", 10, (1, 28, 28), seed=0, keep=2, projection=True).projections) == 2


def test_step_decay_matches_the_local_loss_codes_epochs():
    """Its lr at epoch e (from 1): lr x 0.25^bisect_right([100, 150, 175, 188], e - 1); ours at the
    start of that epoch, a fraction (e - 1) / 200 of the budget used, fractions 0.5 0.75 0.875 0.94."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=5e-4)
    for epoch in range(1, 201):
        decay_lr(optimizer, (epoch - 1) / 200, [0.5, 0.75, 0.875, 0.94], 0.25)
        expected = 5e-4 * 0.25 ** bisect.bisect_right([100, 150, 175, 188], epoch - 1)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
    decay_lr(optimizer, 0.1, [0.5], 0.25)    # a function of the budget used, not of the calls
    assert optimizer.param_groups[0]["lr"] == 5e-4
    decay_lr(optimizer, 0.9, None, 0.25)     # no milestones: constant
    assert optimizer.param_groups[0]["lr"] == 5e-4
