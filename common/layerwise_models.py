"""layerwise_demo.py's networks: blocks B_1..B_K, an output layer and a linear head G_k
per block (tfcnn, the TensorFlow layers tutorial's CNN; lenet; mlp, 3 x 1024), with the
local-loss paper's options (BatchNorm, LeakyReLU, dropout, the similarity projections,
heads before pooling, zero-initialised heads). The losses and the training loops that
are the idea stay in the script.
"""
import math

import torch
from torch import nn

NORMS = ("none", "batch")
NONLINEARITIES = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01)}  # the paper's slope
TAIL = (nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Dropout2d)  # what follows a block's nonlinearity


class ScaledTanh(nn.Module):
    """LeCun's 1.7159 tanh(2x/3), as in LeCun et al. 1998 (LeNet-5)."""

    def forward(self, x):
        return 1.7159 * (2 * x / 3).tanh()


def _unit(layer, width, norm, activation):
    """layer -> [BatchNorm over its `width` channels or features] -> activation."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")
    batchnorm = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
    return [layer, *([batchnorm(width)] if norm == "batch" else []), activation()]


def tfcnn(num_classes=10, dropout=0.4, norm="none", nonlin="relu"):
    """TensorFlow "layers" tutorial MNIST CNN, input (N, 1, 28, 28).

    conv 5x5 32 same, ReLU, max-pool 2 | conv 5x5 64 same, ReLU, max-pool 2 |
    dense 1024 ReLU, dropout 0.4 | dense num_classes.
    """
    act = NONLINEARITIES[nonlin]
    return nn.ModuleList([
        nn.Sequential(*_unit(nn.Conv2d(1, 32, 5, padding=2), 32, norm, act), nn.MaxPool2d(2)),
        nn.Sequential(*_unit(nn.Conv2d(32, 64, 5, padding=2), 64, norm, act), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), *_unit(nn.Linear(64 * 7 * 7, 1024), 1024, norm, act), nn.Dropout(dropout)),
        nn.Linear(1024, num_classes),
    ])


def lenet(num_classes=10, norm="none"):
    """A LeNet-5-like network (LeCun et al. 1998), with the scaled tanh, input (N, 1, 28, 28).

    conv 5x5 6 pad 2, tanh, avg-pool 2 | conv 5x5 16, tanh, avg-pool 2 |
    400 -> 120 tanh | 120 -> 84 tanh | 84 -> num_classes.
    """
    return nn.ModuleList([
        nn.Sequential(*_unit(nn.Conv2d(1, 6, 5, padding=2), 6, norm, ScaledTanh), nn.AvgPool2d(2)),
        nn.Sequential(*_unit(nn.Conv2d(6, 16, 5), 16, norm, ScaledTanh), nn.AvgPool2d(2)),
        nn.Sequential(nn.Flatten(), *_unit(nn.Linear(400, 120), 120, norm, ScaledTanh)),
        nn.Sequential(*_unit(nn.Linear(120, 84), 84, norm, ScaledTanh)),
        nn.Linear(84, num_classes),
    ])


def mlp_blocks(input_size=784, hidden=(1024, 1024, 1024), num_classes=10, norm="none", nonlin="relu",
               dropout=0.0):
    """An MLP with ReLU (or `nonlin`) hidden layers (3x1024 by default, as in Nokland &
    Eidnes 2019), one block per hidden layer, each ending in dropout if `dropout` > 0;
    accepts (N, 1, 28, 28) or flat input."""
    blocks, fan_in = [], input_size
    for i, width in enumerate(hidden):
        flatten = [nn.Flatten()] if i == 0 else []
        drop = [nn.Dropout(dropout)] if dropout else []
        blocks.append(nn.Sequential(*flatten, *_unit(nn.Linear(fan_in, width), width, norm,
                                                     NONLINEARITIES[nonlin]), *drop))
        fan_in = width
    return nn.ModuleList(blocks + [nn.Linear(fan_in, num_classes)])


BLOCK_MODELS = {"tfcnn": tfcnn, "lenet": lenet, "mlp": mlp_blocks}


def split_tail(block):
    """(body, tail): the block up to its nonlinearity, and the pooling/dropout after it;
    block(x) = tail(body(x)). The local-loss code takes its losses on body(x)."""
    cut = len(block)
    while cut and isinstance(block[cut - 1], TAIL):
        cut -= 1
    return block[:cut], block[cut:]


def decoder_pool(channels, size, limit=4096):
    """The local-loss code's average pooling in front of a conv block's prediction head
    (its --dim-in-decoder 4096): double the pooling window's height, then its width, in
    turn, until channels x pooled height x pooled width <= limit. [] if none is needed."""
    kh = kw = 1
    features = lambda: channels * math.ceil(size / kh) * math.ceil(size / kw)
    while features() > limit and kh < size:
        kh *= 2
        if features() > limit:
            kw *= 2
    if kh == kw == 1:
        return []
    pad = lambda k: k * (math.ceil(size / k) - size // k) // 2
    return [nn.AvgPool2d((kh, kw), padding=(pad(kh), pad(kw)))]


class LayerwiseNet(nn.Module):
    """Blocks B_1..B_K and heads G_1..G_K (G_K = the output layer O). The full model is
    O(B_K(...B_1(x))), or for staged the sum of every head on its block's output.
    `projections` (or None): block k's learned map before its similarity loss."""

    def __init__(self, blocks, heads, staged=False, projections=None):
        super().__init__()
        self.blocks, self.heads, self.staged, self.projections = blocks, heads, staged, projections

    def forward(self, x):
        total = 0
        for block, head in zip(self.blocks, self.heads):
            x = block(x)
            if self.staged:
                total = total + head(x)
        return total if self.staged else self.heads[-1](x)

    def parts(self):
        """Each block and head: eval_mode(*parts) puts back a frozen part's own mode."""
        return [*self.blocks, *self.heads]


