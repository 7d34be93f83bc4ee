"""The price of each action of a parallel-race stage, in seconds, from the op counts that
common/virtual_time.py prices (its formula, one machine):
    (flops / gflops + elements / gelements) * 1e-9 + ops * op_us * 1e-6
Actions: forward, backward, update (fused Adam, as make_optimizer builds it), and a synthetic
module's forward ("synthetic") and learning ("synthetic_learn"). Each stage's real modules run
once on the meta device (shapes, no arithmetic) under virtual_time's Counting mode, the scripts'
own local losses (layerwise_demo.decoupled_losses) and module (synthgrad_demo.SyntheticGradient)
included; cached per (method, network, K, stage, batch). Adam runs on zero CPU tensors (fused
Adam refuses the meta device), its second step counted. On the meta device one_hot skips its
range checks: predsim's and cdni's module come out 2 ops short. The schedules that put these
actions in order on K devices: common/stage_virtual_time.py.
"""
import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.models import make_optimizer
from common.stage_networks import IMAGE_SHAPE, build_network, split, stage_of
from common.virtual_time import Counting
from layerwise_demo import decoupled_losses
from synthgrad_demo import SyntheticGradient

LOCAL = {"dgl": "decoupled", "predsim": "predsim"}   # layerwise_demo's names
PIPELINED = ("backprop", "gpipe", "1f1b", "ddp")      # backprop on their part: one forward, one backward
SG_HIDDEN, PREDSIM_BETA = 256, 0.99  # the race's defaults


def _count(fn):
    with Counting() as counting:
        out = fn()
    return (counting.flops, counting.elements, counting.ops), out


@functools.cache
def split_network(network, width, depth, K):
    """(the network on the meta device, its K stages' bounds, their output shapes)."""
    net = build_network(network, 0, width, depth)
    return copy.deepcopy(net).to("meta"), *split(net, K)


@functools.cache
def _update_counts(shapes, scale=1):
    """Fused Adam over parameters of these shapes (grads / scale first, as torch's pipelines do)."""
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = make_optimizer(params, "adam", lr=1e-4)
    optimizer.step()   # builds Adam's state: not a steady-state step
    return _count(lambda: ([p.grad.div_(scale) for p in params if scale != 1], optimizer.step()))[0]


@functools.cache
def stage_counts(method, network, width, depth, K, k, batch, M=1):
    """({what: (flops, elements, ops)} of stage k's actions on `batch` examples, and for a
    whole network [(bytes, counts into the backward)] as each parameter's gradient is made)."""
    meta, bounds, shapes = split_network(network, width, depth, K)
    body, head = stage_of(meta, bounds, k)
    first, last, c, ready = k == 0, k == K - 1, {}, []
    for p in [*body.parameters(), *head.parameters()]:
        p.grad = None
    x = torch.zeros(batch, *(IMAGE_SHAPE if first else shapes[k - 1]), device="meta")
    x.requires_grad_(not first and method not in LOCAL)
    y, trained = torch.zeros(batch, dtype=torch.long, device="meta"), (body,)
    if method in LOCAL:
        local = lambda: decoupled_losses([body], [head], x, y, LOCAL[method], PREDSIM_BETA)
        c["forward"], [(loss, _)] = _count(local)
        c["backward"], trained = _count(loss.backward)[0], (body, head)
    elif last or method in PIPELINED:   # pipelines, backprop, ddp, and the last stages: backprop
        module = nn.Sequential(body, head) if last else body
        forward = lambda: F.cross_entropy(module(x), y) if last else module(x)
        scaled = method in ("dni", "cdni") and not first   # dni sends dL/dh * B down

        def backward(out):
            grad, x.grad, counting = None if last else torch.zeros(out.shape, device="meta"), None, Counting()
            hooks = [p.register_post_accumulate_grad_hook(lambda p: ready.append(
                (4 * p.numel(), (counting.flops, counting.elements, counting.ops)))) for p in module.parameters()]
            with counting:
                out.backward(grad), x.grad * batch if scaled else None
            [hook.remove() for hook in hooks]
            return counting.flops, counting.elements, counting.ops
        c["forward"], out = _count(forward)
        alone, added = backward(out), backward(forward())   # microbatches after the first add to the grads
        del ready[len(ready) // 2:]
        c["backward"] = tuple(a + (M - 1) / M * (b - a) for a, b in zip(alone, added))
        trained = (body, head) if last else (body,)
    elif method == "ddg":
        def forward():
            weights = {n: p.detach().clone().requires_grad_() for n, p in body.named_parameters()}
            return weights, functional_call(body, weights, (x,))
        c["forward"], (weights, h) = _count(forward)
        wrt, grad = [*weights.values(), *([] if first else [x])], torch.zeros(h.shape, device="meta")
        c["backward"] = _count(lambda: torch.autograd.grad(h, wrt, grad))[0]
    else:   # dni, cdni below the last stage
        size, cdni = torch.Size(shapes[k]).numel(), method == "cdni"
        sg = SyntheticGradient(size, [] if cdni else [SG_HIDDEN] * 2, num_classes=10 if cdni else 0).to("meta")
        c["forward"], h = _count(lambda: body(x))
        with torch.no_grad():
            c["synthetic"], g = _count(lambda: sg(h.detach().flatten(1), y).view_as(h))
        c["backward"] = _count(lambda: (h.backward(g / batch), x.grad * batch if not first else None))[0]
        target = torch.zeros(batch, size, device="meta")
        learn = _count(lambda: F.mse_loss(sg(h.detach().flatten(1), y), target).backward())[0]
        c["synthetic_learn"] = tuple(a + b for a, b in zip(learn, _update_counts(_shapes(sg))))
    c["update"] = _update_counts(_shapes(*trained), M)
    return c, ready


def _shapes(*modules):
    return tuple(tuple(p.shape) for m in modules for p in m.parameters())
