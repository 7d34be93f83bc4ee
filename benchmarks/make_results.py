"""Write README.md's generated blocks (<!-- X:begin --> ... <!-- X:end -->, X = headline and
results:<script>), benchmarks/README.md's (X = benchmarks) and results/README.md from what each
run and benchmark declared, and copy the runs' figures into assets/. No number is typed by
hand; no script or benchmark is known here by name. Reads results/<script>/<run>/{summary,
config}.json (grouped by command, --seed and --out left out), results/benchmarks/<name>.json
and each <script>.py's docstring (its idea).    python benchmarks/make_results.py [--help]
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
    """{script: [group]}, a group being {command, label, runs (summaries, lowest seed first)},
    scripts in name order and each script's commands in the order of their first run folder."""
    by_command, groups = defaultdict(list), defaultdict(list)
    for path in sorted(Path(results).glob("*/*/summary.json")):
        if path.parent.parent.name != "benchmarks":
            summary = dict(json.loads(path.read_text()), folder=path.parent)
            command = json.loads((path.parent / "config.json").read_text())["command"]
            by_command[summary["script"], strip_command(command)].append(summary)
    for (script, command), runs in sorted(by_command.items(), key=lambda item: item[0][0]):
        runs.sort(key=lambda run: run["seed"])
        label = re.sub(r"-?seed\d+$", "", runs[0]["folder"].name) or "run"
        groups[script].append({"command": command, "label": label, "runs": runs})
    return groups


def main_group(groups):
    """The group a script is summed up by: the run folders named defaults-seed<k>, else the first."""
    return next((group for group in groups if group["label"] == "defaults"), groups[0])


def fmt(values, unit, none="-"):
    """mean ± sample std of the values (no ± for one), in the unit's digits; `none` for none."""
    if not values:
        return none
    digits = DIGITS.get(unit, 4)
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{digits}f}{spread}{SUFFIX.get(unit, '')}"


def of(part, whole):
    """' (k of n)' when only k of the n seeds gave a number."""
    return f" ({len(part)} of {whole})" if len(part) < whole else ""


def percent(fractions):
    return " or ".join(f"{100 * fraction:g} %" for fraction in sorted(fractions))


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def merged_rows(group):
    """The group's declared rows, one per (name, metric), with its text over the seeds."""
    rows = {}
    for run in group["runs"]:
        for row in run["results"]["rows"]:
            entry = rows.setdefault((row["name"], row["metric"]), dict(row, values=[]))
            if isinstance(row["value"], (int, float)) and not isinstance(row["value"], bool):
                entry["values"].append(row["value"])
    return [dict(row, text=fmt(row["values"], row["unit"]) + of(row["values"], len(group["runs"])))
            for row in rows.values()]


def facts(group):
    """Seeds (and any ending other than completed), mean train and wall seconds, hardware."""
    runs = group["runs"]
    statuses = sorted({run["status"] for run in runs} - {"completed"})
    return {"seeds": ", ".join(str(run["seed"]) for run in runs) + (f" ({', '.join(statuses)})" if statuses else ""),
            "train": f"{statistics.fmean(run['train_seconds'] for run in runs):.1f}",
            "wall": f"{statistics.fmean(run['wall_seconds'] for run in runs):.1f}",
            "hardware": "; ".join(sorted({run["hardware"] for run in runs}))}


def time_to_target(group):
    """(fraction, [{method, baseline, seconds, baseline_seconds, ratios, n}]) over the n seeds;
    a seed that never reached the target adds no seconds and no ratio."""
    fraction, seen = None, defaultdict(list)
    for run in group["runs"]:
        record = run.get("time_to_target") or {}
        fraction = record.get("fraction", fraction)
        for pair in record.get("pairs", []):
            seen[pair["method"], pair["baseline"]].append((pair["seconds"], pair["baseline_seconds"]))
    return fraction, [{"method": method, "baseline": baseline, "n": len(times),
                       "seconds": [mine for mine, _ in times if mine is not None],
                       "baseline_seconds": [theirs for _, theirs in times if theirs is not None],
                       "ratios": [mine / theirs for mine, theirs in times if mine is not None and theirs]}
                      for (method, baseline), times in seen.items()]