def layerwise_net(name, num_classes, image_shape, seed, staged=False, keep=None, norm="none", nonlin="relu",
                  dropout=None, before_pool=False, projection=False, zero_heads=False, output_apart=False):
    """BLOCK_MODELS[name] as a LayerwiseNet. Head k < K is one linear layer on block k's
    flattened output (before_pool: on its body's output, split_tail, average-pooled by
    decoder_pool); the last head is the model's own output layer. projection: for each
    block, a 3x3 conv without bias (conv blocks) or a linear layer without bias (dense
    ones) on its body's output (before_pool) or its output, drawn after every other
    weight. zero_heads: every head's weights start at zero. dropout None: the model's
    own. output_apart: the local-loss code's layout, an empty block B_K+1 after the model's
    blocks, so that B_K gets a head of its own and the output layer G_K+1 trains on B_K's
    detached output (the blocks, the other heads and the output layer as without it).
    Same seed, same weights. keep=k: blocks 1..k and head G_k."""
    torch.manual_seed(seed)
    options = dict(norm=norm, **({"nonlin": nonlin} if nonlin != "relu" else {}),
                   **({"dropout": dropout} if dropout is not None else {}))
    layers = BLOCK_MODELS[name](num_classes=num_classes, **options)
    blocks, output = layers[:-1], layers[-1]
    if output_apart:
        blocks.append(nn.Sequential())
    heads, seen, h = [], [], torch.zeros(2, *image_shape)
    with torch.no_grad():
        blocks.eval()  # shapes only: BatchNorm's running statistics stay as built
        for k, block in enumerate(blocks):
            body, tail = split_tail(block)
            a = body(h)
            h = tail(a)
            seen.append(a if before_pool else h)
            if k < len(blocks) - 1:
                pool = decoder_pool(a.shape[1], a.shape[2]) if before_pool and a.dim() == 4 else []
                width = nn.Sequential(*pool)(seen[-1][:1]).numel()
                heads.append(nn.Sequential(*pool, nn.Flatten(), nn.Linear(width, num_classes)))
        blocks.train()
    heads = nn.ModuleList(heads + [output])
    if zero_heads:
        for head in heads:
            nn.init.zeros_([m for m in head.modules() if isinstance(m, nn.Linear)][-1].weight)
    # Only when asked: drawing them moves the random stream that dropout reads later.
    projections = nn.ModuleList(nn.Conv2d(s.shape[1], s.shape[1], 3, padding=1, bias=False) if s.dim() == 4
                                else nn.Linear(s.shape[1], s.shape[1], bias=False) for s in seen[:keep]
                                ) if projection else None
    return LayerwiseNet(blocks[:keep], heads[:keep], staged, projections)
