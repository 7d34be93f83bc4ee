"""Generic network builders and the optimizer helpers. The experiments' own
modules (students, teachers, gradient models) are built in the scripts from
these parts; nothing here knows about any training idea. layerwise_demo.py's
networks: common/layerwise_models.py.
"""
import torch
import torch.nn.functional as F
from torch import nn

INITS = ("torch", "tf")
OPTIMIZERS = ("adam", "sgd")


def make_optimizer(params, kind="adam", lr=1e-3, momentum=0.0):
    """Adam (fused: one kernel updates every parameter, much faster on a CPU) or SGD."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr, fused=True)


def decay_lr(optimizer, used, milestones, factor):
    """A step schedule: every group's lr = its initial lr x factor^(milestones <= used), `used`
    and `milestones` in the same unit (say, fractions of the budget). The first call keeps
    the initial lr in the group's "initial_lr", as torch's own schedulers do. None: no milestones."""
    done = sum(used >= milestone for milestone in milestones or ())
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor ** done


def _draw_tf_(weight, bias, std=0.1, bias_value=0.1):
    """Weights ~ tf.truncated_normal(stddev=std): normal, redrawn outside two
    standard deviations; biases = constant `bias_value`. In place."""
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
    if bias is not None:
        nn.init.constant_(bias, bias_value)


def init_tf_(module, std=0.1, bias=0.1):
    """The originals' TensorFlow initialisation (`_draw_tf_`), in place, on every Linear/Conv."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            _draw_tf_(layer.weight, layer.bias, std, bias)
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


class StackedMLP(nn.Module):
    """n independent MLPs of one shape, stored stacked so that all n run together.

    MLP i reads an input shared by all n, x, and optionally one of its own,
    z_i, as if concatenated. Layer 1 of MLP i, in nn.Linear's terms
    (weight [out, in], y = h W^T + b):

        h_i = concat(x, z_i) W_1[i]^T + b_1[i] = x Wx[i]^T + z_i Wz[i]^T + b_1[i]

    and every later layer h_i <- h_i W_l[i]^T + b_l[i], with ReLU between
    layers (and after the last if `activate_output`). No MLP reads another's
    numbers: these are n separate `mlp(sizes)` networks.

    What stacking buys is speed. For all n at once, the x part of layer 1 is
    ONE plain matmul ([Wx[0]; ...; Wx[n-1]] x^T, x being shared) and every
    other product one batched matmul (torch.baddbmm) over the n, so a layer
    costs one or two calls instead of n; on a CPU the per-call overhead rivals
    the arithmetic of 128-row matrices. Activations are kept feature-major,
    [n, features, B], so each product is W h^T with no transposing copies;
    inputs and outputs are [B, features] (x) and [n, B, features] (z, result).
    forward(x, z, member=i) runs MLP i alone, as plain F.linear layers that
    read only slice i of every parameter.

    sizes[0] is the whole first-layer input, of which the last `own_input`
    features are z_i and the rest x. init="torch" draws like nn.Linear
    (uniform +-1/sqrt(fan_in), weights and biases); init="tf" like `init_tf_`.
    """

    def __init__(self, n, sizes, own_input=0, activate_output=False, init="torch"):
        super().__init__()
        if n < 1 or len(sizes) < 2 or min(sizes) < 1 or not 0 <= own_input <= sizes[0]:
            raise ValueError(f"StackedMLP needs n >= 1, at least two positive sizes and "
                             f"0 <= own_input <= sizes[0]; got n={n}, sizes={sizes}, "
                             f"own_input={own_input}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {INITS}")
        self.n, self.activate_output = n, activate_output
        self.shared_input, self.own_input = sizes[0] - own_input, own_input
        weights, biases = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            weight, bias = torch.empty(n, fan_out, fan_in), torch.empty(n, fan_out, 1)
            if init == "tf":
                _draw_tf_(weight, bias)
            else:
                bound = fan_in ** -0.5
                nn.init.uniform_(weight, -bound, bound)
                nn.init.uniform_(bias, -bound, bound)
            weights.append(weight)
            biases.append(bias)
        first = weights.pop(0)  # layer 1 split into its x columns and its z columns
        self.first_shared = (nn.Parameter(first[:, :, :self.shared_input].contiguous())
                             if self.shared_input else None)
        self.first_own = nn.Parameter(first[:, :, self.shared_input:].contiguous()) if own_input else None
        self.weights, self.biases = nn.ParameterList(weights), nn.ParameterList(biases)

    def forward(self, x=None, z=None, member=None):
        """x: [B, shared]; z: [n, B, own] (all MLPs) or [B, own] (with `member`)."""
        if member is not None:
            return self.forward_one(member, x, z)
        biases = list(self.biases)  # slicing the ParameterList itself would build a Module per call
        first_bias = biases[0]                                               # [n, out, 1]
        if self.shared_input:
            n, out, shared = self.first_shared.shape
            # [n * out, shared] @ [shared, B]: the x part of every MLP's layer 1 in one matmul.
            h = torch.addmm(first_bias.view(n * out, 1), self.first_shared.view(n * out, shared),
                            x.t()).view(n, out, -1)                        # [n, out, B]
            if self.own_input:
                h = torch.baddbmm(h, self.first_own, z.transpose(1, 2))
        else:
            h = torch.baddbmm(first_bias, self.first_own, z.transpose(1, 2))
        for weight, bias in zip(self.weights, biases[1:]):
            # ReLU in place on a fresh matmul output (no copy), then the next batched matmul.
            h = torch.baddbmm(bias, weight, torch.relu_(h))
        if self.activate_output:
            torch.relu_(h)
        return h.transpose(1, 2)                                             # [n, B, out]

    def forward_one(self, i, x=None, z=None):
        """MLP i alone, layer by layer, reading only slice i of every parameter."""
        biases = list(self.biases)  # as in forward
        h = biases[0][i, :, 0]
        if self.shared_input:
            h = F.linear(x, self.first_shared[i], h)
        if self.own_input:
            h = h + F.linear(z, self.first_own[i])
        for weight, bias in zip(self.weights, biases[1:]):
            h = F.linear(torch.relu(h), weight[i], bias[i, :, 0])
        return torch.relu(h) if self.activate_output else h


# -- Models as lists of blocks, for layer-wise training ------------------------
# Each builder returns an nn.ModuleList [block_1, ..., block_K, output]: the
# blocks are the units a layer-wise strategy trains one at a time, and
# `output` is the model's own last layer (features -> logits). Run in order,
# they are the whole network: output(block_K(...block_1(x))). norm="batch" puts
# BatchNorm between each conv/linear layer and its nonlinearity, as the blocks of
# Nokland & Eidnes's local-loss code (arXiv 1901.06656); it draws no random numbers,
# so a seed gives the same conv/linear weights with or without it.


def mlp_blocks_and_head(input_size, width, layers, num_classes):
    """The DNI paper's MNIST nets: hidden blocks (Linear, BatchNorm, ReLU) and the output
    layer, kept apart (a synthetic gradient module sits after each block)."""
    sizes = [input_size] + [width] * layers
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU())
                           for a, b in zip(sizes[:-1], sizes[1:]))
    return blocks, nn.Linear(width, num_classes)