def headline_pairs(group):
    """time_to_target(group), keeping the pairs whose method is a headline row of the group."""
    (fraction, pairs), named = time_to_target(group), {row["name"] for row in merged_rows(group) if row["headline"]}
    return fraction, [pair for pair in pairs if pair["method"] in named]


def idea(script, scripts):
    """The first paragraph of <script>.py's docstring, after "<script>.py: "."""
    path = Path(scripts) / f"{script}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) if path.exists() else None
    return " ".join((doc or "").split("\n\n")[0].split()).removeprefix(f"{script}.py:").strip()


def headline_block(groups, scripts):
    """A row per script: its main group's headline rows beside the baseline's, and the time to
    target of every group's pairs whose method is a headline row there."""
    rows, fractions = [], set()
    for script, script_groups in groups.items():
        group = main_group(script_groups)
        merged, baseline = merged_rows(group), group["runs"][0]["results"]["baseline"]
        metrics = {row["metric"] for row in merged if row["headline"]}
        results = [f"{row['name']}{' (baseline)' if row['name'] == baseline else ''} {row['metric']} "
                   f"{row['text']}" for row in merged
                   if row["headline"] or (row["name"] == baseline and row["metric"] in metrics)]
        times = []
        for other in [group, *(g for g in script_groups if g is not group)]:  # main first; others may hold pairs too
            fraction, pairs = headline_pairs(other)
            fractions |= {fraction} if pairs else set()
            times += [f"{p['method']}: " + (f"{fmt(p['ratios'], 'x')}{of(p['ratios'], p['n'])} {p['baseline']}'s"
                                            if p["ratios"] else f"not reached{of(p['seconds'], p['n'])}") for p in pairs]
        about = facts(group)
        rows.append([f"[`{script}.py`](#{script}py)", idea(script, scripts),
                     "<br>".join(results) or "-", f"{about['train']} s", about["seeds"],
                     about["hardware"], "<br>".join(times) or "-"])
    header = ["script", "idea", "headline result (mean ± std over seeds)", "training time", "seeds",
              "hardware", "time to target ÷ the baseline's"]
    if not fractions:
        return table(header[:-1], [row[:-1] for row in rows])
    return table(header, rows) + [
        "", f"Time to target: training seconds until a method's test accuracy first reaches {percent(fractions)} "
        "of its baseline's final accuracy, divided by the baseline's seconds to the same accuracy, in the same run."]


def group_table(group):
    """The command, its seeds and seconds, then a row per declared name: a column per metric,
    its seconds to target and ratio where measured, and the original's figure where given."""
    about, (_, pairs), merged = facts(group), time_to_target(group), merged_rows(group)
    cells = defaultdict(dict)
    for row in merged:
        cells[row["name"]][row["metric"]] = row["text"]
        if "reference" in row:
            cells[row["name"]]["original / paper"] = row["reference"]
    for p in pairs:  # the baseline's own time, and each method's with its ratio
        cells[p["baseline"]].setdefault("s to target", fmt(p["baseline_seconds"], "s"))
        cells[p["method"]]["s to target"] = fmt(p["seconds"], "s", "not reached") + of(p["seconds"], p["n"])
        cells[p["method"]]["÷ baseline's"] = fmt(p["ratios"], "x")
    columns = list(dict.fromkeys(row["metric"] for row in merged)) + [  # then those filled above
        c for c in ("s to target", "÷ baseline's", "original / paper") if any(c in row for row in cells.values())]
    return [f"`{group['command']}`: seeds {about['seeds']}, {about['train']} s training, {about['wall']} s wall (mean)",
            "", *table(["", *columns], [[name, *(row.get(c, "") for c in columns)] for name, row in cells.items()]), ""]


