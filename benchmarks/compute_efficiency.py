"""Compute efficiency: how close each MLP script's training step comes to the
matrix-multiply throughput this machine shows on the same shapes.

For each script, one training step (forward, losses, backward, optimizer)
at its default sizes is run under a dispatch mode that records every matrix
multiply it makes (aten.mm / addmm / bmm / baddbmm, with shapes and strides)
and counts its FLOPs (torch.utils.flop_counter). Then the same multiplies
are replayed alone, on fresh tensors of the same layout, two ways:

  own     exactly the calls the step makes;
  plain   the same, with every batched bmm/baddbmm over n stacked layers
          split into its n plain mm/addmm calls of one layer each (what a
          per-layer implementation of the same model would call).

    efficiency = (step FLOPs / step time) / (same FLOPs / GEMM time)
               = GEMM time / step time,   GEMM time = the faster of own and plain

so neither a slow batched kernel nor slow small ones can flatter the step.
The target is 0.7: a step should spend at most 30 % of its time outside
the matrix multiplies it cannot avoid (activations, losses, optimizer,
autograd overhead). The step and the two replays are timed in alternating
single calls and each ratio is the median over those rounds, so that a
shared machine whose speed drifts from second to second slows all of them
alike; `--repeats` such windows are run per script and their median is
reported, with the spread. The time inside optimizer.step() is also
measured (torch's global optimizer hooks), giving an upper bound on the
efficiency the script's own optimizer allows, whatever else is made faster:

    bound = GEMM time / (GEMM time + optimizer time)

`--compile` adds a row for each of sequential_mach and kgraph_mach with the
same model's losses under torch.compile, timed against the same GEMM
replay: what fusing the elementwise work and dropping eager autograd's
per-operation overhead would buy, and, as `compile_s`, what the first
call's compilation costs (less when inductor's on-disk cache already holds
the kernels from an earlier run).

    python benchmarks/compute_efficiency.py [--scripts single_mach ...] [--threads N] [--repeats 3] [--compile]
"""
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402
from common.run_folder import hardware  # noqa: E402

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}


class RecordMatmuls(TorchDispatchMode):
    """Remember (op, [(size, stride) of each tensor argument]) of every matmul."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            self.calls.append((func, [(a.shape, a.stride()) if isinstance(a, torch.Tensor) else a
                                      for a in args]))
        return func(*args, **(kwargs or {}))


def strided_randn(size, stride):
    """Random numbers in exactly this layout, broadcast (stride-0) dimensions included."""
    storage = 1 + sum((n - 1) * s for n, s in zip(size, stride))
    return torch.randn(storage).as_strided(size, stride)


def replay(calls):
    """Fresh tensors in the recorded layouts, and a function that runs the GEMMs."""
    prepared = []
    for func, args in calls:
        tensors = [strided_randn(*a) if isinstance(a, tuple) else a for a in args]
        prepared.append((func, tensors))

    def run():
        for func, tensors in prepared:
            func(*tensors)
    return run


def unbatched(calls):
    """The recorded calls with every bmm/baddbmm split into its n plain mm/addmm, slice layouts kept."""
    plain = {aten.bmm.default: aten.mm.default, aten.baddbmm.default: aten.addmm.default}
    out = []
    for func, args in calls:
        if func not in plain:
            out.append((func, args))
            continue
        tensors = [a for a in args if isinstance(a, tuple)]
        slices = [(size[1:], stride[1:]) for size, stride in tensors]  # addmm broadcasts the bias
        out.extend([(plain[func], slices)] * tensors[-1][0][0])
    return out


def interleaved_seconds(fns, seconds, warmup=5):
    """Seconds per call of each fn, called in turn, one call each per round, for about `seconds`:
    (median per fn, f(k, j) = median over rounds of fn k's time / fn j's)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    rounds, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds or len(rounds) < 5:
        times = []
        for fn in fns:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        rounds.append(times)
    medians = [statistics.median(r[k] for r in rounds) for k in range(len(fns))]
    return medians, lambda k, j: statistics.median(r[k] / r[j] for r in rounds)


def single_mach_step():
    module = importlib.import_module("single_mach")
    model = module.SingleMach(784, [512, 256], 128, 10, "tf")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    return lambda: module.train_step(model, optimizer, x, y)


def compile_losses(model, compiled):
    """With `compiled`, the model's forward and losses run under torch.compile (its backward
    too, through AOTAutograd); the fused Adam update stays the same eager kernel."""
    if compiled:
        model.losses = torch.compile(model.losses)
    return model


