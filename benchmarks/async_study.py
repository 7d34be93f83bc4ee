"""When asynchrony pays: async_mach.py on K virtual machines (--backend virtual,
common/virtual_time.py), against link latency, the number of components and a
straggler, beside the synchronous chain trained end to end by backprop on the
same virtual machines. Writes <json> (default results/benchmarks/async_study.json)
and, with --plot, assets/async_study_*.png.

Three ways to train the same components (async_mach.Component) over the same links:
  student  async MACH, --forward student: never waits for a neighbour;
  child    async MACH, --forward child: a step waits for its child's answer (--max-depth 2);
  chain    the K components as one network: e_0 = t_0(x, 0), e_k = t_k(x, e_{k-1}), the
           top's logits; CE of the top, backprop through all. Machine k runs stage k, so
           a step costs every stage's forward and backward, one after another, plus
           2 (K - 1) hops of latency, plus the slowest machine's Adam step (in parallel).
           Not the baseline a user with K machines runs: nothing is pipelined. That fair
           baseline is GPipe, 1F1B or DDP, priced the same way in benchmarks/parallel_virtual.py
           (on the parallel race's network: its seconds are not these cells'). The chain stays
           as the components' own end-to-end network.
Every cell is priced by the same --machine, passed explicitly (so each is deterministic
and its command complete): by default async_mach's own defaults, 83.46 GFLOPS, 8.466
Gelem/s, 6.41 us per op (common/runtime_flags.DEFAULT_MACHINE: this study measured them,
one thread, on its VM); --machine-speed sets others, or `measure` probes this machine
(one thread). The JSON records them ("machine") and never mixes cells priced otherwise.
The calibration's `matched` cells keep these prices and add --speeds, the processes'
training step rate / the virtual one's: they are priced at the speed the processes ran.
Each cell stops once every component reaches --target (or after --steps).
Time to target: virtual seconds until the top component (K-1), and the slowest
one, first reach --target on the whole test set, evaluated every --eval-every steps.

Slices (--slices; the full grid does not fit these 2 cores, --full runs it):
  latency      K = 4 sequence; latency 0, 10, 50, 200, 1000 ms; student, child, chain
  components   50 ms; sequence K = 2, 8 (4 from the latency slice) student, child at K = 2,
               chain K = 2, 8, 16; kgraph K = 2, 4 student
  straggler    K = 4 sequence, 50 ms, component 1 ten times slower, --straggler-seconds
               of virtual time: each one's step rate against the same run without it
  wall         K = 32 sequence student, 50 ms, --wall-steps steps: the wall time it takes
  calibration  K = 2 sequence, latency 0, 10, 50 ms, seeds 0-2, --calibration-steps steps:
               virtual against the process backend (one core each), then virtual again at
               the speed the processes ran (--speeds): the schedule apart from the prices

    python benchmarks/async_study.py --plot           # about 70 minutes on 2 cores (2 jobs)
"""
import concurrent.futures
import csv
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402

SLICES = ("calibration", "latency", "components", "straggler", "wall")


# ============================================================================ one cell
def run_async(args, name, K, latency_ms, forward="student", topology="sequence", seed=0,
              backend="virtual", speeds=None, steps=None, seconds=None, stop=True):
    """async_mach.py as a user would run it; the cell's figures from its run folder."""
    out = Path(args.out) / name
    flags = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--out", out, "--seed", seed,
             "--backend", backend, "--threads", 1, "--components", K, "--topology", topology,
             "--forward", forward, "--latency-ms", latency_ms, "--iterations", steps or args.steps,
             "--eval-every", args.eval_every, "--log-seconds", 0.25 if backend == "virtual" else 1]
    if backend == "virtual":
        flags += ["--machine", *args.machine_speed]
        flags += ["--stop-at-accuracy", args.target] if stop else []
        flags += ["--speeds", *speeds] if speeds else []
    flags += ["--seconds", seconds] if seconds else []
    began = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "async_mach.py"), *map(str, flags)], cwd=ROOT,
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"{name}: async_mach.py failed: {result.stderr.strip()[-500:]}")
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    curves = [[(float(r["seconds"]), float(r[f"acc/component_{i}"])) for r in rows if r.get(f"acc/component_{i}")]
              for i in range(K)]
    reached = {i: next((t for t, a in curves[i] if a >= args.target), None) for i in range(K)}
    parts = summary["components"]
    print(f"  {name}: top {reached[K - 1]} s, wall {wall:.0f} s", flush=True)
    return dict(name=name, method=forward, topology=topology, K=K, latency_ms=latency_ms, seed=seed,
                backend=backend, speeds=speeds, top_seconds=reached[K - 1],
                slowest_seconds=None if None in reached.values() else max(reached.values()),
                steps={c: p["steps"] for c, p in parts.items()},
                steps_per_second={c: p["steps_per_second"] for c, p in parts.items()},
                train_steps_per_second={c: p["train_steps_per_second"] for c, p in parts.items()},
                staleness={c: p["staleness"] for c, p in parts.items()},
                mean_staleness=summary["mean_staleness"], final=summary["test_accuracy"],
                curve=curves[-1], wall_seconds=round(wall, 1),
                real_seconds=summary.get("real_seconds"))