def hardware(groups, shown):
    """The closing line: what ± means, what *s to target* means if the shown groups have it, the hardware."""
    fractions = {fraction for fraction, pairs in map(time_to_target, shown) if pairs}
    target = (f" *s to target*: training seconds until the test accuracy first reached {percent(fractions)} "
              "of the baseline's final accuracy, on each one's own clock." if fractions else "")
    return f"Mean ± std over the seeds.{target} Hardware: {'; '.join(sorted({facts(g)['hardware'] for g in groups}))}."


def figures(script, groups, assets):
    """(group, file, source, copy) for each group's declared figures, from its lowest seed's
    folder to assets/<script>_<label>_<file>; main() copies them once every block is found."""
    return [(group, name, group["runs"][0]["folder"] / name, Path(assets) / f"{script}_{group['label']}_{name}")
            for group in groups for name in group["runs"][0]["results"]["figures"]
            if (group["runs"][0]["folder"] / name).exists()]


def script_block(script, groups, found, readme_dir, every):
    """The main group's table, the other groups' time to target, the hardware, a link to the
    file `every` (every group's table) and the main group's first figure among `found`."""
    main, link = main_group(groups), lambda path: Path(os.path.relpath(path, readme_dir)).as_posix()
    lines, elsewhere, fractions = group_table(main), [], set()
    for group in (g for g in groups if g is not main):  # their headline rows and times to target
        fraction, pairs = headline_pairs(group)
        fractions |= {fraction} if pairs else set()
        picked = [[row["name"], row["metric"], row["text"]] for row in merged_rows(group) if row["headline"]]
        picked += [[f"{p['method']} vs {p['baseline']}", f"s to {percent({fraction})} of {p['baseline']}'s final",
                   " vs ".join(fmt(p[k], "s", "not reached") for k in ("seconds", "baseline_seconds"))
                   + (f" = {fmt(p['ratios'], 'x')}" if p["ratios"] else "")] for p in pairs]
        elsewhere += [[f"`{group['command']}`" if i == 0 else "", *row] for i, row in enumerate(picked)]
    if elsewhere:
        lines += ["The other commands' headline figures:", "",
                  *table(["command", "", "", "mean ± std"], elsewhere), ""]
    lines.append(hardware(groups, [main]) + (f" Every command's table: [{link(every)}]({link(every)}#{script})."
                                     if len(groups) > 1 else ""))
    shown = next(((name, copy) for group, name, _, copy in found if group is main), None)
    return lines + (["", f"![{script} {main['label']}: {shown[0]}]({link(shown[1])})"] if shown else [])


def every_block(groups):
    """results/README.md: every group's table, by script."""
    lines = ["# Every logged run, by script", "", "Generated by `python benchmarks/make_results.py` from the run folders "
             "beside this file; each command reproduces its table with the seeds listed.", ""]
    for script, script_groups in groups.items():
        lines += [f"## {script}", "", *(line for group in script_groups for line in group_table(group)),
                  hardware(script_groups, script_groups), ""]
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


def goal_rows(found):
    return [[data.get("benchmark", path.stem), goal["figure"], cell(goal["value"]), goal["target"] or "-",
             "reported, no target" if goal["target"] is None else "not measured" if goal["met"] is None
             else "met" if goal["met"] else "**missed**"]
            for path, data in found for goal in data.get("targets", [])]


def benchmark_tables(path, data, titles=None):
    """One benchmark's tables, as it declared them (or every figure it wrote); only `titles`."""
    where = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path.name
    lines = [f"**{data.get('benchmark', path.stem)}** ({data.get('hardware', 'hardware not recorded')}, "
             f"torch {data.get('torch', 'not recorded')}; raw: `{where}`)", ""]
    rows = data.get("rows") or [{"figure": key, "value": value} for key, value in flatten(data)
                                if key.split(".")[0] not in ("benchmark", "hardware", "torch", "targets")]
    for title, entries in (rows if isinstance(rows, dict) else {"": rows}).items():
        if titles is not None and title not in titles:
            continue
        columns = list(dict.fromkeys(key for entry in entries for key in entry))
        lines += ([f"*{title}*", ""] if title else []) + table(
            columns, [[cell(entry.get(key, "")) for key in columns] for entry in entries]) + [""]
    return lines


