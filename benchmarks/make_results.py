"""Write README.md's results and benchmark tables, and the plots in assets/,
from logged runs. No number in those tables is typed by hand.

Reads
  results/<script>/<run>/{config.json, summary.json, metrics.csv}   experiment runs
  results/benchmarks/<name>.json                                   benchmark outputs
and rewrites the parts of README.md between
  <!-- results:begin --> ... <!-- results:end -->
  <!-- benchmarks:begin --> ... <!-- benchmarks:end -->

Runs are grouped by their command with --seed and --out removed; a group's
row gives the seeds, mean ± std over them of every reported metric, the mean
training time and the hardware. The originals' and papers' numbers stand
beside ours with their source (they are on MNIST or another setting; ours
are on the dataset named in the row).

    python benchmarks/make_results.py [--results results] [--readme README.md] [--assets assets]
"""
import csv
import json
import re
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402
from common.plots import draw, read_metrics  # noqa: E402

# (script, metric, component) -> the reference number and where it comes from.
REFERENCES = {
    ("single_mach", "test_accuracy", "teacher"): "97.87 % on MNIST (original MACH code, seed 000)",
    ("single_mach", "test_accuracy", "student"): "97.49 % on MNIST (original MACH code, seed 000)",
    ("sequential_mach", "test_accuracy", "teacher_0"): "97.75 % on MNIST, 3 components (original)",
    ("sequential_mach", "test_accuracy", "teacher_1"): "97.90 % on MNIST, 3 components (original)",
    ("sequential_mach", "test_accuracy", "teacher_2"): "97.90 % on MNIST, 3 components (original)",
    ("synthgrad_demo", "test_accuracy", "backprop"): "98.0 % on MNIST (Jaderberg et al. 2016, 3-layer FCN)",
    ("synthgrad_demo", "test_accuracy", "dni"): "97.8 % on MNIST (Jaderberg et al. 2016, 3-layer FCN)",
    ("synthgrad_demo", "test_accuracy", "cdni"): "~98.0 % on MNIST (Jaderberg et al. 2016, 3-layer FCN)",
}
# summary.json key -> (label, unit, scale). Every {component: number} dict listed here gets rows.
METRICS = {"test_accuracy": ("test accuracy", "%", 100),
           "local_minus_chained": ("local − chained accuracy", "points", 100),
           "test_mse": ("test MSE", "", 1),
           "time_ratio_to_backprop": ("time to backprop's final MSE, ÷ backprop's", "x", 1),
           "seconds_per_method": ("training seconds of this method", "s", 1),
           "seconds_per_model": ("training seconds of this model", "s", 1),
           "inference_alone_ms": ("ms per test batch, the component alone", "ms", 1),
           "inference_chain_ms": ("ms per test batch, the chain 0..i it replaces", "ms", 1)}
DIGITS = {"%": 2, "points": 2, "x": 2, "s": 1, "ms": 2, "": 4}

# Time to accuracy: script -> (pairs of (method, its backprop baseline), time column).
# The time column is the run's training clock, or the method's own clock where each
# method keeps one ("sec/<method>" in synthgrad_demo). Groups lacking a column are skipped.
TIME_TO_ACCURACY = {
    "single_mach": ([("student", "teacher")], lambda method: "train_seconds"),
    "sequential_mach": ([(f"teacher_{i}", f"backprop_{i}") for i in range(8)],
                        lambda method: "sec/backprop" if method.startswith("backprop") else "sec/mach"),
    "synthgrad_demo": ([("dni", "backprop"), ("cdni", "backprop")], lambda method: f"sec/{method}"),
}
TTA_FRACTION = 0.95
# Scripts whose own figures replace the common accuracy curves (layerwise plots against its race clock).
NO_CURVES = {"layerwise_demo"}
# Figures a script writes into its run folder, copied to assets/<script>_<run name>_<file>.
# script -> (files, the run names whose files are worth a figure in the README)
FIGURES = {"synthgrad_demo": (["surfaces.png"], ["lumpy", "lumpy-async"]),
           "layerwise_demo": (["loss_vs_time.png", "accuracy_vs_time.png"], ["defaults"])}
BEGIN, END = "<!-- {}:begin -->", "<!-- {}:end -->"


