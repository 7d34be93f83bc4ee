"""One race, every method, against the best backprop can do: training seconds until the
test accuracy first reaches each target, for every method of a network and for that
network trained by backprop, each at its original hyperparameters AND at the best of a
small tuning grid; writes <json> (default results/benchmarks/race.json) and, with
--plot, assets/race_<network>.png.

Networks, and the methods that race on them (every method on its own training clock):
  tfcnn     layerwise_demo.py's TF-tutorial CNN: backprop with Adam and with SGD; submodel,
            decoupled (DGL), staged, maxdiff, kl, sim, predsim; and the control a reviewer
            asks for: backprop on the truncated networks G_k(B_k(...B_1(x))), k < K
            (--blocks k), which separates "layer-wise is faster" from "smaller is faster".
            45 s per run, points every 0.7 s on the first 1,000 test images, each crossing
            confirmed on the whole test set (layerwise_demo --confirm).
  tfcnn-bn  the same network with BatchNorm before each nonlinearity (layerwise_demo --norm
            batch, every method): backprop (Adam, SGD), decoupled, staged, sim, predsim and the
            truncated networks; tfcnn's grid, targets, seeds, budget and points.
  mach-mlp  the MACH MLP x -> 512 -> 256 -> 128 -> 10: by backprop (single_mach --baseline:
            the same MLP, no student, same batches, its own clock); single_mach's teacher
            and student; sequential_mach's chain and kgraph_mach's 4-graph, whose accuracy
            is their LEAST accurate component answering alone (each must stand in for the
            network). 1,500 steps per run; whole test set every 5 steps (single_mach, so
            backprop's crossing is timed within 2 % of it) or 25 (the slower two).
  dni-mlp   synthgrad_demo's 3-layer net (Linear, BatchNorm, ReLU): backprop, DNI and cDNI
            side by side on the same batches (--lr scales the layers; the modules keep
            --sg-lr). 2,000 steps per run, whole test set every 5 steps.

The protocol, for each network:
  1. tuning, seed 0: every method at each of the network's learning-rate factors times its
     original rate (constant); the best configuration is the one that reaches the highest
     target first (then the lower, then the final accuracy). The MACH and DNI originals
     (Adam 1e-4, 3e-5) sit below Adam's usual 1e-3, so their grids reach up to it;
  2. seeds: the best configuration and the original one (factor 1) on every --seeds;
  3. the tuned backprop is the best of the network's full-network backprop methods on
     seed 0; every row is divided by it, seed for seed. This VM's speed drifts, so each
     side's seconds are also multiplied by the machine's speed measured just before and
     after its run (probe(): a fixed convolution step): the speed-corrected ratio.
A time to target is the method's own training clock (evaluation excluded) at its first
curve point at or above the target; "not reached within" the run's budget otherwise.
Cells are kept in the JSON as they finish: a run stopped midway resumes where it stopped
(--fresh forgets them). Run it alone: it measures seconds. benchmarks/make_results.py builds
README.md's first table from the JSON's tuned rows; the findings: benchmarks/README.md.

    python benchmarks/race.py --plot       # every network: about three hours on 2 CPU cores
    python benchmarks/race.py --quick      # every network, tiny budgets: under 3 minutes
"""
import csv
import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402
from common.clocks import first_time_at  # noqa: E402


class Method(NamedTuple):
    """How one method's curve is read from its run folder: its accuracy is the lowest of
    the columns acc/<name> for `names`, against the clock column `clock`; `confirm` names
    the column that confirms a crossing on the whole test set (None: it already is)."""
    names: tuple
    clock: str
    backprop: bool = False     # the whole network by backprop: a candidate for the tuned baseline
    confirm: str | None = None


class Runner(NamedTuple):
    """One command (script and flags) training one method, or several side by side on the
    same batches; the grid scales its `lr_flag`, whose original value is `lr`."""
    command: list
    lr_flag: str
    lr: float
    methods: dict


def layerwise(name, strategy, *flags, lr_flag="--lr", lr=1e-3, backprop=False, model=("--model", "tfcnn")):
    return name, Runner(["layerwise_demo.py", *model, "--strategy", strategy, *flags], lr_flag, lr,
                        {name: Method((strategy,), "strategy_seconds", backprop, "full_test_accuracy")})


