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
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
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
    ("layerwise_demo", "test_accuracy", "backprop"):
        "MLP 3x1024: 91.63 % on Fashion-MNIST (Nøkland & Eidnes 2019)",
}
METRICS = {"test_accuracy": ("test accuracy", "%"), "test_mse": ("test MSE", "")}
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
    digits = 2 if unit == "%" else 4
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")
    return text + (" %" if unit == "%" else "")


def script_table(script, commands):
    """Markdown rows for one script: a row per (command, metric, component)."""
    lines = ["| command | dataset | seeds | metric | component | mean ± std | train s | "
             "hardware | original / paper |", "|---|---|---|---|---|---|---|---|---|"]
    for command, runs in commands.items():
        summaries = [r["summary"] for r in runs]
        seeds = ", ".join(str(s["seed"]) for s in sorted(summaries, key=lambda s: s["seed"]))
        statuses = {s["status"] for s in summaries}
        seconds = statistics.fmean(s["train_seconds"] for s in summaries)
        hardware = "; ".join(sorted({s.get("hardware", s["device"]) for s in summaries}))
        dataset = summaries[0]["dataset"]
        first = True
        for metric, (label, unit) in METRICS.items():
            components = summaries[0].get(metric) or {}
            for component in components:
                values = [s[metric][component] for s in summaries if component in s.get(metric, {})]
                mean, std = mean_std(values, 100 if unit == "%" else 1)
                reference = REFERENCES.get((script, metric, component), "")
                cells = ([f"`{command}`", dataset, seeds] if first else ["", "", ""])
                cells += [label, component, fmt(mean, std, len(values), unit)]
                cells += [f"{seconds:.1f}", hardware] if first else ["", ""]
                cells.append(reference)
                lines.append("| " + " | ".join(cells) + " |")
                first = False
        if statuses != {"completed"}:
            lines.append(f"| (status of these runs: {', '.join(sorted(statuses))}) |||||||||")
    return lines


def plot_script(script, commands, assets):
    """assets/<script>_curves.png: the first seed of every command, overlaid."""
    runs = []
    for command, group in commands.items():
        first = min(group, key=lambda r: r["summary"]["seed"])
        if (first["folder"] / "metrics.csv").exists():
            label = command.replace("python ", "").replace(f"{script}.py", "").strip() or "defaults"
            runs.append((label, read_metrics(first["folder"])))
    if runs:
        Path(assets).mkdir(parents=True, exist_ok=True)
        return draw(runs, Path(assets) / f"{script}_curves.png", title=f"{script} (seed shown: lowest)")


def benchmark_tables(results):
    lines = []
    for path in sorted(Path(results, "benchmarks").glob("*.json")):
        result = json.loads(path.read_text())
        lines.append(f"**{result.get('benchmark', path.stem)}** "
                     f"({result.get('hardware', '?')}, torch {result.get('torch', '?')}; "
                     f"raw: `results/benchmarks/{path.name}`)")
        lines.append("")
        rows = result.get("rows")
        if rows:
            keys = list(rows[0])
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            for row in rows:
                lines.append("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
        else:
            lines.append("| figure | value |")
            lines.append("|---|---|")
            for key, value in result.items():
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--assets", default=str(ROOT / "assets"))
    args = parser.parse_args(argv)
    groups = load_runs(args.results)
    lines = []
    for script in sorted(groups):
        lines += [f"#### {script}", "", *script_table(script, groups[script]), ""]
        plot = plot_script(script, groups[script], args.assets)
        if plot:
            readme_dir = Path(args.readme).resolve().parent
            shown = Path(plot).resolve()
            shown = shown.relative_to(readme_dir) if shown.is_relative_to(readme_dir) else shown
            lines += [f"![{script} curves]({shown})", ""]
    if not lines:
        lines = ["(no runs logged yet under results/)"]
    readme = Path(args.readme).read_text()
    readme = replace_block(readme, "results", lines)
    readme = replace_block(readme, "benchmarks", benchmark_tables(args.results) or ["(no benchmark results yet)"])
    Path(args.readme).write_text(readme)
    print(f"make_results: {sum(len(c) for c in groups.values())} command groups from "
          f"{args.results} written to {args.readme}")


if __name__ == "__main__":
    main()