def run_chain(args, name, K, latency_ms, speeds=None, steps=None, seconds=None):
    """The synchronous chain, trained end to end, on K virtual machines (see the docstring)."""
    import torch
    import torch.nn.functional as F
    import async_mach as am
    from common.data import Batches, load_data
    from common.models import make_optimizer
    from common.evaluation import evaluate
    from common.virtual_time import VirtualClock
    torch.set_num_threads(1)
    began, data = time.perf_counter(), load_data(args.dataset, args.data_dir, torch.device("cpu"), flat=True)
    speeds = speeds or [1.0] * K
    stages = []
    for k in range(K):  # each stage seeded as async_mach seeds component k
        torch.manual_seed(args.seed * 100 + k)
        stages.append(am.Component(data.input_size, [512, 256], 128, data.num_classes, "tf"))
    optimizers = [make_optimizer(list(s.parameters()), "adam", lr=1e-4) for s in stages]
    machine = dict(zip(("gflops", "gelements", "op_us"), args.machine_speed))
    clocks = [VirtualClock(k, None, machine, speeds[k]) for k in range(K)]
    batches = iter(Batches(data.train_x, data.train_y, 50, seed=args.seed))

    def predict(x):
        e = torch.zeros(len(x), 128)
        for s in stages:
            e = s.embed(x, e)
        return stages[-1].logits(e)

    t, points, reached, step = 0.0, [], None, 0
    while step < (steps or args.steps) and not (seconds and t >= seconds):
        if step % args.eval_every == 0:
            accuracy = evaluate(predict, data.test_x, data.test_y)[1]
            points.append((round(t, 3), accuracy))
            if accuracy >= args.target and reached is None:
                reached = t
                if not seconds:
                    break
        x, y = next(batches)
        before = [c.t for c in clocks]
        inputs, outputs = [], []
        for k, s in enumerate(stages):  # forward, machine by machine
            with clocks[k]:
                e_in = (outputs[-1].detach() if outputs else torch.zeros(len(x), 128)).requires_grad_(k > 0)
                inputs.append(e_in)
                outputs.append(s.embed(x, e_in))
        with clocks[-1]:
            loss = F.cross_entropy(stages[-1].logits(outputs[-1]), y)
            loss.backward()
        for k in range(K - 2, -1, -1):  # backward, machine by machine
            with clocks[k]:
                outputs[k].backward(inputs[k + 1].grad)
        work = sum(c.t - b for c, b in zip(clocks, before))
        adam = []
        for k, optimizer in enumerate(optimizers):  # each machine its own, at the same time
            with clocks[k]:
                b = clocks[k].t
                optimizer.step()
                optimizer.zero_grad()
                adam.append(clocks[k].t - b)
        t += work + max(adam) + 2 * (K - 1) * latency_ms / 1000
        step += 1
    print(f"  {name}: top {reached} s, wall {time.perf_counter() - began:.0f} s", flush=True)
    return dict(name=name, method="chain", topology="sequence", K=K, latency_ms=latency_ms, seed=args.seed,
                speeds=speeds, top_seconds=reached, slowest_seconds=reached, steps=step,
                steps_per_second=round(step / max(t, 1e-9), 2), curve=points,
                wall_seconds=round(time.perf_counter() - began, 1))