def tfcnn_race(local, *model_flags):
    """tfcnn's grid, targets, budget and points, for backprop (Adam, SGD), the `local` strategies and
    the truncated-network control, each as layerwise_demo.py --model tfcnn <model_flags>."""
    model = ("--model", "tfcnn", *model_flags)
    return dict(
        targets=[0.85, 0.87], factors=[1 / 3, 1.0, 3.0],
        budget=["--seconds", "45", "--eval-seconds", "0.7", "--eval-size", "1000"],
        quick=["--seconds", "2", "--eval-seconds", "1", "--eval-size", "500"],
        runners=dict([layerwise("backprop (Adam)", "backprop", backprop=True, model=model),
                      layerwise("backprop (SGD)", "backprop-sgd", lr_flag="--sgd-lr", lr=0.05, backprop=True,
                                model=model),
                      *(layerwise(name, name, model=model) for name in local),
                      *(layerwise(f"backprop, truncated to {k} block{'s' * (k > 1)}", "backprop", "--blocks",
                                  str(k), model=model) for k in (1, 2))]))


def components(prefix, n):
    return tuple(f"{prefix}_{i}" for i in range(n))


NETWORKS = {
    "tfcnn": tfcnn_race(("submodel", "decoupled", "staged", "maxdiff", "kl", "sim", "predsim")),
    "tfcnn-bn": tfcnn_race(("decoupled", "staged", "sim", "predsim"), "--norm", "batch"),
    "mach-mlp": dict(
        targets=[0.85, 0.87], factors=[1.0, 3.0, 10.0],
        budget=["--iterations", "1500"], quick=["--iterations", "40"],
        runners={  # backprop is timed to within 5 steps (2 % of its time to 85 %); the slow ones to 25
            "single_mach": Runner(["single_mach.py", "--baseline", "--eval-every", "5"], "--lr", 1e-4, {
                "backprop (Adam)": Method(("backprop",), "sec/backprop", backprop=True),
                "MACH teacher (single_mach)": Method(("teacher",), "sec/mach"),
                "MACH student (single_mach)": Method(("student",), "sec/mach")}),
            "sequential_mach": Runner(["sequential_mach.py", "--n-components", "3", "--eval-every", "25"],
                                      "--lr", 1e-4, {
                "MACH chain of 3, least local teacher": Method(components("teacher", 3), "train_seconds")}),
            "kgraph_mach": Runner(["kgraph_mach.py", "--k", "4", "--eval-every", "25"], "--lr", 1e-4, {
                "MACH 4-graph, least teacher": Method(components("teacher", 4), "train_seconds")})}),
    "dni-mlp": dict(
        targets=[0.85, 0.87], factors=[1.0, 3.0, 10.0, 30.0],
        budget=["--iterations", "2000", "--eval-every", "5"], quick=["--iterations", "40", "--eval-every", "20"],
        runners={"synthgrad_demo": Runner(["synthgrad_demo.py", "--method", "all"], "--lr", 3e-5, {
            "backprop (Adam)": Method(("backprop",), "sec/backprop", backprop=True),
            "DNI": Method(("dni",), "sec/dni"), "cDNI": Method(("cdni",), "sec/cdni")})}),
}
QUICK_METHODS = ["backprop (Adam)", "decoupled", "staged", "predsim", "backprop, truncated to 1 block",
                 "MACH chain of 3, least local teacher", "MACH 4-graph, least teacher", "DNI"]


# ============================================================================ one cell
def run_cell(args, network, runner_name, factor, seed):
    """One runner, one configuration, one seed: the script as a user runs it; each of its
    methods' curve and crossings read from the run folder."""
    runner, goals = NETWORKS[network]["runners"][runner_name], targets(args, network)
    out = Path(args.out) / network / f"{slug(runner_name)}-x{factor:g}-seed{seed}"
    confirm = ["--confirm", *map(str, goals)] if any(m.confirm for m in runner.methods.values()) else []
    command = [sys.executable, *runner.command, runner.lr_flag, f"{runner.lr * factor:.6g}",
               "--dataset", args.dataset, "--data-dir", args.data_dir, "--seed", str(seed),
               *budget(args, network), *confirm, "--out", str(out)]
    speed, began = [probe()], time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - began
    speed.append(probe())
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if result.returncode != 0 and summary.get("status") != "diverged":  # a diverged run keeps its curve
        raise RuntimeError(f"{network} {runner_name} x{factor:g} seed {seed}: {result.stderr.strip()[-400:]}")
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cell = dict(network=network, runner=runner_name, factor=factor, lr=runner.lr * factor, seed=seed,
                status=summary["status"], methods={name: read(method, rows, summary, goals)
                                                   for name, method in runner.methods.items()},
                steps=summary["iterations"], wall_seconds=round(wall, 1),
                probe=[round(v, 1) for v in speed], command=" ".join(["python", *command[1:]]))
    for name, got in cell["methods"].items():
        print(f"  {network} | {name} x{factor:g} seed {seed}: {got['seconds']}, final {got['final']:.4f}, "
              f"wall {cell['wall_seconds']:.0f} s{'' if cell['status'] == 'completed' else ', ' + cell['status']}",
              flush=True)
    return cell


