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
import statistics
import time

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


def _time(fn):
    began = time.perf_counter()
    out = fn()
    return (time.perf_counter() - began,), out


class _Since:
    """Seconds since it started, for a gradient-ready hook (measured mode's Counting)."""
    def __enter__(self):
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc):
        pass

    def read(self):
        return (time.perf_counter() - self.began,)


def _read(counter):
    return counter.read() if isinstance(counter, _Since) else (counter.flops, counter.elements, counter.ops)


@functools.cache
def split_network(network, width, depth, K, device="meta"):
    """(the network on `device` (meta or cpu), its K stages' bounds, their output shapes)."""
    net = build_network(network, 0, width, depth)
    return copy.deepcopy(net).to(device), *split(net, K)


@functools.cache
def _counted_update(shapes, scale=1):
    return _update_counts(shapes, scale, _count)   # counts do not change: once per shape


def _update_counts(shapes, scale=1, clock=_count):
    """Fused Adam over parameters of these shapes (grads / scale first, as torch's pipelines do)."""
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = make_optimizer(params, "adam", lr=1e-4)
    optimizer.step()   # builds Adam's state: not a steady-state step
    return clock(lambda: ([p.grad.div_(scale) for p in params if scale != 1], optimizer.step()))[0]


@functools.cache
def stage_counts(method, network, width, depth, K, k, batch, M=1):
    """({what: (flops, elements, ops)} of stage k's actions on `batch` examples, and for a
    whole network [(bytes, counts into the backward)] as each parameter's gradient is made)."""
    return _stage_actions(method, network, width, depth, K, k, batch, M, "meta")


MEASURED = {}   # stage_seconds' results by "method/network/width/depth/K/k/batch/M": a study keeps and reloads them


def stage_seconds(method, network, width, depth, K, k, batch, M=1, repeats=5):
    """The same actions run for real on this CPU, one thread: ({what: median seconds}, ready
    [(bytes, seconds into the backward)]) over `repeats` runs after one to warm up; measured
    once per key (MEASURED)."""
    key = "/".join(map(str, (method, network, width, depth, K, k, batch, M)))
    if key not in MEASURED:
        MEASURED[key] = _measure(method, network, width, depth, K, k, batch, M, repeats)
    return MEASURED[key]


def _measure(method, network, width, depth, K, k, batch, M, repeats):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a device is one core, as each rank of the real race
    try:
        runs = [_stage_actions(method, network, width, depth, K, k, batch, M, "cpu") for _ in range(repeats + 1)][1:]
    finally:
        torch.set_num_threads(threads)
    median = statistics.median
    return ({what: median(r[0][what][0] for r in runs) for what in runs[0][0]},
            [(nbytes, median(r[1][i][1][0] for r in runs)) for i, (nbytes, _) in enumerate(runs[0][1])])


def _stage_actions(method, network, width, depth, K, k, batch, M, device):
    """Stage k's actions, counted on the meta device or timed on the CPU."""
    clock, since = (_count, Counting) if device == "meta" else (_time, _Since)
    update = _counted_update if device == "meta" else functools.partial(_update_counts, clock=clock)
    net, bounds, shapes = split_network(network, width, depth, K, device)
    body, head = stage_of(net, bounds, k)
    first, last, c, ready = k == 0, k == K - 1, {}, []
    for p in [*body.parameters(), *head.parameters()]:
        p.grad = None
    x = torch.randn(batch, *(IMAGE_SHAPE if first else shapes[k - 1]), device=device)
    x.requires_grad_(not first and method not in LOCAL)
    y, trained = torch.randint(0, 10, (batch,), device=device), (body,)
    if method in LOCAL:
        local = lambda: decoupled_losses([body], [head], x, y, LOCAL[method], PREDSIM_BETA)
        c["forward"], [(loss, _)] = clock(local)
        c["backward"], trained = clock(loss.backward)[0], (body, head)
    elif last or method in PIPELINED:   # pipelines, backprop, ddp, and the last stages: backprop
        module = nn.Sequential(body, head) if last else body
        forward = lambda: F.cross_entropy(module(x), y) if last else module(x)
        scaled = method in ("dni", "cdni") and not first   # dni sends dL/dh * B down

        def backward(out):
            grad, x.grad, counting = None if last else torch.ones(out.shape, device=device), None, since()
            hooks = [p.register_post_accumulate_grad_hook(lambda p: ready.append(
                (4 * p.numel(), _read(counting)))) for p in module.parameters()]
            with counting:
                out.backward(grad), x.grad * batch if scaled else None
            [hook.remove() for hook in hooks]
            return _read(counting)
        c["forward"], out = clock(forward)
        alone, added = backward(out), backward(forward())   # microbatches after the first add to the grads
        del ready[len(ready) // 2:]
        c["backward"] = tuple(a + (M - 1) / M * (b - a) for a, b in zip(alone, added))
        trained = (body, head) if last else (body,)
        if method == "ddp":   # its reducer copies each gradient into its bucket, and back once all-reduced
            c["bucket_copy"] = _reducer_seconds(module, x, y) if device == "cpu" else _count(   # in, divided, out
                lambda: torch.cat([p.grad.view(-1) for p in module.parameters()]).div_(2).clone())[0]
    elif method == "ddg":
        def forward():
            weights = {n: p.detach().clone().requires_grad_() for n, p in body.named_parameters()}
            return weights, functional_call(body, weights, (x,))
        c["forward"], (weights, h) = clock(forward)
        wrt, grad = [*weights.values(), *([] if first else [x])], torch.ones(h.shape, device=device)
        c["backward"] = clock(lambda: torch.autograd.grad(h, wrt, grad))[0]
    else:   # dni, cdni below the last stage
        size, cdni = torch.Size(shapes[k]).numel(), method == "cdni"
        sg = SyntheticGradient(size, [] if cdni else [SG_HIDDEN] * 2, num_classes=10 if cdni else 0).to(device)
        c["forward"], h = clock(lambda: body(x))
        with torch.no_grad():
            c["synthetic"], g = clock(lambda: sg(h.detach().flatten(1), y).view_as(h))
        c["backward"] = clock(lambda: (h.backward(g / batch), x.grad * batch if not first else None))[0]
        target = torch.zeros(batch, size, device=device)
        learn = clock(lambda: F.mse_loss(sg(h.detach().flatten(1), y), target).backward())[0]
        c["synthetic_learn"] = tuple(a + b for a, b in zip(learn, update(_shapes(sg))))
    c["update"] = update(_shapes(*trained), M)
    return c, ready


def _reducer_seconds(module, x, y, repeats=6):
    """(seconds,) DDP's reducer adds to a backward: DDP on a gloo group of one process (its
    buckets filled, divided, all-reduced with nobody and copied back) minus the plain backward."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    mine = not dist.is_initialized()
    if mine:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(module)
        runs = {}
        for _ in range(repeats):
            for name, model in (("plain", module), ("ddp", wrapped)):
                loss = F.cross_entropy(model(x), y)
                runs.setdefault(name, []).append(_time(loss.backward)[0][0])
        return (max(0.0, statistics.median(runs["ddp"][1:]) - statistics.median(runs["plain"][1:])),)
    finally:
        if mine:
            dist.destroy_process_group()


def _shapes(*modules):
    return tuple(tuple(p.shape) for m in modules for p in m.parameters())