def strip_command(command):
    """The command without --out/--seed (and their values): what the seeds share."""
    words, kept, skip = command.split(), [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--out", "--seed"):
            skip = True
            continue
        if word.startswith(("--out=", "--seed=")):
            continue
        kept.append(word)
    return "python " + " ".join(kept)


def load_runs(results):
    """{script: {command: [run dict]}} for every run folder holding a summary."""
    groups = defaultdict(lambda: defaultdict(list))
    for summary_path in sorted(Path(results).glob("*/*/summary.json")):
        folder = summary_path.parent
        if folder.parent.name == "benchmarks":
            continue
        summary = json.loads(summary_path.read_text())
        for kind in ("alone", "chain"):  # sequential_mach: {component: {alone, chain}}
            if "inference_ms" in summary:
                summary[f"inference_{kind}_ms"] = {c: t[kind] for c, t in summary["inference_ms"].items()}
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        command = strip_command(config.get("command", f"{summary['script']}.py"))
        groups[summary["script"]][command].append({"folder": folder, "summary": summary})
    return groups


def mean_std(values, scale):
    values = [v * scale for v in values]
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def fmt(mean, std, n, unit):
    digits = DIGITS.get(unit, 4)
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")
    return text + ({"%": " %", "x": "x", "s": " s", "ms": " ms"}.get(unit, ""))


def script_table(script, commands):
    """Markdown rows for one script: a row per (command, metric, component)."""
    lines = ["| command | dataset | seeds | metric | component | mean ± std | train s | wall s | "
             "hardware | original / paper |", "|---|---|---|---|---|---|---|---|---|---|"]
    for command, runs in commands.items():
        summaries = [r["summary"] for r in runs]
        seeds = ", ".join(str(s["seed"]) for s in sorted(summaries, key=lambda s: s["seed"]))
        statuses = {s["status"] for s in summaries}
        seconds = statistics.fmean(s["train_seconds"] for s in summaries)
        walls = [s["wall_seconds"] for s in summaries if "wall_seconds" in s]
        wall = f"{statistics.fmean(walls):.1f}" if walls else "-"
        hardware = "; ".join(sorted({s.get("hardware", s["device"]) for s in summaries}))
        dataset = summaries[0]["dataset"]
        first = True
        for metric, (label, unit, scale) in METRICS.items():
            components = summaries[0].get(metric) or {}
            for component in components:
                values = [s[metric][component] for s in summaries
                          if isinstance(s.get(metric, {}).get(component), (int, float))]
                if not values:
                    continue
                mean, std = mean_std(values, scale)
                reference = REFERENCES.get((script, metric, component), "")
                cells = ([f"`{command}`", dataset, seeds] if first else ["", "", ""])
                cells += [label, component, fmt(mean, std, len(values), unit)]
                cells += [f"{seconds:.1f}", wall, hardware] if first else ["", "", ""]
                cells.append(reference)
                lines.append("| " + " | ".join(cells) + " |")
                first = False
        if statuses != {"completed"}:
            lines.append(f"| (status of these runs: {', '.join(sorted(statuses))}) ||||||||||")
    return lines


def first_time_at(rows, column, time_column, target):
    """The time_column value of the first row whose column reaches target (None if never)."""
    for row in rows:
        if row.get(column) not in (None, "") and float(row[column]) >= target:
            return float(row[time_column])
    return None


def time_to_accuracy_rows(script, commands):
    """Rows: per command and method, seconds to TTA_FRACTION of backprop's final accuracy."""
    if script == "layerwise_demo":
        return layerwise_rows(commands)
    if script not in TIME_TO_ACCURACY:
        return []
    pairs, clock = TIME_TO_ACCURACY[script]
    lines = []
    for command, runs in commands.items():
        for method, baseline in pairs:
            times, base_times, ratios, seeds = [], [], [], []
            for r in sorted(runs, key=lambda r: r["summary"]["seed"]):
                final = r["summary"].get("test_accuracy", {}).get(baseline)
                path = r["folder"] / "metrics.csv"
                if final is None or method not in r["summary"]["test_accuracy"] or not path.exists():
                    continue
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
                if not rows or clock(method) not in rows[0] or clock(baseline) not in rows[0]:
                    continue
                target = TTA_FRACTION * final
                t = first_time_at(rows, f"acc/{method}", clock(method), target)
                t_base = first_time_at(rows, f"acc/{baseline}", clock(baseline), target)
                seeds.append(r["summary"]["seed"])
                base_times.append(t_base)
                times.append(t)
                if t is not None and t_base:
                    ratios.append(t / t_base)
            if not seeds:
                continue
            n_reached = sum(t is not None for t in times)
            reached = [t for t in times if t is not None]
            base_reached = [t for t in base_times if t is not None]
            cells = [f"`{command}`", ", ".join(map(str, seeds)), f"{method} vs {baseline}",
                     fmt(*mean_std(reached, 1), len(reached), "s") if reached else "not reached",
                     fmt(*mean_std(base_reached, 1), len(base_reached), "s") if base_reached
                     else "not reached",
                     fmt(*mean_std(ratios, 1), len(ratios), "x") if ratios else "-",
                     f"{n_reached} of {len(seeds)}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def layerwise_rows(commands):
    """layerwise_demo races on the clock and records its own times to 95 % of backprop's final."""
    key = f"{TTA_FRACTION:.0%}"
    lines = []
    for command, runs in commands.items():
        for r in sorted(runs, key=lambda r: r["summary"]["seed"]):
            times = r["summary"].get("time_to_target", {})
            if "backprop" not in times:  # no backprop in this race: nothing to divide by
                continue
            base = (times.get("backprop") or {}).get(key)
            for name, record in times.items():
                if name == "backprop":
                    continue
                t = record.get(key)
                cells = [f"`{command}`", str(r["summary"]["seed"]), f"{name} vs backprop",
                         "not reached" if t is None else f"{t:.1f} s",
                         "not reached" if base is None else f"{base:.1f} s",
                         f"{t / base:.2f}x" if t is not None and base else "-",
                         "1 of 1" if t is not None else "0 of 1"]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def time_to_accuracy_table(groups):
    lines = []
    for script in sorted(groups):
        lines += time_to_accuracy_rows(script, groups[script])
    if not lines:
        return []
    head = ["| command | seeds | method vs backprop | method s | backprop s | ratio | reached |",
            "|---|---|---|---|---|---|---|"]
    return [f"Seconds of training until the test accuracy first reaches "
            f"{TTA_FRACTION:.0%} of the backprop baseline's final accuracy in the same run "
            "(evaluations are every --eval-every steps, so times are rounded up to one). "
            "The clock is the run's training time, or each method's own where it keeps one. "
            "Mean ± std over the seeds.", "", *head, *lines, ""]


def copy_figures(script, commands, assets):
    """assets/<script>_<run name>_<file> from the lowest seed's folder; the paths written."""
    written = []
    for runs in commands.values():
        first = min(runs, key=lambda r: r["summary"]["seed"])
        label = re.sub(r"-?seed\d+$", "", first["folder"].name) or "run"
        files, wanted = FIGURES.get(script, ([], []))
        if label not in wanted:
            continue
        for name in files:
            source = first["folder"] / name
            if source.exists():
                Path(assets).mkdir(parents=True, exist_ok=True)
                target = Path(assets) / f"{script}_{label}_{name}"
                shutil.copyfile(source, target)
                written.append(target)
    return written


def plot_script(script, commands, assets):
    """assets/<script>_curves.png: the first seed of every command, overlaid."""
    if script in NO_CURVES:
        return None
    runs = []
    for command, group in commands.items():
        first = min(group, key=lambda r: r["summary"]["seed"])
        path = first["folder"] / "metrics.csv"
        if path.exists() and "acc/" in path.read_text().split("\n", 1)[0]:
            label = command.replace("python ", "").replace(f"{script}.py", "").strip() or "defaults"
            runs.append((label, read_metrics(first["folder"])))
    if runs:
        Path(assets).mkdir(parents=True, exist_ok=True)
        return draw(runs, Path(assets) / f"{script}_curves.png", title=f"{script} (seed shown: lowest)")


def _get(result, *keys):
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def _verdict(value, target, higher_is_better=True):
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**missed**"


def target_rows(results):
    """The targets of the issues, each with its measured value, from the benchmark JSON."""
    load = lambda name: (json.loads(p.read_text()) if (p := Path(results, "benchmarks", f"{name}.json")).exists()
                         else {})
    data, compute = load("data_path"), load("compute_efficiency")
    message, synth, parallel = load("message_cost"), load("synthgrad_transport"), load("async_efficiency")
    rows = []

    def row(figure, value, shown, target, higher=True):
        rows.append(f"| {figure} | {shown if value is not None else '-'} | {target} | "
                    f"{_verdict(value, float(target.split()[-1].rstrip('x')), higher)} |")

    speedup = _get(data, "speedup")
    row("data path: slicing loader ÷ torchvision DataLoader, samples/s", speedup, f"{speedup}x", ">= 10x")
    share = _get(data, "data_share_of_step")
    row("data path: share of a single_mach step spent loading", share,
        f"{share:.1%}" if share is not None else None, "< 0.05", higher=False)
    def with_windows(value, runs):
        spread = f" (windows: {' / '.join(f'{e:.2f}' for e in runs)})" if runs and len(runs) > 1 else ""
        return f"{value:.2f}{spread}"

    for r in compute.get("rows", []):
        row(f"compute efficiency: {r['script']} step ÷ GEMM-only, same shapes", r["efficiency"],
            with_windows(r["efficiency"], r.get("efficiency_repeats")), ">= 0.7")
        if "efficiency_compiled" in r:
            row(f"compute efficiency: {r['script']} step with its losses under torch.compile "
                f"(not what the script runs; first call {r['compile_s']} s) ÷ GEMM-only",
                r["efficiency_compiled"],
                with_windows(r["efficiency_compiled"], r.get("efficiency_compiled_repeats")), ">= 0.7")
    eff = _get(parallel, "efficiency", "efficiency_vs_alone")
    row("async parallel efficiency, K = 2 processes on 2 cores", eff,
        f"{eff:.2f}" if eff is not None else None, ">= 0.85")
    slow = _get(parallel, "slow_child", "ratio")
    row("async: parent's step rate with a child slowed on purpose ÷ normal", slow,
        f"{slow:.2f}" if slow is not None else None, ">= 0.8")
    for key, name in (("http_over_gloo", "gloo send/recv"), ("http_over_channel", "shared-memory channel")):
        ratio = _get(message, key)
        us = _get(message, "us_per_round_trip", key.split("_")[-1])
        rows.append(f"| message cost, 128x128 float32 round trip: JSON over HTTP ÷ {name} | "
                    f"{ratio}x ({us} µs vs {_get(message, 'us_per_round_trip', 'http')} µs) | "
                    f"(ratio reported) | - |" if ratio is not None else
                    f"| message cost: JSON over HTTP ÷ {name} | - | (ratio reported) | not measured |")
    ratio = _get(synth, "time_ratio_to_backprop", "dni_async")
    row("lumpy: async DNI time to backprop's final MSE ÷ backprop's", ratio,
        f"{ratio}x" if ratio is not None else None, "<= 2x", higher=False)
    tta = _get(parallel, "time_to_accuracy", "ratio_sequential_over_async")
    if tta is not None:
        rows.append(f"| async (process) time to {_get(parallel, 'time_to_accuracy', 'target'):.0%} "
                    f"accuracy, sequential_mach's time ÷ async's | {tta:.2f} | (ratio reported) | - |")
    if not rows:
        return []
    return ["| figure | measured | target | verdict |", "|---|---|---|---|", *rows, ""]


def async_block(results):
    """async_mach's figures from benchmarks/async_efficiency.py's JSON (it logs no results/ runs)."""
    path = Path(results, "benchmarks", "async_efficiency.json")
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    lines = [f"From `python benchmarks/async_efficiency.py --plot` (raw: "
             f"`results/benchmarks/async_efficiency.json`; Fashion-MNIST, seed 0, {r.get('cpu_count')} CPUs).", "",
             "| figure | value |", "|---|---|"]
    e = r.get("efficiency")
    if e:
        lines += [f"| steps/s, one component alone, 1 thread | {e['alone_steps_per_second']:.1f} |",
                  f"| steps/s, K = {e['components']} components, process backend, 1 thread each | "
                  f"{e['together_steps_per_second']:.1f} |",
                  f"| parallel efficiency (÷ K × alone; target ≥ 0.85) | {e['efficiency_vs_alone']:.3f} |",
                  f"| same K processes pinned to one core, steps/s | "
                  f"{e['together_one_core_steps_per_second']:.1f} |",
                  f"| speedup of K cores over one core, ÷ K (equal work) | {e['efficiency_same_work']:.3f} |"]
    t = r.get("time_to_accuracy")
    if t:
        for name in ("process", "thread", "sequential"):
            entry = t.get(name)
            if isinstance(entry, dict):
                seconds = entry.get("seconds_to_target")
                lines.append(f"| wall s until the last component reaches {t['target']:.0%} "
                             f"({t['iterations']} steps each): {name if name == 'sequential' else 'async ' + name}"
                             f"{'_mach' if name == 'sequential' else ''} | "
                             f"{'not reached' if seconds is None else f'{seconds:.1f}'} |")
        if t.get("ratio_sequential_over_async"):
            lines.append(f"| sequential_mach's time ÷ async process's | {t['ratio_sequential_over_async']:.2f} |")
    sc = r.get("slow_child")
    if sc:
        lines.append(f"| parent steps/s, child slowed by {sc['slow_ms']:g} ms a loop ÷ normal "
                     f"(goal ≥ 0.80) | {sc['parent_with_slow_child']:.1f} ÷ {sc['parent_normal']:.1f} = "
                     f"{sc['ratio']:.2f} |")
    lat = r.get("latency")
    if lat:
        lines += ["", "| --latency-ms (jitter = latency/5) | mean final accuracy | per component | "
                      "mean staleness | wall s |", "|---|---|---|---|---|"]
        for x in lat:
            per = " / ".join(f"{100 * v:.2f}" for v in x["accuracy"].values())
            lines.append(f"| {x['latency_ms']:g} | {100 * x['mean_accuracy']:.2f} % | {per} | "
                         f"{x['mean_staleness']} | {x['wall_seconds']:.0f} |")
    return lines + [""]


def flatten(value, prefix=""):
    """(dotted key, value) pairs of nested dicts; lists stay one compact JSON cell."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(inner, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), json.dumps(value) if isinstance(value, list) else value


def benchmark_tables(results):
    lines = target_rows(results)
    if lines:
        lines += ["Every figure in full, as each benchmark wrote it:", ""]
    for path in sorted(Path(results, "benchmarks").glob("*.json")):
        result = json.loads(path.read_text())
        lines.append(f"**{result.get('benchmark', path.stem)}** "
                     f"({result.get('hardware', '?')}, torch {result.get('torch', '?')}; "
                     f"raw: `results/benchmarks/{path.name}`)")
        lines.append("")
        rows = result.get("rows")
        if rows:
            keys = list(dict.fromkeys(key for row in rows for key in row))  # some rows have more
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            for row in rows:
                lines.append("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
        else:
            lines.append("| figure | value |")
            lines.append("|---|---|")
            for key, value in flatten(result):
                if key not in ("benchmark", "hardware", "torch"):
                    lines.append(f"| {key} | {value} |")
        lines.append("")
    return lines


def replace_block(text, name, lines):
    begin, end = BEGIN.format(name), END.format(name)
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"make_results: README has no {begin} ... {end} block; add one")
    body = "\n".join([begin, "", *lines, "", end])
    return pattern.sub(lambda _: body, text)


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--assets", default=str(ROOT / "assets"))
    args = parser.parse_args(argv)
    groups = load_runs(args.results)
    readme_dir = Path(args.readme).resolve().parent

    def shown(path):
        path = Path(path).resolve()
        return path.relative_to(readme_dir) if path.is_relative_to(readme_dir) else path

    readme = Path(args.readme).read_text()
    # what the hand-written text shows, with every generated block emptied (so reruns agree)
    written = re.sub(r"<!-- (results[:\w-]*):begin -->.*?<!-- \1:end -->", "", readme, flags=re.S)
    lines = []
    for script in sorted(groups):
        block = [*script_table(script, groups[script]), ""]
        if script == "async_mach":  # its speed figures come from the benchmark, not from runs
            block += async_block(args.results)
        plot = plot_script(script, groups[script], args.assets)
        if plot:
            block += [f"![{script} curves]({shown(plot)})", ""]
        for figure in copy_figures(script, groups[script], args.assets):
            if f"({shown(figure)})" not in written:  # the section may show it already
                block += [f"![{figure.stem}]({shown(figure)})", ""]
        if BEGIN.format(f"results:{script}") in readme:  # the script's own section has a block
            readme = replace_block(readme, f"results:{script}", block)
            lines += [f"- `{script}`: in [its section](#{script.replace('_', '')}py)."]
        else:
            lines += [f"#### {script}", "", *block]
    if ("async_mach" not in groups and BEGIN.format("results:async_mach") in readme
            and async_block(args.results)):
        readme = replace_block(readme, "results:async_mach", async_block(args.results))
    tta = time_to_accuracy_table(groups)
    if tta:
        lines += ["", "#### Time to accuracy against backprop", "", *tta]
    if not lines:
        lines = ["(no runs logged yet under results/)"]
    readme = replace_block(readme, "results", lines)
    readme = replace_block(readme, "benchmarks", benchmark_tables(args.results) or ["(no benchmark results yet)"])
    Path(args.readme).write_text(readme)
    print(f"make_results: {sum(len(c) for c in groups.values())} command groups from "
          f"{args.results} written to {args.readme}")


if __name__ == "__main__":
    main()
