"""The K-device pricing model (common/stage_virtual_time.py): the link's formula, torch's
GPipe and 1F1B orders as read from torch 2.14's _step_microbatches, the fill-drain bubble,
DDP's ring latency, a decoupled pipeline set by its slowest stage, meta-device prices equal
to real ones, determinism. Small mlps (width 64): each test well under a second."""
import pytest
import torch
import torch.nn.functional as F

from common.runtime_flags import DEFAULT_MACHINE
from common.stage_networks import build_network, split, stage_of
from common.stage_virtual_time import Channel, Link, decoupled, price, simulate
from common.virtual_time import VirtualClock

TINY = dict(width=64, depth=4, batch_size=48)


def equal_stages(K, forward, backward, update=0.0):
    return {(k, w): s for k in range(K) for w, s in (("forward", forward), ("backward", backward), ("update", update))}


def test_link_arrives_after_its_latency_and_bandwidth_first_in_first_out():
    fast = Link(latency_s=0.002)
    assert fast.transmit(1.0, 10 ** 9) == (1.0, 1.002)     # infinite bandwidth: size costs nothing
    assert fast.transmit(0.5, 10) == (1.0, 1.002)          # never before an earlier message
    slow = Link(latency_s=0.01, bandwidth=1000.0)
    assert slow.transmit(0.0, 500) == pytest.approx((0.5, 0.51))
    assert slow.transmit(0.1, 500) == pytest.approx((1.0, 1.01))   # waits for the link to be free
    assert slow.transmit(3.0, 100) == pytest.approx((3.1, 3.11))   # an idle link starts at once
    rendezvous = Channel(Link(latency_s=0.01, bandwidth=1000.0))
    rendezvous.sent.append((0.0, 100))
    rendezvous.resolve()
    assert rendezvous.arrival == []            # gloo: nothing leaves before the receive is posted
    rendezvous.posted.append(1.0)
    rendezvous.resolve()                        # the notice travels back, then the bytes forward
    assert rendezvous.done == pytest.approx([1.11]) and rendezvous.arrival == pytest.approx([1.12])


def order(method, K, M):
    result = price(method, K=K, microbatches=M, steps=1, trace=True, seconds=equal_stages(K, 1.0, 1.0), **TINY)
    return [[label for label, _, _ in stage] for stage in result["trace"]], result["trace"]


def test_gpipe_runs_all_forwards_then_all_backwards_as_torch_does():
    labels, _ = order("gpipe", 2, 4)
    assert labels == [["F0", "F1", "F2", "F3", "B0", "B1", "B2", "B3", "U"]] * 2