# ============================================================================ the slices
def cells(args, slices, done):
    """(key, function, arguments) of every cell of the chosen slices (given those done)."""
    todo, latencies = [], args.latencies
    if "latency" in slices:
        for ms in latencies:
            todo += [(f"latency/student-{ms:g}ms", run_async, (4, ms)),
                     (f"latency/child-{ms:g}ms", run_async, (4, ms, "child")),
                     (f"latency/chain-{ms:g}ms", run_chain, (4, ms))]
    if "components" in slices:
        for K in args.components:
            if K != 4:
                todo.append((f"components/student-K{K}", run_async, (K, 50)))
            if K in args.child_components:
                todo.append((f"components/child-K{K}", run_async, (K, 50, "child")))
        todo += [(f"components/kgraph-K{K}", run_async, (K, 50, "student", "kgraph"))
                 for K in args.kgraph_components]
        todo += [(f"components/chain-K{K}", run_chain, (K, 50)) for K in args.chain_components if K != 4]
    if "straggler" in slices:
        slow, s = [1, 0.1, 1, 1], args.straggler_seconds
        for label, speeds in (("even", None), ("slow1", slow)):
            todo += [(f"straggler/student-{label}", run_async,
                      dict(K=4, latency_ms=50, speeds=speeds, seconds=s, steps=10**6, stop=False)),
                     (f"straggler/chain-{label}", run_chain,
                      dict(K=4, latency_ms=50, speeds=speeds, seconds=s, steps=10**6))]
    if "wall" in slices:
        todo.append(("wall/student-K32", run_async, dict(K=32, latency_ms=50, steps=args.wall_steps,
                                                         stop=False)))
    if "calibration" in slices:
        for ms in (0, 10, 50):
            for seed in (0, 1, 2):
                run = dict(K=2, latency_ms=ms, seed=seed, steps=args.calibration_steps, stop=False)
                for backend in ("virtual", "process"):
                    todo.append((f"calibration/{backend}-{ms:g}ms-seed{seed}", run_async,
                                 dict(run, backend=backend)))
                virtual, process = (done.get(f"calibration/{b}-{ms:g}ms-seed{seed}")
                                    for b in ("virtual", "process"))
                if virtual and process:  # the scheduling model alone: priced at the speed the processes ran
                    speed = statistics.mean(process["train_steps_per_second"][c] / rate
                                            for c, rate in virtual["steps_per_second"].items())
                    todo.append((f"calibration/matched-{ms:g}ms-seed{seed}", run_async,
                                 dict(run, speeds=[round(speed, 3)] * 2)))
    return todo


def run_cell(args, key, function, arguments):
    return key, (function(args, key, **arguments) if isinstance(arguments, dict) else function(args, key, *arguments))


def run_slices(args, results, path):
    """Every cell not yet in the JSON: virtual ones --jobs at a time (deterministic, so sharing
    the cores changes nothing but the wall time), then alone those whose time is the result:
    the process backend's, and the wall time of K = 32."""
    def keep(key, value):
        results["cells"][key] = value
        results.update(tables(results))
        path.write_text(json.dumps(results, indent=1) + "\n")
    spawn = multiprocessing.get_context("spawn")  # no forked copy of a process that has run torch
    for _ in range(2):  # the second round: cells priced by the first's (calibration/matched-*)
        todo = [cell for cell in cells(args, args.slices, results["cells"]) if cell[0] not in results["cells"]]
        alone = [c for c in todo if c[0].startswith(("calibration/process", "wall/"))]
        shared = [c for c in todo if c not in alone]
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            for future in concurrent.futures.as_completed([pool.submit(run_cell, args, *c) for c in shared]):
                keep(*future.result())
        for cell in alone:
            keep(*run_cell(args, *cell))


