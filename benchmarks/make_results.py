"""Write the generated blocks of README.md and benchmarks/README.md, and copy the
figures they show into assets/, from what each run and benchmark declared. No
number in them is typed by hand, and no script or benchmark is known here by name.

Reads results/<script>/<run>/summary.json ("results" and "time_to_target", as
common/run_folder.py writes them) and config.json (runs are grouped by their
"command" without --seed and --out), results/benchmarks/<name>.json ("targets",
then "rows" or any other figures), and each <script>.py's docstring (the idea).
Rewrites, between <!-- X:begin --> and <!-- X:end -->: X = headline and every
results:<script> present in README.md, X = benchmarks in benchmarks/README.md.

    python benchmarks/make_results.py [--results results] [--readme README.md]
                                      [--benchmarks-readme benchmarks/README.md] [--assets assets]
"""
import ast
import json
import os
import re
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402

DIGITS = {"%": 2, "points": 2, "x": 2, "s": 1, "ms": 2, "": 4}
SUFFIX = {"%": " %", "points": " points", "x": "x", "s": " s", "ms": " ms"}


def strip_command(command):
    """The command without --out/--seed (and their values): what the seeds share."""
    return "python " + re.sub(r"\s+--(out|seed)(=|\s+)\S+", "", " " + command).strip()


def load_runs(results):
    """{script: [group]}, a group being {command, label, runs (summaries, lowest seed first)}."""
    commands = defaultdict(lambda: defaultdict(list))
    for path in sorted(Path(results).glob("*/*/summary.json")):
        if path.parent.parent.name != "benchmarks":
            summary = dict(json.loads(path.read_text()), folder=path.parent)
            config = path.parent / "config.json"
            command = json.loads(config.read_text()).get("command") if config.exists() else None
            commands[summary["script"]][strip_command(command or f"{summary['script']}.py")].append(summary)
    groups = defaultdict(list)
    for script, by_command in sorted(commands.items()):
        for command, runs in by_command.items():
            runs.sort(key=lambda run: run.get("seed") or 0)
            label = re.sub(r"-?seed\d+$", "", runs[0]["folder"].name) or "run"
            groups[script].append({"command": command, "label": label, "runs": runs})
    return groups


def declared(run):
    """What the run declared for the tables (older runs: each component's test accuracy)."""
    return run.get("results") or {"baseline": None, "figures": [], "rows": [
        {"name": name, "metric": "test accuracy", "value": round(100 * value, 4), "unit": "%",
         "headline": True} for name, value in run.get("test_accuracy", {}).items()]}


def fmt(values, unit):
    """mean ± std of the values (no ± for one), in the unit's digits."""
    if not values:
        return "-"
    digits = DIGITS.get(unit, 4)
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{digits}f}{spread}{SUFFIX.get(unit, '')}"


def of(part, whole):
    """' (k of n)' when only k of the n seeds gave a number."""
    return f" ({len(part)} of {whole})" if len(part) < whole else ""


def merged_rows(group):
    """The group's declared rows, one per (name, metric), with its text over the seeds."""
    rows = {}
    for run in group["runs"]:
        for row in declared(run)["rows"]:
            entry = rows.setdefault((row["name"], row["metric"]), dict(row, values=[]))
            if isinstance(row["value"], (int, float)) and not isinstance(row["value"], bool):
                entry["values"].append(row["value"])
    for row in rows.values():
        row["text"] = fmt(row["values"], row["unit"]) + of(row["values"], len(group["runs"]))
    return list(rows.values())


def facts(group):
    """Seeds (and any ending other than completed), mean train and wall seconds, hardware."""
    runs = group["runs"]
    statuses = sorted({run.get("status", "?") for run in runs} - {"completed"})
    walls = [run["wall_seconds"] for run in runs if "wall_seconds" in run]
    return {"seeds": ", ".join(str(run.get("seed")) for run in runs)
            + (f" ({', '.join(statuses)})" if statuses else ""),
            "train": f"{statistics.fmean(run['train_seconds'] for run in runs):.1f}",
            "wall": f"{statistics.fmean(walls):.1f}" if walls else "-",
            "hardware": "; ".join(sorted({run.get("hardware", run.get("device", "?")) for run in runs}))}


def time_to_target(group):
    """(fraction, [{method, baseline, seconds, baseline_seconds, ratios, n}]) over the seeds."""
    fraction, pairs = None, {}
    for run in group["runs"]:
        record = run.get("time_to_target") or {}
        fraction = record.get("fraction", fraction)
        for pair in record.get("pairs", []):
            entry = pairs.setdefault((pair["method"], pair["baseline"]), dict(
                method=pair["method"], baseline=pair["baseline"], seconds=[], baseline_seconds=[],
                ratios=[], n=0))
            mine, theirs = pair["seconds"], pair["baseline_seconds"]
            entry["n"] += 1
            entry["seconds"] += [mine] if mine is not None else []
            entry["baseline_seconds"] += [theirs] if theirs is not None else []
            entry["ratios"] += [mine / theirs] if mine is not None and theirs else []
    return fraction, list(pairs.values())


