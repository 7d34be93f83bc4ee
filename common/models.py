"""Generic network builders. The experiments' own modules (students,
teachers, gradient models, auxiliary heads) are built in the scripts from
these parts; nothing here knows about any training idea.
"""
from torch import nn

INITS = ("torch", "tf")


def init_tf_(module, std=0.1, bias=0.1):
    """The originals' TensorFlow initialisation, in place, on every Linear/Conv.

    Weights ~ tf.truncated_normal(stddev=std): normal, redrawn outside two
    standard deviations; biases = constant `bias`.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias)
    return module


def mlp(sizes, activation=nn.ReLU, activate_output=False, init="torch"):
    """Linear layers sizes[0] -> sizes[1] -> ... -> sizes[-1].

    `activation` follows every layer but the last, and the last too if
    `activate_output`. init="torch" keeps PyTorch's default initialisation,
    init="tf" applies `init_tf_` (truncated normal std 0.1, bias 0.1).
    """
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp needs at least two positive sizes, got {sizes}")
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or activate_output:
            layers.append(activation())
    net = nn.Sequential(*layers)
    if init == "tf":
        init_tf_(net)
    elif init != "torch":
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    return net


# -- Models as lists of blocks, for layer-wise training ------------------------
# Each builder returns an nn.ModuleList [block_1, ..., block_K, output]: the
# blocks are the units a layer-wise strategy trains one at a time, and
# `output` is the model's own last layer (features -> logits). Run in order,
# they are the whole network: output(block_K(...block_1(x))).

class ScaledTanh(nn.Module):
    """LeCun's 1.7159 tanh(2x/3), as in the LeNet-like model of seed 002."""

    def forward(self, x):
        return 1.7159 * (2 * x / 3).tanh()


def tfcnn(num_classes=10, dropout=0.4):
    """TensorFlow "layers" tutorial MNIST CNN (seed 003), input (N, 1, 28, 28).

    conv 5x5 32 same, ReLU, max-pool 2 | conv 5x5 64 same, ReLU, max-pool 2 |
    dense 1024 ReLU, dropout 0.4 | dense num_classes.
    """
    return nn.ModuleList([
        nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(dropout)),
        nn.Linear(1024, num_classes),
    ])


def lenet(num_classes=10):
    """The LeNet-like network of seed 002, with the scaled tanh, input (N, 1, 28, 28).

    conv 5x5 6 pad 2, tanh, avg-pool 2 | conv 5x5 16, tanh, avg-pool 2 |
    400 -> 120 tanh | 120 -> 84 tanh | 84 -> num_classes.
    """
    return nn.ModuleList([
        nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), ScaledTanh(), nn.AvgPool2d(2)),
        nn.Sequential(nn.Conv2d(6, 16, 5), ScaledTanh(), nn.AvgPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(400, 120), ScaledTanh()),
        nn.Sequential(nn.Linear(120, 84), ScaledTanh()),
        nn.Linear(84, num_classes),
    ])


def mlp_blocks(input_size=784, hidden=(1024, 1024, 1024), num_classes=10):
    """An MLP with ReLU hidden layers (3x1024 by default, as in Nokland & Eidnes
    2019), one block per hidden layer; accepts (N, 1, 28, 28) or flat input."""
    blocks, fan_in = [], input_size
    for i, width in enumerate(hidden):
        flatten = [nn.Flatten()] if i == 0 else []
        blocks.append(nn.Sequential(*flatten, nn.Linear(fan_in, width), nn.ReLU()))
        fan_in = width
    return nn.ModuleList(blocks + [nn.Linear(fan_in, num_classes)])


BLOCK_MODELS = {"tfcnn": tfcnn, "lenet": lenet, "mlp": mlp_blocks}
