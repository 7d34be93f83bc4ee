"""What --backend virtual's prices are measured with: `--machine measure` probes this
machine's three rates (matrix-multiply GFLOPS, Gelem/s written by other ops, microseconds
per op; common/virtual_time.py says how a component's ops are priced with them) and
refuses an implausible result. The default prices need no probe (runtime_flags).
"""
import itertools
import statistics
import time

import torch

from common.cli import UserError
from common.models import make_optimizer
from common.virtual_time import Counting

# What a probe may find, (low, high); GFLOPS and Gelem/s per torch thread. No CPU core
# multiplies faster than about 250 GFLOPS (AVX-512, two FMA units, 4 GHz: 256) nor writes
# 50e9 floats a second; under 1 GFLOPS, 0.1 Gelem/s or over 100 us an op, the machine was
# too busy to measure. Outside these a probe is a timing artefact, and refused.
PLAUSIBLE = dict(gflops=(1.0, 250.0), gelements=(0.1, 50.0), op_us=(0.5, 100.0))


def mlp_probe(sizes):
    """Linear layers of these sizes, each followed by a ReLU."""
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    return torch.nn.Sequential(*itertools.chain(*((l, torch.nn.ReLU()) for l in layers)))


def measure_machine(batch_size, repeats=30, rounds=5):
    """This machine's three rates (see the module's docstring), at torch's threads, from
    three probes timed here: a forward and backward pass of a component-sized MLP
    (flops, and the elements of its other ops), an Adam step on its parameters
    (elements), and the same ops on a 16-wide MLP and one example (their fixed cost).
    Each probe's time is the median of `repeats` runs; each price, the median of
    `rounds` estimates (a burst of load in one round is outvoted). A price outside
    PLAUSIBLE raises UserError, naming it and the fix."""
    torch.manual_seed(0)
    model, tiny = mlp_probe((784, 512, 256, 128)), mlp_probe((16, 16, 16, 16))
    params, x = list(model.parameters()), torch.rand(batch_size, 784)
    optimizer = make_optimizer(params, "adam", lr=1e-4)
    for p in params:
        p.grad = torch.zeros_like(p)
    one_example = torch.rand(1, 16)
    probes = dict(passes=lambda: torch.autograd.grad(model(x).square().mean(), params),
                  adam=optimizer.step,
                  tiny=lambda: torch.autograd.grad(tiny(one_example).square().mean(),
                                                   list(tiny.parameters())))

    def median_seconds(probe):
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            probe()
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    counts = {}
    for name, probe in probes.items():
        for _ in range(5):  # warm up (and Adam makes its state)
            probe()
        with Counting() as counting:
            probe()
        counts[name] = (counting.flops, counting.elements, counting.ops)
    estimates = []
    for _ in range(rounds):
        seconds = {name: median_seconds(probe) for name, probe in probes.items()}
        per_op = seconds["tiny"] / counts["tiny"][2]   # its flops and elements: negligible
        _, elements, ops = counts["adam"]
        per_element = max(seconds["adam"] - ops * per_op, 1e-15) / elements
        flops, elements, ops = counts["passes"]
        per_flop = max(seconds["passes"] - ops * per_op - elements * per_element, 1e-15) / flops
        estimates.append((1e-9 / per_flop, 1e-9 / per_element, 1e6 * per_op))
    gflops, gelements, op_us = (statistics.median(e) for e in zip(*estimates))
    machine = dict(gflops=round(gflops, 2), gelements=round(gelements, 3), op_us=round(op_us, 2))
    check_plausible(machine, torch.get_num_threads())
    return machine


def check_plausible(machine, threads):
    """Raise UserError if a measured price is outside PLAUSIBLE (GFLOPS, Gelem/s per thread)."""
    units = dict(gflops="GFLOPS", gelements="Gelem/s", op_us="us per op")
    for name, (low, high) in PLAUSIBLE.items():
        if name != "op_us":
            high *= threads
        if not low <= machine[name] <= high:
            raise UserError(
                f"--machine measure: this machine measured {machine[name]:g} {units[name]}, "
                f"outside {low:g} to {high:g} ({threads} torch threads): the probe was misled "
                "(a busy machine?); rerun on an idle machine, or pass the prices by hand "
                "(--machine GFLOPS GELEMENTS OP_US), or leave --machine out for the defaults")