def read(method, rows, summary, goals):
    """{seconds: {target: clock at the first point reaching it, or None}, final, curve}."""
    columns = [f"acc/{name}" for name in method.names]
    points = [dict(r, accuracy=min(float(r[c]) for c in columns)) for r in rows   # not a final-only row
              if r.get(method.clock) and all(r.get(c) for c in columns)]
    return dict(seconds={f"{t:g}": first_time_at(points, method.confirm or "accuracy", method.clock, t)
                         for t in goals},
                final=min(summary["test_accuracy"].get(name, 0.0) for name in method.names),  # 0: diverged first
                curve=[(float(r[method.clock]), r["accuracy"]) for r in points])


def probe(seconds=1.0):
    """The machine's speed now (it drifts 2-4x within minutes here): steps per second of
    tfcnn's second convolution, forward and backward, on a fixed batch of 50."""
    import torch
    conv, x = torch.nn.Conv2d(32, 64, 5, padding=2), torch.randn(50, 32, 14, 14)
    steps, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        conv(x).sum().backward()
        steps += 1
    return steps / (time.perf_counter() - began)


def slug(text):
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def targets(args, network):
    return args.targets or NETWORKS[network]["targets"]


def factors(args, network):
    return args.factors or NETWORKS[network]["factors"]


def budget(args, network):
    return NETWORKS[network]["quick" if args.quick else "budget"]


def settings(args, network):
    """What a network's cells were measured with: cells of other settings are not mixed in."""
    return dict(targets=targets(args, network), factors=factors(args, network), budget=budget(args, network),
                commands={name: r.command for name, r in NETWORKS[network]["runners"].items()})


def runners(args, network):
    """The network's runners that train at least one of --methods (default: all)."""
    return [name for name, r in NETWORKS[network]["runners"].items()
            if not args.methods or set(r.methods) & set(args.methods)]


def runner_of(network, method):
    return next(name for name, r in NETWORKS[network]["runners"].items() if method in r.methods)


def limit(network_settings):
    """The run's budget in words: '45 s' or '1500 steps'."""
    flags = network_settings["budget"]
    return (f"{flags[flags.index('--seconds') + 1]} s" if "--seconds" in flags
            else f"{flags[flags.index('--iterations') + 1]} steps")


# ============================================================================ the protocol
def score(outcome, goals):
    """Lower is better: the highest target reached first, then the lower ones, then accuracy."""
    times = [outcome["seconds"][f"{t:g}"] for t in sorted(goals, reverse=True)]
    return tuple(x for t in times for x in (t is None, t or math.inf)) + (-outcome["final"],)


def best_factor(cells, network, method, grid, goals):
    """The grid's best factor for `method` on seed 0 (None until one of its cells ran)."""
    runner = runner_of(network, method)
    tried = [cells[key(network, runner, f, 0)] for f in grid if key(network, runner, f, 0) in cells]
    return min(tried, key=lambda c: score(c["methods"][method], goals))["factor"] if tried else None


def key(network, runner, factor, seed):
    return f"{network}/{runner}/x{factor:g}/seed{seed}"


def plan(args, cells):
    """The cells still to run, in order: the grid on seed 0, then the runs of each method's
    best and original configurations on the other seeds (known once its grid is done)."""
    todo = []
    for network in args.networks:
        grid, goals = factors(args, network), targets(args, network)
        for runner in runners(args, network):
            todo += [(network, runner, f, 0) for f in grid]
        chosen = {m: best_factor(cells, network, m, grid, goals) for runner in runners(args, network)
                  for m in NETWORKS[network]["runners"][runner].methods
                  if all(key(network, runner_of(network, m), f, 0) in cells for f in grid)}
        for tuned in (True, False):  # every tuned configuration first: a stopped race has those
            todo += [(network, runner_of(network, m), f, s) for m, best in chosen.items()
                     for f in ([best] if tuned else [1.0]) if tuned or best != 1.0 for s in args.seeds if s]
    return [c for c in dict.fromkeys(todo) if key(*c) not in cells]


