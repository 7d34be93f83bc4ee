"""One race, every method, against the best backprop can do: training seconds until the
test accuracy first reaches each --targets, for every method of a network and for that
network trained by backprop, each at its original hyperparameters AND at the best of a
small tuning grid; writes <json> (default results/benchmarks/race.json) and, with
--plot, assets/race_<network>.png.

Networks (more to come: the MACH MLP and the DNI net race in their own scripts today):
  tfcnn   layerwise_demo.py's TF-tutorial CNN: backprop with Adam and with SGD; submodel,
          decoupled (DGL), staged, maxdiff, kl, sim, predsim; and the control a reviewer
          asks for: backprop on the truncated networks G_k(B_k(...B_1(x))), k < K
          (--blocks k), which separates "layer-wise is faster" from "smaller is faster".

The protocol, for each network:
  1. tuning, seed 0: every method at each learning-rate factor of --factors times its
     default (constant schedule; Adam 1e-3, backprop-sgd 0.05); the best configuration
     is the one that reaches the highest target first (then the lower, then the final
     accuracy);
  2. seeds: the best configuration and the original one (factor 1) on every --seeds;
  3. the tuned backprop is the best of the network's full-network backprop methods on
     seed 0; every row is divided by it, seed for seed. This VM's speed drifts, so each
     side's seconds are first multiplied by the machine's speed measured just before and
     after its run (probe(): a fixed convolution step); the raw ratio is in the JSON.
A time to target is the method's own training clock (evaluation excluded) at the first
curve point whose accuracy on the first --eval-size test images reached the target and
whose accuracy on the whole test set then confirmed it (layerwise_demo --confirm).
Points every --eval-seconds of training; the run lasts --seconds, "not reached within"
that otherwise. Cells are kept in the JSON as they finish: a run stopped midway
resumes where it stopped (--fresh forgets them). Run it alone: it measures seconds.

    python benchmarks/race.py --plot       # tfcnn: about two hours on 2 CPU cores
    python benchmarks/race.py --quick      # every method once, tiny budget: ~3 minutes
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402

# network -> script, its targets, and method -> (flags, learning-rate flag, default rate,
# full-network backprop?)
NETWORKS = {
    "tfcnn": {
        "script": "layerwise_demo.py", "flags": ["--model", "tfcnn"], "targets": [0.85, 0.87],
        "methods": {
            "backprop (Adam)": (["--strategy", "backprop"], "--lr", 1e-3, True),
            "backprop (SGD)": (["--strategy", "backprop-sgd"], "--sgd-lr", 0.05, True),
            **{name: (["--strategy", name], "--lr", 1e-3, False)
               for name in ("submodel", "decoupled", "staged", "maxdiff", "kl", "sim", "predsim")},
            **{f"backprop, truncated to {k} block{'s' * (k > 1)}": (
                ["--strategy", "backprop", "--blocks", str(k)], "--lr", 1e-3, False) for k in (1, 2)},
        },
    },
}


# ============================================================================ one cell
def run_cell(args, network, method, factor, seed):
    """One method, one configuration, one seed: the script as a user runs it; its curve
    and its confirmed crossings from the run folder."""
    spec = NETWORKS[network]
    flags, lr_flag, lr, _ = spec["methods"][method]
    out = Path(args.out) / network / f"{slug(method)}-x{factor:g}-seed{seed}"
    command = [sys.executable, spec["script"], *spec["flags"], *flags, lr_flag, f"{lr * factor:.6g}",
               "--dataset", args.dataset, "--data-dir", args.data_dir, "--seed", str(seed),
               "--seconds", str(args.seconds), "--eval-seconds", str(args.eval_seconds),
               "--eval-size", str(args.eval_size), "--confirm", *map(str, targets(args, network)),
               "--out", str(out)]
    speed, began = [probe()], time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - began
    speed.append(probe())
    if result.returncode != 0:
        raise RuntimeError(f"{network} {method} x{factor:g} seed {seed}: {result.stderr.strip()[-400:]}")
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("strategy_seconds")]
    points = [r for r in rows if r[f"acc/{r['strategy']}"]]   # curve points, not the final row
    crossed = {f"{t:g}": next((float(r["strategy_seconds"]) for r in points if r.get("full_test_accuracy")
                               and float(r["full_test_accuracy"]) >= t), None) for t in targets(args, network)}
    cell = dict(network=network, method=method, factor=factor, lr=lr * factor, seed=seed, seconds=crossed,
                final=next(iter(summary["test_accuracy"].values())),
                curve=[(float(r["strategy_seconds"]), float(r["test_accuracy"])) for r in points],
                steps=next(iter(summary["steps"].values())), wall_seconds=round(wall, 1),
                probe=[round(v, 1) for v in speed], command=" ".join(["python", *command[1:]]))
    print(f"  {network} | {method} x{factor:g} seed {seed}: {crossed}, final {cell['final']:.4f}, "
          f"wall {cell['wall_seconds']:.0f} s", flush=True)
    return cell


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


def methods(args, network):
    return [m for m in NETWORKS[network]["methods"] if not args.methods or m in args.methods]


# ============================================================================ the protocol
def score(cell, goals):
    """Lower is better: the highest target reached first, then the lower ones, then accuracy."""
    times = [cell["seconds"][f"{t:g}"] for t in sorted(goals, reverse=True)]
    return tuple(x for t in times for x in (t is None, t or math.inf)) + (-cell["final"],)


def best_factor(cells, network, method, args):
    tried = [cells[key(network, method, f, 0)] for f in args.factors if key(network, method, f, 0) in cells]
    return min(tried, key=lambda c: score(c, targets(args, network)))["factor"] if tried else None


def key(network, method, factor, seed):
    return f"{network}/{method}/x{factor:g}/seed{seed}"


def plan(args, cells):
    """The cells still to run, in order: the grid on seed 0, then each method's best and
    original configurations on the other seeds (known once its grid is done)."""
    todo = []
    for network in args.networks:
        for method in methods(args, network):
            todo += [(network, method, f, 0) for f in args.factors]
        chosen = {m: best_factor(cells, network, m, args) for m in methods(args, network)
                  if all(key(network, m, f, 0) in cells for f in args.factors)}
        for tuned in (True, False):  # every tuned configuration first: a stopped race has those
            todo += [(network, m, f, s) for m, best in chosen.items() for f in ([best] if tuned else [1.0])
                     if tuned or best != 1.0 for s in args.seeds if s]
    return [c for c in todo if key(*c) not in cells]


def summarise(args, cells):
    """The rows (one per network, method, configuration, target), the README's table."""
    rows = []
    for network in args.networks:
        goals, spec = targets(args, network), NETWORKS[network]["methods"]
        tuned = {m: best_factor(cells, network, m, args) for m in methods(args, network)}
        full_backprop = [m for m in tuned if spec[m][3] and tuned[m] is not None]
        if not full_backprop:
            continue
        reference = min(full_backprop, key=lambda m: score(cells[key(network, m, tuned[m], 0)], goals))
        for method in tuned:
            if tuned[method] is None:
                continue
            for factor in dict.fromkeys([tuned[method], 1.0]):
                runs = [cells.get(key(network, method, factor, s)) for s in args.seeds]
                base = [cells.get(key(network, reference, tuned[reference], s)) for s in args.seeds]
                pairs = [(r, b) for r, b in zip(runs, base) if r and b]
                if not pairs:
                    continue
                for t in goals:
                    seconds = [r["seconds"][f"{t:g}"] for r, _ in pairs]
                    bp = [b["seconds"][f"{t:g}"] for _, b in pairs]
                    # per seed; drift-corrected: seconds x the machine's speed during the run
                    both = [(s * statistics.mean(r["probe"]), b * statistics.mean(base["probe"]), s / b)
                            for s, b, (r, base) in zip(seconds, bp, pairs) if s is not None and b is not None]
                    rows.append(dict(network=network, method=method, target=t,
                                     config=f"lr {pairs[0][0]['lr']:.3g} (x{factor:g} of the original), constant",
                                     tuned=factor == tuned[method], original=factor == 1.0,
                                     seeds=[r["seed"] for r, _ in pairs], seconds=seconds,
                                     backprop=f"{reference} x{tuned[reference]:g}", backprop_seconds=bp,
                                     ratio=round(statistics.mean(s / b for s, b, _ in both), 3)
                                     if both and len(both) == len(pairs) else None,
                                     raw_ratio=round(statistics.mean(raw for _, _, raw in both), 3)
                                     if both and len(both) == len(pairs) else None,
                                     final=[round(r["final"], 4) for r, _ in pairs]))
    return rows