def benchmarks_block(results):
    """Every benchmark's targets in one table, then each one's tables as it wrote them."""
    found = [(path, json.loads(path.read_text())) for path in sorted(Path(results, "benchmarks").glob("*.json"))]
    goals = goal_rows(found)
    lines = table(["benchmark", "figure", "measured", "target", "verdict"], goals) + [""] if goals else []
    for path, data in found:
        lines += benchmark_tables(path, data)
    return lines or ["(no benchmark results yet under results/benchmarks/)"]


def benchmark_block(results, name):
    """A `benchmark:<name>` block of README.md: that benchmark's goals, the tables it names for
    the README (`readme_tables`; default all) and its figures."""
    path = Path(results, "benchmarks", f"{name}.json")
    if not path.exists():
        return [f"(no results yet: python benchmarks/{name}.py)"]
    data = json.loads(path.read_text())
    goals = goal_rows([(path, data)])
    lines = table(["goal", "measured", "target", "verdict"], [g[1:] for g in goals]) + [""] if goals else []
    return lines + benchmark_tables(path, data, data.get("readme_tables")) + [f"![{name}: {Path(f).stem}]({f})" for f in data.get("figures", [])]


def replace_block(text, name, lines, where):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise cli.UserError(f"{where} has no {begin} ... {end} block; add one where the table goes")
    return pattern.sub(lambda _: "\n".join([begin, "", *lines, "", end]), text)


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results"),
                        help="run folders (<script>/<run>/), benchmarks/*.json; its README.md gets every table")
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="its headline, results:<script> blocks")
    parser.add_argument("--benchmarks-readme", default=str(ROOT / "benchmarks" / "README.md"), help="its benchmarks block")
    parser.add_argument("--assets", default=str(ROOT / "assets"), help="where the runs' figures are copied")
    parser.add_argument("--scripts", default=str(ROOT), help="folder of the <script>.py files (their ideas)")
    args = parser.parse_args(argv)
    for path in (args.readme, args.benchmarks_readme):
        if not Path(path).is_file():
            raise cli.UserError(f"{path}: no such file; name it with --readme or --benchmarks-readme")
    groups, readme_path, bench_path = load_runs(args.results), Path(args.readme), Path(args.benchmarks_readme)
    every = Path(args.results, "README.md")  # every command's table
    found = {script: figures(script, script_groups, args.assets) for script, script_groups in groups.items()}
    # every block is found before anything (a README, a figure) is written
    bench = replace_block(bench_path.read_text(), "benchmarks", benchmarks_block(args.results),
                          args.benchmarks_readme)
    readme = replace_block(readme_path.read_text(), "headline", headline_block(groups, args.scripts), args.readme)
    for name in re.findall(r"<!-- benchmark:([\w-]+):begin -->", readme):
        readme = replace_block(readme, f"benchmark:{name}", benchmark_block(args.results, name), args.readme)
    for script in re.findall(r"<!-- results:([\w-]+):begin -->", readme):
        block = (script_block(script, groups[script], found[script], readme_path.resolve().parent, every)
                 if script in groups else [f"(no runs logged yet under results/{script}/)"])
        readme = replace_block(readme, f"results:{script}", block, args.readme)
    readme_path.write_text(readme)
    bench_path.write_text(bench)
    every.write_text("\n".join(every_block(groups)))
    for _, _, source, copy in (figure for script_figures in found.values() for figure in script_figures):
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    print(f"make_results: {len(groups)} scripts' runs written to {args.readme}, {args.benchmarks_readme}, {every}")


if __name__ == "__main__":
    cli.run_script(main)