def summarise(cells, networks, seeds):
    """The rows (one per network, method, configuration, target), from every network of the
    JSON (`networks`: its settings) and every method with cells."""
    rows = []
    for network, measured in networks.items():
        goals, grid = measured["targets"], measured["factors"]
        spec = {m: method for r in NETWORKS[network]["runners"].values() for m, method in r.methods.items()}
        tuned = {m: best_factor(cells, network, m, grid, goals) for m in spec}
        tuned = {m: f for m, f in tuned.items() if f is not None}
        full_backprop = [m for m in tuned if spec[m].backprop]
        if not full_backprop:
            continue

        def cell(method, factor, seed):
            return cells.get(key(network, runner_of(network, method), factor, seed))
        reference = min(full_backprop, key=lambda m: score(cell(m, tuned[m], 0)["methods"][m], goals))
        for method in tuned:
            for factor in dict.fromkeys([tuned[method], 1.0]):
                pairs = [(r, b) for r, b in ((cell(method, factor, s), cell(reference, tuned[reference], s))
                                             for s in seeds) if r and b]
                if not pairs:
                    continue
                for t in goals:
                    seconds = [r["methods"][method]["seconds"][f"{t:g}"] for r, _ in pairs]
                    bp = [b["methods"][reference]["seconds"][f"{t:g}"] for _, b in pairs]
                    # per seed; drift-corrected: seconds x the machine's speed during the run
                    both = [(s * statistics.mean(r["probe"]), b * statistics.mean(base["probe"]), s / b)
                            for s, b, (r, base) in zip(seconds, bp, pairs) if s is not None and b is not None]
                    complete = bool(both) and len(both) == len(pairs)   # a ratio only where every seed got there
                    ratio, raw = ((round(statistics.mean(s / b for s, b, _ in both), 3),
                                   round(statistics.mean(raw for _, _, raw in both), 3)) if complete else (None, None))
                    rows.append(dict(network=network, method=method, target=t,
                                     config=f"lr {pairs[0][0]['lr']:.3g} (x{factor:g} of the original), constant",
                                     tuned=factor == tuned[method], original=factor == 1.0,
                                     seeds=[r["seed"] for r, _ in pairs], seconds=seconds,
                                     backprop=f"{reference} x{tuned[reference]:g}", backprop_seconds=bp,
                                     ratio=ratio, raw_ratio=raw,
                                     final=[round(r["methods"][method]["final"], 4) for r, _ in pairs],
                                     within=limit(measured)))
    return rows