# ============================================================================ what it shows
def tables(results):
    """The README's tables and the goals, from whichever cells have been measured."""
    c, rows, targets = results["cells"], {}, []

    def fmt(value, cell=None):  # not reached: the best the top did
        if value is not None:
            return round(value, 1)
        best = max((a for _, a in cell["curve"]), default=None) if cell else None
        return "not reached" + (f" (top's best {100 * best:.1f} %)" if best is not None else "")
    latency = []
    for ms in sorted({v["latency_ms"] for k, v in c.items() if k.startswith("latency/")}):
        entry = {"latency ms": ms}
        for method in ("student", "child", "chain"):
            cell = c.get(f"latency/{method}-{ms:g}ms")
            entry[f"{method}: top"] = fmt(cell["top_seconds"], cell) if cell else "-"
            if method != "chain":
                entry[f"{method}: slowest"] = fmt(cell["slowest_seconds"]) if cell else "-"
        latency.append(entry)
    rows["virtual seconds to the target, K = 4 sequence"] = latency
    components = []
    for key, cell in sorted(c.items(), key=lambda kv: (kv[1]["K"], kv[0])):
        if key.startswith("components/") or (key.startswith("latency/") and cell["latency_ms"] == 50):
            components.append({"K": cell["K"], "method": f"{cell['method']} ({cell['topology']})",
                               "top": fmt(cell["top_seconds"], cell), "slowest": fmt(cell["slowest_seconds"]),
                               "wall s": cell["wall_seconds"]})
    rows["virtual seconds to the target at 50 ms, against K"] = components
    zero, fifty = c.get("latency/student-0ms"), c.get("latency/student-50ms")
    chain0, chain50 = c.get("latency/chain-0ms"), c.get("latency/chain-50ms")
    ratio = lambda a, b: a and b and a["top_seconds"] and b["top_seconds"] and round(
        a["top_seconds"] / b["top_seconds"], 2)
    targets.append(goal("top component's time to target at 50 ms ÷ at 0 ms (student)",
                        ratio(fifty, zero), "<= 1.5", lambda v: v <= 1.5))
    targets.append(goal("synchronous chain's time to target at 50 ms ÷ at 0 ms",
                        ratio(chain50, chain0), ">= 5", lambda v: v >= 5))
    even, slow = c.get("straggler/student-even"), c.get("straggler/student-slow1")
    if even and slow:
        kept = {name: round(slow["steps_per_second"][name] / even["steps_per_second"][name], 3)
                for name in even["steps_per_second"] if name != "component_1"}
        chain = [c.get(f"straggler/chain-{x}") for x in ("even", "slow1")]
        rows["one component 10x slower (component_1), K = 4 sequence, 50 ms"] = [
            {"who": name, "steps/s (virtual) even": even["steps_per_second"][name],
             "with the straggler": slow["steps_per_second"][name],
             "kept": kept.get(name, "(the straggler)"),
             "final accuracy even / straggler": f"{even['final'][name]:.4f} / {slow['final'][name]:.4f}"}
            for name in even["steps_per_second"]] + ([
            {"who": "chain", "steps/s (virtual) even": chain[0]["steps_per_second"],
             "with the straggler": chain[1]["steps_per_second"],
             "kept": round(chain[1]["steps_per_second"] / chain[0]["steps_per_second"], 3)}]
            if all(chain) else [])
        targets.append(goal("straggler 10x slower: the others' step rate kept (the least)",
                            min(kept.values()), ">= 0.8", lambda v: v >= 0.8))
    wall = c.get("wall/student-K32")
    if wall:
        steps = min(wall["steps"].values())
        targets.append(goal(f"wall minutes for K = 32 (sequence, student, 50 ms, {steps} steps each)",
                            round(wall["wall_seconds"] / 60, 1), "< 10", lambda v: v < 10))
    rows["calibration: K = 2, virtual against process backend (one core each), seeds 0-2"] = calibration(c)
    return {"rows": {title: table for title, table in rows.items() if table}, "targets": targets,
            "readme_tables": [title for title in rows if not title.startswith("one component")]}


def goal(figure, value, target, met):
    return {"figure": figure, "value": value, "target": target,
            "met": None if value in (None, False) else met(value)}


def calibration(c):
    out = []
    for ms in (0, 10, 50):
        for backend in ("virtual", "matched", "process"):
            runs = [c.get(f"calibration/{backend}-{ms:g}ms-seed{s}") for s in (0, 1, 2)]
            if not all(runs):
                continue
            stale = [r["mean_staleness"] for r in runs]
            top = [100 * r["final"]["component_1"] for r in runs]
            leaf = [100 * r["final"]["component_0"] for r in runs]
            share = [sum(v for k, v in r["staleness"]["component_0"].items() if int(k) <= 2)
                     / max(1, sum(r["staleness"]["component_0"].values())) for r in runs]
            rate = [r.get("train_steps_per_second", r["steps_per_second"])["component_1"] for r in runs]
            speed = statistics.mean(r["speeds"][0] for r in runs) if backend == "matched" else 1
            label = f"virtual at the processes' speed (x{speed:.2f})" if backend == "matched" else backend
            out.append({"latency ms": ms, "backend": label,
                        "mean staleness": f"{statistics.mean(stale):.2f} ± {statistics.pstdev(stale):.2f}",
                        "leaf's gradients at staleness <= 2": f"{statistics.mean(share):.2f}",
                        "accuracy top %": f"{statistics.mean(top):.2f} ± {statistics.pstdev(top):.2f}",
                        "accuracy leaf %": f"{statistics.mean(leaf):.2f} ± {statistics.pstdev(leaf):.2f}",
                        "top's training steps/s": f"{statistics.mean(rate):.1f}"})
    return out