def percent(fraction):
    return f"{100 * fraction:g} %"


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def idea(script, scripts):
    """The first paragraph of <script>.py's docstring, after "<script>.py: "."""
    path = Path(scripts) / f"{script}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) if path.exists() else None
    return " ".join((doc or "").split("\n\n")[0].split()).removeprefix(f"{script}.py:").strip()


def main_group(groups):
    """The group a script is summed up by: the run folders named defaults-seed<k>, else the first."""
    return next((group for group in groups if group["label"] == "defaults"), groups[0])


def headline_block(groups, scripts):
    """A row per script: its headline rows beside the baseline's, and its time to target."""
    rows, fractions = [], set()
    for script, script_groups in groups.items():
        group = main_group(script_groups)
        merged, baseline = merged_rows(group), declared(group["runs"][0])["baseline"]
        metrics = {row["metric"] for row in merged if row["headline"]}
        results = [f"{row['name']}{' (baseline)' if row['name'] == baseline else ''} {row['metric']} "
                   f"{row['text']}" for row in merged
                   if row["headline"] or (row["name"] == baseline and row["metric"] in metrics)]
        fraction, pairs = time_to_target(group)
        fractions |= {fraction} if pairs else set()
        times = [f"{p['method']}: " + (f"{fmt(p['ratios'], 'x')}{of(p['ratios'], p['n'])} {p['baseline']}'s"
                                       if p["ratios"] else f"not reached{of(p['seconds'], p['n'])}")
                 for p in pairs]
        about = facts(group)
        rows.append([f"[`{script}.py`](#{script.replace('_', '')}py)", idea(script, scripts),
                     "<br>".join(results) or "-", f"{about['train']} s", about["seeds"],
                     about["hardware"], "<br>".join(times) or "-"])
    if not rows:
        return ["(no runs logged yet under results/)"]
    header = ["script", "idea", "headline result (mean ± std over seeds)", "training time", "seeds",
              "hardware", "time to target ÷ the baseline's"]
    if not fractions:
        return table(header[:-1], [row[:-1] for row in rows])
    return table(header, rows) + [
        "", f"Time to target: training seconds until a method's test accuracy first reaches "
        f"{' or '.join(map(percent, sorted(fractions)))} of its baseline's final accuracy, divided "
        "by the baseline's seconds to the same accuracy, in the same run."]


def copy_figures(script, groups, assets):
    """Every group's lowest seed's figures to assets/<script>_<label>_<file>; returns the
    main group's first one (label, file, copy), the one the README shows."""
    show = None
    for group in groups:
        for name in declared(group["runs"][0])["figures"]:
            source = group["runs"][0]["folder"] / name
            if source.exists():
                Path(assets).mkdir(parents=True, exist_ok=True)
                copy = Path(assets) / f"{script}_{group['label']}_{name}"
                shutil.copyfile(source, copy)
                if group is main_group(groups) and show is None:
                    show = (group["label"], name, copy)
    return show


def script_block(script, groups, assets, readme_dir):
    """The script's table, hardware once, its time-to-target rows, and one figure."""
    rows, tta, hardware = [], [], set()
    for group in groups:
        about = facts(group)
        hardware.add(about["hardware"])
        for i, row in enumerate(merged_rows(group)):
            rows.append(([f"`{group['command']}`", about["seeds"]] if i == 0 else ["", ""])
                        + [row["name"], row["metric"], row["text"]]
                        + ([about["train"], about["wall"]] if i == 0 else ["", ""])
                        + [row.get("reference", "")])
        fraction, pairs = time_to_target(group)
        for i, p in enumerate(pairs):
            tta.append([f"`{group['command']}`" if i == 0 else "", percent(fraction),
                        f"{p['method']} vs {p['baseline']}", *(fmt(p[k], "s") if p[k] else "not reached"
                                                               for k in ("seconds", "baseline_seconds")),
                        fmt(p["ratios"], "x"), f"{len(p['seconds'])} of {p['n']}"])
    lines = table(["command", "seeds", "name", "metric", "mean ± std", "train s", "wall s", "reference"],
                  rows) + ["", f"Hardware: {'; '.join(sorted(hardware))}."]
    if tta:
        lines += ["", "Training seconds until the test accuracy first reaches the fraction shown of "
                  "the baseline's final accuracy in the same run, on the clock the script keeps for "
                  "each (evaluations come every --eval-every steps: a time is rounded up to one):", "",
                  *table(["command", "of final", "method vs baseline", "method s", "baseline s",
                          "ratio", "reached"], tta)]
    show = copy_figures(script, groups, assets)
    if show:
        link = Path(os.path.relpath(show[2], readme_dir)).as_posix()
        lines += ["", f"![{script} {show[0]}: {show[1]}]({link})"]
    return lines


