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