def plot(results, assets):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c, target = results["cells"], results["target"]
    assets.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("student", "o-"), ("child", "s-"), ("chain", "^-")):
        points = sorted((v["latency_ms"], v["top_seconds"]) for k, v in c.items()
                        if k.startswith(f"latency/{method}-") and v["top_seconds"])
        if points:
            ax.plot(*zip(*points), style, label=method)
    ax.set(xscale="symlog", yscale="log", xlabel="latency per hop (ms)",
           ylabel=f"virtual s until the top reaches {100 * target:g} %",
           title="K = 4 components in sequence, Fashion-MNIST")
    ax.legend()
    fig.tight_layout()
    fig.savefig(assets / "async_study_latency.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, prefix in (("student (sequence)", "student"), ("kgraph student", "kgraph"), ("chain", "chain"),
                          ("child (sequence)", "child")):
        points = sorted((v["K"], v["top_seconds"]) for k, v in c.items() if v["top_seconds"] and (
            k.startswith(f"components/{prefix}-") or k == f"latency/{prefix}-50ms"))
        if points:
            ax.plot(*zip(*points), "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="components K", ylabel="virtual s until the top reaches target",
           title="50 ms per hop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(assets / "async_study_components.png", dpi=110)
    results["figures"] = ["assets/async_study_latency.png", "assets/async_study_components.png"]


def prices(spec, recorded, path):
    """The cells' --machine: the defaults, `measure` (one thread) or the three given; never
    other than the `recorded` prices of the cells already in the JSON."""
    import torch
    from common.runtime_flags import DEFAULT_MACHINE
    from common.machine_prices import measure_machine
    torch.set_num_threads(1)  # as the cells run (--threads 1)
    if spec not in (None, ["measure"]) and (len(spec) != 3 or "measure" in spec):
        raise cli.UserError("--machine-speed: give three prices, GFLOPS GELEMENTS OP_US, or `measure`")
    machine = (list(DEFAULT_MACHINE.values()) if spec is None
               else list(measure_machine(50).values()) if spec == ["measure"] else spec)
    if recorded and list(recorded.values()) != machine:
        raise cli.UserError(f"{path}'s cells were priced at --machine {' '.join(map(str, recorded.values()))}, "
                            f"not {' '.join(map(str, machine))}: pass --machine-speed with those, or --fresh")
    return machine


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", nargs="+", choices=SLICES, default=list(SLICES))
    parser.add_argument("--full", action="store_true",
                        help="the issue's whole grid: every latency and K, child and kgraph at every K")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=cli.positive_float, default=0.85)
    parser.add_argument("--steps", type=cli.positive_int, default=3000, help="at most, per component")
    parser.add_argument("--eval-every", type=cli.positive_int, default=100)
    parser.add_argument("--latencies", type=cli.nonnegative_float, nargs="+", default=[0, 10, 50, 200, 1000])
    parser.add_argument("--components", type=cli.positive_int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--child-components", type=cli.positive_int, nargs="+", default=[2])
    parser.add_argument("--kgraph-components", type=cli.positive_int, nargs="+", default=[2, 4])
    parser.add_argument("--chain-components", type=cli.positive_int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--straggler-seconds", type=cli.positive_float, default=20)
    parser.add_argument("--wall-steps", type=cli.positive_int, default=300)
    parser.add_argument("--calibration-steps", type=cli.positive_int, default=600)
    parser.add_argument("--machine-speed", nargs="+", default=None, metavar="PRICE",
                        type=lambda text: text if text == "measure" else cli.positive_float(text),
                        help="GFLOPS GELEMENTS OP_US of every cell, or `measure`: this machine's, one "
                             "thread (default: async_mach's, common/runtime_flags.DEFAULT_MACHINE)")
    parser.add_argument("--jobs", type=cli.positive_int, default=2, help="virtual cells run at once")
    parser.add_argument("--out", default="runs/async_study")
    parser.add_argument("--json", default=str(ROOT / "results" / "benchmarks" / "async_study.json"))
    parser.add_argument("--fresh", action="store_true", help="forget the cells already in the JSON")
    parser.add_argument("--plot", action="store_true", help="draw assets/async_study_*.png")
    args = parser.parse_args(argv)
    if args.full:
        args.components = [2, 4, 8, 16, 32]
        args.child_components = args.kgraph_components = args.chain_components = args.components
    path = Path(args.json)
    results = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    args.machine_speed = prices(args.machine_speed, results.get("machine") if results.get("cells") else None, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from benchmarks.async_efficiency import machine
    results.update(benchmark="async_study", **machine(), target=args.target, seed=args.seed,
                   machine=dict(zip(("gflops", "gelements", "op_us"), args.machine_speed)),
                   slices=args.slices, cells=results.get("cells", {}))
    run_slices(args, results, path)
    results.update(tables(results))
    if args.plot:
        plot(results, ROOT / "assets")
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    cli.run_script(main)
