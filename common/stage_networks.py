"""One network split into K pipeline stages: the networks of the parallel race
(benchmarks/parallel_race.py), their balanced split, and the stage each rank keeps.

  mlp     --depth blocks (16) B_j(h) = ReLU(LayerNorm(W_j h + b_j)) of --width units (1024),
          and a linear head G_j (width -> 10) after every block; G_depth is the output layer:
              net(x) = G_depth(B_depth(...B_1(x)))
          LayerNorm, not BatchNorm: its statistics are per example, so a microbatch, a DDP
          shard and the whole batch normalise an example alike, and GPipe/1F1B with M
          microbatches and DDP on K ranks compute exactly one-process backprop's gradient.
          BatchNorm's statistics would differ per microbatch and per shard and break that.
  tfcnn   layerwise_demo.py's CNN (conv | conv | dense, K <= 3) and its heads, built as it
          builds them (common.layerwise_models.layerwise_net): the same weights as there.
          Its dropout draws masks from each process's own generator, so its methods share
          weights and batches but not masks, and no exactness test uses it.

A split into K stages is contiguous: stage k holds blocks a_k .. b_k - 1 and the head after
its last block, G_{b_k} (its local head; the last stage's is the output layer). Balanced:

    min over contiguous splits of  max_k  sum_{j in stage k} flops_j

flops_j: block j's forward on one example (torch.utils.flop_counter; matrix products and
convolutions only), minimised by dynamic programming. Every rank builds the whole network
from --seed and keeps its stage: same seed, same weights, whatever the method or K.
"""
import functools

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common.layerwise_models import layerwise_net

IMAGE_SHAPE = (1, 28, 28)


class StagedNetwork(nn.Module):
    """Blocks B_1..B_n and heads G_1..G_n; the network is G_n(B_n(...B_1(x)))."""

    def __init__(self, blocks, heads):
        super().__init__()
        self.blocks, self.heads = nn.ModuleList(blocks), nn.ModuleList(heads)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.heads[-1](x)

    def backprop_net(self):
        """The modules backprop trains: every block and the output layer, in order
        (the intermediate heads are not part of it and stay as they were drawn)."""
        return nn.Sequential(*self.blocks, self.heads[-1])


def mlp(width, depth, num_classes=10, input_size=784):
    """The race's MLP: `depth` blocks Linear -> LayerNorm -> ReLU and a head after each."""
    sizes = [input_size] + [width] * depth
    blocks = [nn.Sequential(*([nn.Flatten()] if j == 0 else []), nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU())
              for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    heads = [nn.Linear(width, num_classes) for _ in range(depth)]
    return blocks, heads


def build_network(network, seed, width=1024, depth=16, num_classes=10):
    """The whole network, drawn from `seed` (the same on every rank and for every method)."""
    if network == "tfcnn":
        net = layerwise_net("tfcnn", num_classes, IMAGE_SHAPE, seed)
        return StagedNetwork(net.blocks, net.heads)
    torch.manual_seed(seed)
    return StagedNetwork(*mlp(width, depth, num_classes))


def block_flops(net):
    """Forward FLOPs of each block on one example."""
    flops, h = [], torch.zeros(1, *IMAGE_SHAPE)
    with torch.no_grad():
        for block in net.blocks:
            with FlopCounterMode(display=False) as counter:
                h = block(h)
            flops.append(counter.get_total_flops())
    return flops


def balanced_split(costs, K):
    """Stage bounds [(a_0, b_0), ..., (a_{K-1}, b_{K-1})], contiguous, each stage non-empty,
    minimising the largest stage's summed cost (ties: the earliest such split)."""
    n = len(costs)
    if not 1 <= K <= n:
        raise ValueError(f"cannot split {n} blocks into {K} non-empty stages")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    @functools.cache
    def best(k, start):   # (largest stage cost, cuts) splitting blocks start..n-1 into k stages
        if k == 1:
            return prefix[n] - prefix[start], (n,)
        options = []
        for end in range(start + 1, n - k + 2):
            rest, cuts = best(k - 1, end)
            options.append((max(prefix[end] - prefix[start], rest), (end,) + cuts))
        return min(options)
    cuts = (0,) + best(K, 0)[1]
    return list(zip(cuts[:-1], cuts[1:]))


def stage_of(net, bounds, k):
    """Stage k's (body, head): its blocks as one nn.Sequential and the head after its last."""
    a, b = bounds[k]
    return nn.Sequential(*net.blocks[a:b]), net.heads[b - 1]


def stage_shapes(net, bounds):
    """The shape of one example's activation after each stage (what a stage sends on)."""
    shapes, h = [], torch.zeros(1, *IMAGE_SHAPE)
    with torch.no_grad():
        for k in range(len(bounds)):
            h = stage_of(net, bounds, k)[0](h)
            shapes.append(tuple(h.shape[1:]))
    return shapes


def split(net, K):
    """(bounds, shapes): the balanced split into K stages and what each stage sends on."""
    bounds = balanced_split(block_flops(net), K)
    return bounds, stage_shapes(net, bounds)


def named_state(net, modules):
    """The parameters of `modules` under their names in the whole network (for comparing a
    stage's weights with a one-process run's)."""
    mine = {id(p) for m in modules for p in m.parameters()}
    return {name: p.detach().clone() for name, p in net.named_parameters() if id(p) in mine}