def test_1f1b_warms_up_with_K_minus_k_forwards_then_alternates_as_torch_does():
    # Schedule1F1B._step_microbatches: warmup_chunks = min(M, K - k) forwards, then the
    # "1B1F" loop (backward first), then the cool-down backwards
    labels, trace = order("1f1b", 2, 4)
    assert labels == [["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3", "U"],
                      ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3", "U"]]
    # by hand, F = B = 1 s, no latency: stage 0 waits for B0's gradient from 2 s to 3 s
    assert trace[0][:8] == [("F0", 0, 1), ("F1", 1, 2), ("B0", 3, 4), ("F2", 4, 5), ("B1", 5, 6),
                            ("F3", 6, 7), ("B2", 7, 8), ("B3", 9, 10)]
    labels, _ = order("1f1b", 4, 8)
    assert labels[0] == "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7 U".split()
    assert labels[1] == "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7 U".split()
    assert labels[3] == "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7 U".split()


@pytest.mark.parametrize("method", ["gpipe", "1f1b"])
@pytest.mark.parametrize("K,M", [(2, 4), (4, 4), (4, 8)])
def test_equal_stages_idle_the_fill_drain_share(method, K, M):
    result = price(method, K=K, microbatches=M, steps=6, seconds=equal_stages(K, 0.001, 0.002), **TINY)
    expected = (K - 1) / (M + K - 1)
    assert result["bubble"] == pytest.approx([expected] * K, rel=0.01)
    assert result["seconds_per_step"] == pytest.approx((M + K - 1) * 0.003)


def test_ddp_pays_its_ring_latency_2_K_minus_1_times_per_step():
    K = 4   # the width-64 mlp's gradients fit in one bucket: one ring per step
    times = [price("ddp", K=K, link=Link(latency), steps=6, **TINY)["seconds_per_step"] for latency in (0.001, 0.002)]
    assert times[1] - times[0] == pytest.approx(2 * (K - 1) * 0.001)
    bandwidth = price("ddp", K=K, link=Link(0.001, 1e6), steps=6, **TINY)
    weights = sum(p.numel() * 4 for p in build_network("mlp", 0, 64, 4).backprop_net().parameters())
    assert bandwidth["sent_bytes_per_step"] == [pytest.approx(2 * (K - 1) / K * weights)] * K
    assert bandwidth["seconds_per_step"] - times[0] == pytest.approx(2 * (K - 1) * weights / K / 1e6, rel=0.01)


def test_decoupled_stages_run_at_the_slowest_stage_whatever_the_latency():
    K, slow = 3, 0.03   # stage 1 three times the others' work; a 1 ms link
    seconds = equal_stages(K, 0.004, 0.005, 0.001)
    seconds.update({(1, "forward"): 0.012, (1, "backward"): 0.015, (1, "update"): 0.003})
    times = [price("dgl", K=K, link=Link(latency), seconds=seconds, **TINY) for latency in (0.0, 0.001)]
    for result in times:
        assert result["seconds_per_step"] == pytest.approx(slow, rel=0.01)
        assert result["bubble"][1] < 0.01 and min(result["bubble"][0], result["bubble"][2]) > 0.6
    gpipe = [price("gpipe", K=K, link=Link(latency), seconds=seconds, **TINY) for latency in (0.0, 0.001)]
    assert gpipe[1]["seconds_per_step"] - gpipe[0]["seconds_per_step"] > 0.01   # latency on every microbatch


def test_meta_device_prices_equal_the_real_modules_prices():
    net = build_network("mlp", 0, 64, 4)
    bounds, shapes = split(net, 2)
    result = price("gpipe", K=2, microbatches=1, **TINY)   # microbatches of 48
    for k in range(2):
        body, head = stage_of(net, bounds, k)
        x = torch.rand(48, *((1, 28, 28) if k == 0 else shapes[0]), requires_grad=k > 0)
        y = torch.zeros(48, dtype=torch.long)
        with VirtualClock(0, None, DEFAULT_MACHINE) as forward:
            out = F.cross_entropy(head(body(x)), y) if k else body(x)
        grad = None if k else torch.ones_like(out)
        with VirtualClock(0, None, DEFAULT_MACHINE) as backward:
            out.backward(grad)
        assert result["action_seconds"][k, "forward"] == pytest.approx(forward.t)
        assert result["action_seconds"][k, "backward"] == pytest.approx(backward.t)


@pytest.mark.parametrize("method", ["1f1b", "ddp", "dni", "ddg", "predsim"])
def test_pricing_is_deterministic(method):
    link = Link(0.0005, 1e8)
    first, second = (price(method, K=4, link=link, steps=10, **TINY) for _ in range(2))
    assert first == second and first["seconds_per_step"] > 0


def test_a_decoupled_sender_runs_at_most_queue_plus_2_messages_ahead():
    # common/stage_group.Link: --queue waiting, one being received, one send unfinished
    queue, steps = 2, 30
    costs = [dict(forward=1.0, backward=0.0, update=0.0), dict(forward=10.0, backward=0.0, update=0.0)]
    up = [Channel(Link(), capacity=queue)]
    simulate([decoupled("dgl", k, 2, steps, costs[k], up, [], [4, 4], queue) for k in range(2)])
    sent, taken = [t for t, _ in up[0].sent], up[0].taken   # message i sent, taken by stage 1 (its step i)
    assert all(sent[i] >= taken[i - queue - 2] for i in range(queue + 2, steps))   # never further ahead
    assert sent[10:] == taken[10 - queue - 2:steps - queue - 2]   # and, behind a slow stage, held there
