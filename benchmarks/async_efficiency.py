"""Benchmark for async_mach.py: parallel efficiency, time to accuracy, a slow
child, and accuracy against simulated network latency. Every number is
measured here, by running async_mach.py as a user would, and written to
<out>/async_efficiency.json; --plot also draws assets/async_*.png.

Parts (--parts, all by default):
  efficiency  steps/s of K components, process backend, one thread each, on K
              cores, divided by K x the steps/s of one component alone on one
              thread (the issue's definition; a component with neighbours does
              more work per step than one alone: it answers spikes and grads).
              Also the same K-component run pinned to one core (taskset), which
              compares equal work: speedup / K.
  tta         seconds until the LAST component reaches --target accuracy on
              Fashion-MNIST, async process backend; against sequential_mach.py if
              that script exists (it is skipped, and says so, if not), with the same
              --batch-size; the async clock starts once every component is ready.
  slow        the parent's step rate when its child sleeps --slow-ms a loop,
              over its rate with a normal child (goal: >= 0.80).
  latency     final accuracy against --latency-ms at a fixed number of steps.

    python benchmarks/async_efficiency.py --plot     # alone on the machine: it times things
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "async_mach.py"
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402


def run(args, out, *flags, threads=1, pin=None):
    """Run async_mach.py; returns (summary, metrics rows, wall seconds)."""
    command = [sys.executable, str(SCRIPT), "--dataset", args.dataset, "--data-dir", args.data_dir,
               "--out", str(out),
               "--seed", str(args.seed), *map(str, flags)]
    if pin is not None:
        command = ["taskset", "-c", pin, *command]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"async_efficiency: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"  ran: {' '.join(command[command.index(str(SCRIPT)):])}  ({wall:.1f} s wall)", flush=True)
    return summary, rows, wall


def steps_per_second(summary):
    """Training steps per second summed over components (evaluation time excluded)."""
    return sum(c["train_steps_per_second"] for c in summary["components"].values())


def efficiency(args, out, results):
    K, seconds = args.components, args.seconds
    flags = ("--backend", "process", "--threads", "1", "--seconds", seconds,
             "--eval-every", 10**9, "--log-seconds", 5)
    alone, _, _ = run(args, out / "alone", *flags, "--components", 1)
    together, _, _ = run(args, out / "together", *flags, "--components", K)
    one_core, _, _ = run(args, out / "one_core", *flags, "--components", K, pin="0")
    r = dict(components=K, seconds=seconds,
             alone_steps_per_second=steps_per_second(alone),
             together_steps_per_second=steps_per_second(together),
             together_one_core_steps_per_second=steps_per_second(one_core))
    r["efficiency_vs_alone"] = r["together_steps_per_second"] / (K * r["alone_steps_per_second"])
    r["efficiency_same_work"] = (r["together_steps_per_second"]
                                 / (K * r["together_one_core_steps_per_second"]))
    results["efficiency"] = r
    print(f"efficiency: K={K} on {K} cores {r['together_steps_per_second']:.1f} steps/s; "
          f"one alone {r['alone_steps_per_second']:.1f} steps/s -> "
          f"{r['efficiency_vs_alone']:.3f} (target 0.85); same K on one core "
          f"{r['together_one_core_steps_per_second']:.1f} steps/s -> speedup/K "
          f"{r['efficiency_same_work']:.3f}", flush=True)


def first_time_at(rows, target, K):
    for row in rows:
        accs = [row.get(f"acc/component_{i}") for i in range(K)]
        if all(a not in (None, "") and float(a) >= target for a in accs):
            return float(row["seconds"])
    return None


def time_to_accuracy(args, out, results):
    K = args.components
    r = dict(target=args.target, components=K, iterations=args.tta_iterations, batch_size=args.batch_size)
    for backend in ("process", "thread"):
        summary, rows, wall = run(args, out / f"tta_{backend}", "--backend", backend,
                                  "--components", K, "--iterations", args.tta_iterations,
                                  "--batch-size", args.batch_size,
                                  "--eval-every", 100, "--log-seconds", 1,
                                  threads=2 if backend == "thread" else 1)
        r[backend] = dict(seconds_to_target=first_time_at(rows, args.target, K),
                          final=summary["test_accuracy"], wall_seconds=wall,
                          run=str(out / f"tta_{backend}"))
        print(f"tta: async {backend}: last component at {args.target:.2f} after "
              f"{r[backend]['seconds_to_target']} s; final {summary['test_accuracy']}", flush=True)
    sequential = ROOT / "sequential_mach.py"
    if sequential.exists():
        # Same clock as the async runs: seconds since training could start (data loaded,
        # every component ready), evaluations every 100 steps included.
        command = [sys.executable, str(sequential), "--dataset", args.dataset, "--data-dir",
                   args.data_dir, "--n-components", str(K), "--iterations", str(args.tta_iterations),
                   "--batch-size", str(args.batch_size),
                   "--eval-every", "100", "--out", str(out / "tta_sequential"), "--seed", str(args.seed)]
        began = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"async_efficiency: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
        print(f"  ran: {' '.join(command[1:])}  ({time.perf_counter() - began:.1f} s wall)", flush=True)
        with open(out / "tta_sequential" / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        reached = None
        for row in rows:
            accs = [row.get(f"acc/teacher_{i}") for i in range(K)]
            if all(a not in (None, "") and float(a) >= args.target for a in accs):
                reached = float(row["seconds"])
                break
        r["sequential"] = dict(seconds_to_target=reached, run=str(out / "tta_sequential"))
        if reached and r["process"]["seconds_to_target"]:
            r["ratio_sequential_over_async"] = reached / r["process"]["seconds_to_target"]
        print(f"tta: sequential_mach: {reached} s; ratio {r.get('ratio_sequential_over_async')}")
    else:
        r["sequential"] = "skipped: sequential_mach.py is absent from this checkout"
        print("tta: comparison with sequential_mach skipped: sequential_mach.py is absent", flush=True)
    results["time_to_accuracy"] = r


def slow_child(args, out, results):
    flags = ("--backend", "process", "--threads", "1", "--components", 2, "--seconds",
             args.seconds, "--eval-every", 10**9, "--log-seconds", 5)
    normal, _, _ = run(args, out / "slow_off", *flags)
    slowed, _, _ = run(args, out / "slow_on", *flags, "--slow-component", 0,
                       "--slow-ms", args.slow_ms)
    rate = lambda s: s["components"]["component_1"]["train_steps_per_second"]
    r = dict(slow_ms=args.slow_ms, parent_normal=rate(normal), parent_with_slow_child=rate(slowed),
             child_normal=normal["components"]["component_0"]["train_steps_per_second"],
             child_slowed=slowed["components"]["component_0"]["train_steps_per_second"])
    r["ratio"] = r["parent_with_slow_child"] / r["parent_normal"]
    results["slow_child"] = r
    print(f"slow: parent {r['parent_with_slow_child']:.1f} steps/s with a child slowed by "
          f"{args.slow_ms} ms, {r['parent_normal']:.1f} normally -> {r['ratio']:.2f} (goal >= 0.80)",
          flush=True)


def latency(args, out, results):
    r = []
    for ms in args.latencies:
        summary, _, wall = run(args, out / f"latency_{ms:g}", "--backend", "thread",
                               "--components", args.components, "--iterations",
                               args.latency_iterations, "--latency-ms", ms, "--jitter-ms", ms / 5,
                               "--eval-every", args.latency_iterations, "--log-seconds", 5,
                               threads=2)
        acc = summary["test_accuracy"]
        r.append(dict(latency_ms=ms, jitter_ms=ms / 5, accuracy=acc,
                      mean_accuracy=sum(acc.values()) / len(acc),
                      mean_staleness=summary["mean_staleness"], wall_seconds=wall))
        print(f"latency: {ms:g} ms -> accuracy {acc}, staleness {summary['mean_staleness']}",
              flush=True)
    results["latency"] = r


def plot(results, assets):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    assets.mkdir(exist_ok=True)
    if "time_to_accuracy" in results:
        tta = results["time_to_accuracy"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in ("thread", "process", "sequential"):
            entry = tta.get(name)
            if not isinstance(entry, dict):
                continue
            with open(Path(entry["run"]) / "metrics.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            columns = [c for c in rows[0] if c.startswith("acc/")]
            for column in columns:
                points = [(float(r["seconds"]), float(r[column])) for r in rows if r.get(column)]
                ax.plot(*zip(*points), label=f"{name} {column[4:]}")
        ax.axhline(tta["target"], color="grey", linestyle=":")
        ax.set(xlabel="seconds from when training could start", ylabel="test accuracy", ylim=(0.5, 0.92),
               title=f"async_mach, {tta['components']} components, Fashion-MNIST")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(assets / "async_accuracy_vs_time.png", dpi=110)
    if "latency" in results:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        lat = results["latency"]
        ax.plot([r["latency_ms"] for r in lat], [r["mean_accuracy"] for r in lat], "o-")
        ax.set(xscale="symlog", xlabel="--latency-ms (jitter = latency/5)",
               ylabel="mean final test accuracy", title="accuracy against network delay")
        fig.tight_layout()
        fig.savefig(assets / "async_latency.png", dpi=110)


def tables(results):
    """What the README shows, from whichever parts have been measured: "rows" (titled
    tables) and "targets" ({figure, value, target, met}; met None when not measured)."""
    rates, eff = [], results.get("efficiency")
    if eff:
        K = eff["components"]
        rates += [("steps/s, one component alone, 1 thread", round(eff["alone_steps_per_second"], 1)),
                  (f"steps/s, K = {K} components, process backend, 1 thread each",
                   round(eff["together_steps_per_second"], 1)),
                  ("parallel efficiency: steps/s ÷ (K × one alone's)",
                   round(eff["efficiency_vs_alone"], 3)),
                  ("steps/s, the same K processes pinned to one core",
                   round(eff["together_one_core_steps_per_second"], 1)),
                  ("speedup of K cores over one core, ÷ K (equal work)",
                   round(eff["efficiency_same_work"], 3))]
    tta = results.get("time_to_accuracy")
    if tta:
        for name in ("process", "thread", "sequential"):
            entry, who = tta.get(name), "sequential_mach" if name == "sequential" else f"async {name}"
            seconds = entry.get("seconds_to_target") if isinstance(entry, dict) else entry
            rates.append((f"s (from when training could start) until the last component reaches {100 * tta['target']:g} % "
                          f"({tta['iterations']} steps each): {who}",
                          "not reached" if seconds is None else seconds))
        if tta.get("ratio_sequential_over_async"):
            rates.append(("sequential_mach's time ÷ async process's",
                          round(tta["ratio_sequential_over_async"], 2)))
    slow = results.get("slow_child")
    if slow:
        rates += [("parent steps/s, normal child", slow["parent_normal"]),
                  (f"parent steps/s, child slowed by {slow['slow_ms']:g} ms a loop",
                   slow["parent_with_slow_child"]),
                  ("parent steps/s, slowed ÷ normal", round(slow["ratio"], 2))]
    latency = [{"--latency-ms": r["latency_ms"], "--jitter-ms": r["jitter_ms"],
                "mean final accuracy %": round(100 * r["mean_accuracy"], 2),
                "per component %": " / ".join(f"{100 * v:.2f}" for v in r["accuracy"].values()),
                "mean staleness": r["mean_staleness"], "wall s": round(r["wall_seconds"])}
               for r in results.get("latency", [])]
    rows = {"rates, time to accuracy, slow child": [{"figure": f, "value": v} for f, v in rates],
            "final accuracy against simulated latency (thread backend)": latency}

    def goal(figure, value, target, met):
        return {"figure": figure, "value": value, "target": target,
                "met": None if value is None or target is None else met(value)}

    ratio = (tta or {}).get("ratio_sequential_over_async")
    K = eff["components"] if eff else "K"
    targets = [goal(f"async parallel efficiency, K = {K} processes, one core each",
                    eff and round(eff["efficiency_vs_alone"], 3), ">= 0.85", lambda v: v >= 0.85),
               goal("async: parent's step rate with its child slowed on purpose ÷ normal",
                    slow and round(slow["ratio"], 2), ">= 0.8", lambda v: v >= 0.8),
               goal(f"async (process) time to {100 * (tta or {}).get('target', 0.8):g} % accuracy, "
                    "sequential_mach's time ÷ async's", ratio and round(ratio, 2), None, None)]
    return {"rows": {title: table for title, table in rows.items() if table}, "targets": targets}


def machine():
    """hardware and torch version of this machine, for the JSON."""
    import torch
    from common.run_folder import hardware
    return {"hardware": hardware(torch.device("cpu")), "torch": torch.__version__}


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["efficiency", "tta", "slow", "latency"],
                        choices=["efficiency", "tta", "slow", "latency"])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--components", type=cli.positive_int, default=2)
    parser.add_argument("--seconds", type=cli.positive_float, default=20, help="length of each rate run")
    parser.add_argument("--target", type=cli.positive_float, default=0.80, help="time-to-accuracy target")
    parser.add_argument("--tta-iterations", type=cli.positive_int, default=1000)
    parser.add_argument("--batch-size", type=cli.positive_int, default=50,
                        help="tta: of the async and the sequential_mach runs alike (async_mach's default)")
    parser.add_argument("--slow-ms", type=cli.nonnegative_float, default=100)
    parser.add_argument("--latencies", type=cli.nonnegative_float, nargs="+", default=[0, 10, 50, 200])
    parser.add_argument("--latency-iterations", type=cli.positive_int, default=600)
    parser.add_argument("--out", default="runs/async_efficiency")
    parser.add_argument("--json", default=None, help="JSON file to write (default <out>/async_efficiency.json)")
    parser.add_argument("--plot", action="store_true", help="draw assets/async_*.png")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "efficiency" in args.parts and not shutil.which("taskset"):
        sys.exit("async_efficiency: taskset (util-linux) is needed to pin the one-core run")
    path = Path(args.json) if args.json else out / "async_efficiency.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update(benchmark="async_efficiency", **machine(), cpu_count=os.cpu_count())
    steps = dict(efficiency=efficiency, tta=time_to_accuracy, slow=slow_child, latency=latency)
    for part in args.parts:
        steps[part](args, out, results)
        results.update(tables(results))
        path.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, ROOT / "assets")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