def sequential_mach_step(compiled=False):
    module = importlib.import_module("sequential_mach")
    model = compile_losses(module.SequentialMach(3, 784, [512, 256], 128, 10, "tf"), compiled)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    return lambda: module.train_step(model, optimizer, x, y)


def kgraph_mach_step(compiled=False):
    module = importlib.import_module("kgraph_mach")
    model = compile_losses(module.KGraphMach(4, 784, [512, 256], 128, 10, "torch", "mlp"), compiled)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=1e-4, fused=True)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    return lambda: module.train_step(model, optimizer, x, y)


def synthgrad_step(method):
    """One step of synthgrad_demo's --task mnist learner (its defaults: 3 x 256, batch 256)."""
    def build():
        module = importlib.import_module("synthgrad_demo")
        args = SimpleNamespace(width=256, layers=3, sg_hidden=256, lr=3e-4, sg_lr=3e-3)
        data = SimpleNamespace(input_size=784, num_classes=10)
        learner = module.Learner(method, args, data, seed=0)
        x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
        return lambda: learner.step(x, y)
    return build


# script name -> a function returning a zero-argument training step at default sizes
STEPS = {"single_mach": single_mach_step, "sequential_mach": sequential_mach_step,
         "kgraph_mach": kgraph_mach_step, "synthgrad_backprop": synthgrad_step("backprop"),
         "synthgrad_dni": synthgrad_step("dni"), "synthgrad_cdni": synthgrad_step("cdni")}
# the scripts whose step can also be timed with its losses under torch.compile (--compile)
COMPILABLE = ("sequential_mach", "kgraph_mach")