def headline(rows):
    """Two tables, tuned configurations and original ones: method | network | config | target |
    seconds to it | the tuned backprop's | ratio | final accuracy | seeds."""
    def fmt(values, within):
        got = [v for v in values if v is not None]
        if not got:
            return f"not reached within {within}"
        text = f"{statistics.mean(got):.1f}" + (f" ± {statistics.pstdev(got):.1f}" if len(got) > 1 else "")
        return text + (f" (reached on {len(got)} of {len(values)} seeds)" if len(got) < len(values) else "")
    tables = {}
    for title, which in (("tuned configurations (the best of the grid on seed 0)", "tuned"),
                         ("original hyperparameters", "original")):
        tables[title] = [{"method": r["method"], "network": r["network"], "config": r["config"].split(",")[0],
                          "target %": f"{100 * r['target']:g}",
                          "seconds to target": fmt(r["seconds"], r["within"]),
                          "tuned backprop's": fmt(r["backprop_seconds"], r["within"]),
                          "÷ tuned backprop, raw": "-" if r["raw_ratio"] is None else f"{r['raw_ratio']:.2f}",
                          "÷ speed-corrected": "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                          "final accuracy %": fmt([100 * a for a in r["final"]], "").split(" (")[0],
                          "seeds": ", ".join(map(str, r["seeds"]))} for r in rows if r[which]]
    return tables


# ============================================================================ the figure
def plot(cells, networks, rows, seeds, assets):
    """Per network: accuracy against training seconds, the mean over seeds and a band of one
    std, for each method at its tuned configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    figures = []
    for network, measured in networks.items():
        tuned = {r["method"]: best_factor(cells, network, r["method"], measured["factors"], measured["targets"])
                 for r in rows if r["network"] == network and r["tuned"]}
        if not tuned:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        curves = {m: [cells[k]["methods"][m]["curve"] for s in seeds
                      if (k := key(network, runner_of(network, m), factor, s)) in cells] for m, factor in tuned.items()}
        grid = np.linspace(0, max(c[-1][0] for cs in curves.values() for c in cs if c), 200)
        for method, runs in curves.items():
            ys = np.array([np.interp(grid, *zip(*c), left=np.nan, right=np.nan) for c in runs if c])
            with warnings.catch_warnings():  # before a curve's first point: no value, no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
            line, = ax.plot(grid, 100 * mean, label=f"{method} (x{tuned[method]:g})",
                            linestyle="--" if "truncated" in method or "backprop" in method else "-")
            ax.fill_between(grid, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.15)
        for t in measured["targets"]:
            ax.axhline(100 * t, color="grey", linewidth=0.6)
        slice_ = measured["budget"][measured["budget"].index("--eval-size") + 1] if "--eval-size" in \
            measured["budget"] else None
        ax.set(xlabel="training seconds (evaluation excluded)",
               ylabel=f"test accuracy %, first {slice_} images" if slice_ else "test accuracy %",
               ylim=(60, 92), title=f"{network}: tuned configurations, mean ± std over seeds {seeds}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = assets / f"race_{network}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures.append(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
    return figures


# ============================================================================ main
def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=tuple(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--targets", type=cli.fraction, nargs="+", default=None,
                        help="test accuracies to reach (default: the network's, which its backprop reaches)")
    parser.add_argument("--factors", type=cli.positive_float, nargs="+", default=None,
                        help="the tuning grid: learning rate x its original (default: the network's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="only the runs that train these methods (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a few methods of every network once (seed 0, factor 1), tiny budgets, "
                             "targets 0.6 0.7")
    parser.add_argument("--out", default="runs/race")
    parser.add_argument("--json", default=None,
                        help="default: results/benchmarks/race.json (--quick: <out>/quick.json)")
    parser.add_argument("--fresh", action="store_true", help="forget the cells already in the JSON")
    parser.add_argument("--plot", action="store_true", help="draw assets/race_<network>.png")
    parser.add_argument("--report", action="store_true", help="run nothing: tables and figures from the JSON")
    args = parser.parse_args(argv)
    if 0 not in args.seeds:
        parser.error("--seeds: the tuning runs on seed 0; include 0")
    known = list(dict.fromkeys(m for n in args.networks for r in NETWORKS[n]["runners"].values()
                               for m in r.methods))
    unknown = set(args.methods or []) - set(known)
    if unknown:
        parser.error(f"--methods: no method {sorted(unknown)}; choose among {known}")
    if args.quick:
        args.methods = args.methods or QUICK_METHODS
        args.factors, args.seeds, args.targets = [1.0], [0], args.targets or [0.6, 0.7]
    path = Path(args.json or (Path(args.out, "quick.json") if args.quick else ROOT / "results/benchmarks/race.json"))
    kept = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    cells, measured = kept.get("cells", {}), dict(kept.get("networks", {}))
    now = {n: settings(args, n) for n in args.networks}
    changed = {n: "dataset" if kept.get("dataset") != args.dataset else now[n] for n in args.networks
               if any(c["network"] == n for c in cells.values())
               and (measured.get(n) != now[n] or kept.get("dataset") != args.dataset)}
    if changed:
        parser.error(f"{path} holds cells measured with other settings ({changed} differ); give those "
                     "again, or --fresh, or another --json")
    path.parent.mkdir(parents=True, exist_ok=True)
    from benchmarks.async_efficiency import machine
    measured.update(now)
    results = dict(benchmark="race", **machine(), dataset=args.dataset, seeds=args.seeds, networks=measured,
                   cells=cells)
    began = time.perf_counter()

    def write():
        results["results"] = summarise(cells, measured, args.seeds)
        results["rows"] = headline(results["results"])
        results["readme_tables"] = list(results["rows"])[:1]
        path.write_text(json.dumps(results, indent=1) + "\n")
    for _ in range(0 if args.report else 2):  # the second round: the seeds of the configurations the first chose
        for cell in plan(args, cells):
            cells[key(*cell)] = run_cell(args, *cell)
            write()
    if args.plot:  # the quick mode's figure stays beside its JSON
        assets = path.parent if args.quick else ROOT / "assets"
        assets.mkdir(exist_ok=True)
        results["figures"] = plot(cells, measured, summarise(cells, measured, args.seeds), args.seeds, assets)
    write()
    print(f"written: {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