def headline(rows, budget):
    """Two tables, tuned configurations and original ones: method | network | config | target |
    seconds to it | the tuned backprop's | ratio | final accuracy | seeds."""
    def fmt(values):
        got = [v for v in values if v is not None]
        if not got:
            return f"not reached within {budget:g} s"
        text = f"{statistics.mean(got):.1f}" + (f" ± {statistics.pstdev(got):.1f}" if len(got) > 1 else "")
        return text + (f" (reached on {len(got)} of {len(values)} seeds)" if len(got) < len(values) else "")
    tables = {}
    for title, which in (("tuned configurations (the best of the grid on seed 0)", "tuned"),
                         ("original hyperparameters", "original")):
        tables[title] = [{"method": r["method"], "network": r["network"], "config": r["config"].split(",")[0],
                          "target %": f"{100 * r['target']:g}", "seconds to target": fmt(r["seconds"]),
                          "tuned backprop's": fmt(r["backprop_seconds"]),
                          "÷ tuned backprop, raw": "-" if r["raw_ratio"] is None else f"{r['raw_ratio']:.2f}",
                          "÷ speed-corrected": "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                          "final accuracy %": fmt([100 * a for a in r["final"]]).split(" (")[0],
                          "seeds": ", ".join(map(str, r["seeds"]))} for r in rows if r[which]]
    return tables


# ============================================================================ the figure
def plot(args, cells, rows, assets):
    """Per network: accuracy (first --eval-size test images) against training seconds, the
    mean over seeds and a band of one std, for each method at its tuned configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    figures = []
    for network in args.networks:
        tuned = {r["method"] for r in rows if r["network"] == network and r["tuned"]}
        if not tuned:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        grid = np.linspace(0, args.seconds, 200)
        for method in methods(args, network):
            if method not in tuned:
                continue
            factor = best_factor(cells, network, method, args)
            curves = [cells[key(network, method, factor, s)]["curve"] for s in args.seeds
                      if key(network, method, factor, s) in cells]
            ys = np.array([np.interp(grid, *zip(*c), left=np.nan, right=np.nan) for c in curves])
            with warnings.catch_warnings():  # before a curve's first point: no value, no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
            line, = ax.plot(grid, 100 * mean, label=f"{method} (x{factor:g})",
                            linestyle="--" if "truncated" in method else "-")
            ax.fill_between(grid, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.15)
        for t in targets(args, network):
            ax.axhline(100 * t, color="grey", linewidth=0.6)
        ax.set(xlabel="training seconds (evaluation excluded)", ylabel=f"test accuracy %, first {args.eval_size}",
               ylim=(60, 92), title=f"{network}: tuned configurations, mean ± std over seeds {args.seeds}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = assets / f"race_{network}.png"
        fig.savefig(path, dpi=110)
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
    parser.add_argument("--factors", type=cli.positive_float, nargs="+", default=[1 / 3, 1.0, 3.0],
                        help="the tuning grid: learning rate x its default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seconds", type=cli.positive_float, default=45, help="training budget of a run")
    parser.add_argument("--eval-seconds", type=cli.positive_float, default=0.7)
    parser.add_argument("--eval-size", type=cli.positive_int, default=1000)
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="five methods once (seed 0, factor 1), 2 s each, targets 0.6 0.7")
    parser.add_argument("--out", default="runs/race")
    parser.add_argument("--json", default=None,
                        help="default: results/benchmarks/race.json (--quick: <out>/quick.json)")
    parser.add_argument("--fresh", action="store_true", help="forget the cells already in the JSON")
    parser.add_argument("--plot", action="store_true", help="draw assets/race_<network>.png")
    parser.add_argument("--report", action="store_true", help="run nothing: tables and figures from the JSON")
    args = parser.parse_args(argv)
    if 0 not in args.seeds:
        parser.error("--seeds: the tuning runs on seed 0; include 0")
    unknown = set(args.methods or []) - {m for n in args.networks for m in NETWORKS[n]["methods"]}
    if unknown:
        known = [m for n in args.networks for m in NETWORKS[n]["methods"]]
        parser.error(f"--methods: no method {sorted(unknown)}; choose among {known}")
    if args.quick:
        args.methods = args.methods or ["backprop (Adam)", "decoupled", "staged", "predsim",
                                        "backprop, truncated to 1 block"]
        args.factors, args.seeds, args.seconds, args.eval_seconds = [1.0], [0], 2.0, 1.0
        args.eval_size, args.targets = 500, args.targets or [0.6, 0.7]
    path = Path(args.json or (Path(args.out, "quick.json") if args.quick else ROOT / "results/benchmarks/race.json"))
    settings = dict(dataset=args.dataset, seconds=args.seconds, eval_seconds=args.eval_seconds,
                    eval_size=args.eval_size, factors=args.factors,
                    accuracy_targets={n: targets(args, n) for n in NETWORKS})
    kept = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    if kept.get("cells") and {k: kept.get(k) for k in settings} != settings:
        parser.error(f"{path} holds cells measured with other settings "
                     f"({ {k: kept.get(k) for k in settings if kept.get(k) != settings[k]} }); "
                     "give those again, or --fresh, or another --json")
    path.parent.mkdir(parents=True, exist_ok=True)
    from benchmarks.async_efficiency import machine
    cells = kept.get("cells", {})
    results = dict(benchmark="race", **machine(), **settings, seeds=args.seeds, cells=cells)
    began = time.perf_counter()

    def write():
        results["results"] = summarise(args, cells)
        results["rows"] = headline(results["results"], args.seconds)
        results["readme_tables"] = list(results["rows"])[:1]
        path.write_text(json.dumps(results, indent=1) + "\n")
    for _ in range(0 if args.report else 2):  # the second round: the seeds of the configurations the first chose
        for cell in plan(args, cells):
            cells[key(*cell)] = run_cell(args, *cell)
            write()
    if args.plot:  # the quick mode's figure stays beside its JSON
        assets = path.parent if args.quick else ROOT / "assets"
        assets.mkdir(exist_ok=True)
        results["figures"] = plot(args, cells, summarise(args, cells), assets)
    write()
    print(f"written: {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