def optimizer_seconds_per_step(step, steps=50):
    """Seconds per step spent inside optimizer.step() (every optimizer, via torch's global hooks)."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    spent, began = [0.0], [0.0]
    handles = [register_optimizer_step_pre_hook(lambda *_: began.__setitem__(0, time.perf_counter())),
               register_optimizer_step_post_hook(
                   lambda *_: spent.__setitem__(0, spent[0] + time.perf_counter() - began[0]))]
    try:
        for _ in range(steps):
            step()
    finally:
        for handle in handles:
            handle.remove()
    return spent[0] / steps


def measure(name, step, seconds, compiled=None):
    """The figures of one window. With `compiled` (the same model's step with its losses
    compiled: the same matmuls, other kernels around them), it takes turns with the rest."""
    step()  # build optimizer state before counting
    with FlopCounterMode(display=False) as counter:
        step()
    recorder = RecordMatmuls()
    with recorder:
        step()
    flops = counter.get_total_flops()
    plain = unbatched(recorder.calls)
    (step_time, plain_time, own_time, *compiled_time), ratio = interleaved_seconds(
        [step, replay(plain), replay(recorder.calls), *([compiled] if compiled else [])], seconds)
    plain_ratio, own_ratio = ratio(1, 0), ratio(2, 0)
    gemm_time = min(plain_time, own_time)
    optimizer_time = optimizer_seconds_per_step(step)
    if compiled:  # against the same faster GEMM replay as the eager step
        gemm = 1 if plain_ratio < own_ratio else 2
        extra = {"compiled_step_ms": round(compiled_time[0] * 1e3, 3),
                 "efficiency_compiled": round(ratio(gemm, 3), 3)}
    else:
        extra = {}
    return {"script": name, "gflop_per_step": round(flops / 1e9, 4),
            "matmuls_per_step": len(recorder.calls), "plain_matmuls_per_step": len(plain),
            "step_ms": round(step_time * 1e3, 3), "gemm_only_ms": round(gemm_time * 1e3, 3),
            "gemm_plain_ms": round(plain_time * 1e3, 3), "gemm_own_calls_ms": round(own_time * 1e3, 3),
            "optimizer_ms": round(optimizer_time * 1e3, 3),
            # the best efficiency possible if nothing but the GEMMs and the optimizer cost time
            "bound_gemm_plus_optimizer": round(gemm_time / (gemm_time + optimizer_time), 3),
            "step_gflops": round(flops / step_time / 1e9, 1),
            "gemm_gflops": round(flops / gemm_time / 1e9, 1),
            "efficiency_plain": round(plain_ratio, 3), "efficiency_own_calls": round(own_ratio, 3),
            "efficiency": round(min(plain_ratio, own_ratio), 3), "target": 0.7, **extra}


def measure_repeatedly(name, seconds, repeats, compile=False):
    """`repeats` measurements of one script: the median of every figure, and the efficiencies
    seen. With `compile`, the same step with its losses compiled is timed beside the eager
    one, and its first call, which compiles, as `compile_s`."""
    compiled = None
    if compile and name in COMPILABLE:
        compiled = STEPS[name](compiled=True)
        began = time.perf_counter()
        try:
            compiled()
        except Exception as error:  # no C++ compiler, or an inductor limitation
            raise cli.UserError(f"torch.compile failed for {name} ({type(error).__name__}: "
                                f"{str(error).splitlines()[0][:200]}); it needs a working C++ "
                                f"compiler; run without --compile") from None
        compile_seconds = round(time.perf_counter() - began, 1)
    runs = [measure(name, STEPS[name](), seconds, compiled) for _ in range(repeats)]
    row = {key: (round(statistics.median(r[key] for r in runs), 3) if isinstance(value, float) else value)
           for key, value in runs[0].items()}
    row["efficiency_repeats"] = [r["efficiency"] for r in runs]
    if compiled:
        row["efficiency_compiled_repeats"] = [r["efficiency_compiled"] for r in runs]
        row["compile_s"] = compile_seconds
    return row


def targets(rows, goal=0.7):
    """One goal per script, and per compiled variant: efficiency >= goal, met or not."""
    def windows(runs):
        return f"; windows {' / '.join(f'{e:.2f}' for e in runs)}" if len(runs) > 1 else ""

    found = []
    for r in rows:
        found.append({"figure": f"compute efficiency: {r['script']} step ÷ GEMM-only, same shapes"
                                f"{windows(r['efficiency_repeats'])}",
                      "value": r["efficiency"], "target": f">= {goal}", "met": r["efficiency"] >= goal})
        if "efficiency_compiled" in r:
            found.append({"figure": f"compute efficiency: {r['script']} step with its losses under "
                                    f"torch.compile (not what the script runs; first call "
                                    f"{r['compile_s']} s){windows(r['efficiency_compiled_repeats'])}",
                          "value": r["efficiency_compiled"], "target": f">= {goal}",
                          "met": r["efficiency_compiled"] >= goal})
    return found


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--threads", type=cli.positive_int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=cli.positive_float, default=12.0,
                        help="timing window per script (step and GEMM replays alternate inside it)")
    parser.add_argument("--repeats", type=cli.positive_int, default=3,
                        help="timing windows per script; the median is reported (default 3)")
    parser.add_argument("--compile", action="store_true",
                        help=f"also time {' and '.join(COMPILABLE)} with their losses under "
                             f"torch.compile (the first call compiles; needs a C++ compiler)")
    parser.add_argument("--json", default="results/benchmarks/compute_efficiency.json",
                        help="where to write the figures and their targets as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure_repeatedly(name, args.seconds, args.repeats, args.compile) for name in args.scripts]
    print(f"compute efficiency on {hardware(torch.device('cpu'))}")
    print(f"{'script':<18} {'GFLOP/step':>10} {'step ms':>8} {'GEMM ms':>8} {'optim ms':>8} "
          f"{'step GFLOP/s':>12} {'GEMM GFLOP/s':>12} {'efficiency':>10} {'(runs)':>16} {'bound':>6}")
    for r in rows:
        verdict = "met" if r["efficiency"] >= r["target"] else "MISSED"
        runs = "/".join(f"{e:.2f}" for e in r["efficiency_repeats"])
        print(f"{r['script']:<18} {r['gflop_per_step']:>10.3f} {r['step_ms']:>8.2f} "
              f"{r['gemm_only_ms']:>8.2f} {r['optimizer_ms']:>8.2f} {r['step_gflops']:>12.1f} "
              f"{r['gemm_gflops']:>12.1f} {r['efficiency']:>10.2f} {runs:>16} "
              f"{r['bound_gemm_plus_optimizer']:>6.2f}  (target >= 0.7: {verdict})")
    for r in rows:
        if "efficiency_compiled" in r:
            verdict = "met" if r["efficiency_compiled"] >= r["target"] else "MISSED"
            runs = "/".join(f"{e:.2f}" for e in r["efficiency_compiled_repeats"])
            print(f"{r['script']:<18} with its losses under torch.compile: step {r['compiled_step_ms']:.2f} ms, "
                  f"efficiency {r['efficiency_compiled']:.2f} ({runs}), first call (compiling) "
                  f"{r['compile_s']:.1f} s  (target >= 0.7: {verdict})")
    print(f"GEMM ms: the step's matmuls replayed alone, the faster of as called and split per layer; "
          f"efficiency = GEMM ms / step ms, median of {args.repeats} windows of alternating calls; "
          f"bound = GEMM ms / (GEMM ms + optimizer ms)")
    result = {"benchmark": "compute_efficiency", "hardware": hardware(torch.device("cpu")),
              "torch": torch.__version__, "rows": rows, "targets": targets(rows)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    cli.run_script(main)