def cell(value):
    """A benchmark's number as it wrote it, long floats shortened; None: not measured."""
    if isinstance(value, float) and len(str(value)) > 8:
        return f"{value:#.4g}".rstrip(".") if abs(value) < 1e4 else f"{value:.0f}"
    return "-" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def flatten(value, prefix=""):
    """(dotted key, value) pairs of nested dicts."""
    if not isinstance(value, dict):
        return [(prefix.rstrip("."), value)]
    return [pair for key, inner in value.items() for pair in flatten(inner, f"{prefix}{key}.")]


def benchmarks_block(results):
    """Every benchmark's targets in one table, then each one's figures as it wrote them."""
    found = [(path, json.loads(path.read_text()))
             for path in sorted(Path(results, "benchmarks").glob("*.json"))]
    goals = [[data.get("benchmark", path.stem), goal["figure"], cell(goal["value"]), goal["target"] or "-",
              "reported, no target" if goal["target"] is None else "not measured" if goal["met"] is None
              else "met" if goal["met"] else "**missed**"]
             for path, data in found for goal in data.get("targets", [])]
    lines = table(["benchmark", "figure", "measured", "target", "verdict"], goals) + [""] if goals else []
    for path, data in found:
        where = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path.name
        lines += [f"**{data.get('benchmark', path.stem)}** ({data.get('hardware', 'hardware not recorded')}, "
                  f"torch {data.get('torch', 'not recorded')}; raw: `{where}`)", ""]
        rows = data.get("rows") or [{"figure": key, "value": value} for key, value in flatten(data)
                                    if key.split(".")[0] not in ("benchmark", "hardware", "torch", "targets")]
        for title, entries in (rows if isinstance(rows, dict) else {"": rows}).items():
            columns = list(dict.fromkeys(key for entry in entries for key in entry))
            lines += ([f"*{title}*", ""] if title else []) + table(
                columns, [[cell(entry.get(key, "")) for key in columns] for entry in entries]) + [""]
    return lines or ["(no benchmark results yet under results/benchmarks/)"]


def replace_block(text, name, lines, where):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise cli.UserError(f"{where} has no {begin} ... {end} block; add one where the table goes")
    return pattern.sub(lambda _: "\n".join([begin, "", *lines, "", end]), text)


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results"),
                        help="folder of run folders (<script>/<run>/) and benchmarks/*.json")
    parser.add_argument("--readme", default=str(ROOT / "README.md"),
                        help="file whose headline and results:<script> blocks are rewritten")
    parser.add_argument("--benchmarks-readme", default=str(ROOT / "benchmarks" / "README.md"),
                        help="file whose benchmarks block is rewritten")
    parser.add_argument("--assets", default=str(ROOT / "assets"),
                        help="where the runs' figures are copied for the README to show")
    parser.add_argument("--scripts", default=str(ROOT),
                        help="folder of the <script>.py files whose docstrings give the ideas")
    args = parser.parse_args(argv)
    for path in (args.readme, args.benchmarks_readme):
        if not Path(path).is_file():
            raise cli.UserError(f"{path}: no such file; name it with --readme or --benchmarks-readme")
    groups = load_runs(args.results)
    readme_path, bench_path = Path(args.readme), Path(args.benchmarks_readme)
    # every block is found before anything (a README, a figure) is written
    bench = replace_block(bench_path.read_text(), "benchmarks", benchmarks_block(args.results),
                          args.benchmarks_readme)
    readme = replace_block(readme_path.read_text(), "headline", headline_block(groups, args.scripts),
                           args.readme)
    for script in re.findall(r"<!-- results:([\w-]+):begin -->", readme):
        block = (script_block(script, groups[script], args.assets, readme_path.resolve().parent)
                 if script in groups else [f"(no runs logged yet under results/{script}/)"])
        readme = replace_block(readme, f"results:{script}", block, args.readme)
    readme_path.write_text(readme)
    bench_path.write_text(bench)
    print(f"make_results: {sum(map(len, groups.values()))} command groups of {len(groups)} scripts "
          f"from {args.results} written to {args.readme} and {args.benchmarks_readme}")


if __name__ == "__main__":
    cli.run_script(main)
