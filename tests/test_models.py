"""common.models.StackedMLP against the trusted reference: n separate plain MLPs."""
import pytest
import torch

from common.models import StackedMLP
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
