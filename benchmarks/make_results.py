"""Write README.md's generated blocks (<!-- X:begin --> ... <!-- X:end -->, X = headline,
parallel_race and results:<script>), benchmarks/README.md's (X = benchmarks, and by-epoch:<script>/<run
name> for a run's test error by epoch) and results/README.md
from what each run and benchmark declared, and copy the runs' figures into assets/. No number is
typed by hand. Reads results/<script>/<run>/{summary,config}.json and
metrics.csv (grouped by command, --seed and --out left out) and results/benchmarks/<name>.json;
the headline is the race's (benchmarks/race.py): every method against its network's tuned
backprop; parallel_race is benchmarks/parallel_race_report.py's (the K-process race) and
parallel_virtual benchmarks/parallel_virtual_report.py's (K devices in virtual time). No script
is known here by name.    python benchmarks/make_results.py [--help]

A time to target is read where the test accuracy first reached it, so it is only as fine as
the evaluations around it: a ratio is shown only where, on every seed, each side's evaluation
before the crossing was at most GRID (5 %) of its seconds earlier. Elsewhere the README's
first table shows the range that grid allows, and a script's block leaves the pair out.
"""
import csv
import functools
import json
import math
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

DIGITS = {"%": 2, "points": 2, "x": 2, "s": 1, "ms": 2, "MiB": 1, "steps/s": 1, "": 4}
GRID = 0.05  # the evaluations around a crossing at most 5 % of its seconds apart
SUFFIX = {"%": " %", "points": " points", "x": "x", "s": " s", "ms": " ms", "MiB": " MiB"}


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
    """Seeds (and any ending other than completed), mean train (every method's clock together)
    and wall seconds, hardware."""
    runs = group["runs"]
    statuses = sorted({run["status"] for run in runs} - {"completed"})
    return {"seeds": ", ".join(str(run["seed"]) for run in runs) + (f" ({', '.join(statuses)})" if statuses else ""),
            "train": f"{statistics.fmean(run['train_seconds'] for run in runs):.1f}",
            "wall": f"{statistics.fmean(run['wall_seconds'] for run in runs):.1f}",
            "hardware": "; ".join(sorted({run["hardware"] for run in runs}))}


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def logged(folder):
    """A run folder's metrics.csv rows (none if it has no such file)."""
    path = Path(folder, "metrics.csv")
    if not path.exists():
        return ()
    with open(path, newline="") as f:
        return tuple(csv.DictReader(f))


def spacing(run, name, target, seconds):
    """How long before `name`'s first evaluation at or above `target` (read at `seconds` of its
    clock) its previous evaluation was (the clock's reading, for the first one); None where the
    run's metrics.csv cannot say. The clock is the one summary.json names (clock_columns), else
    the seconds column that reads `seconds` there."""
    rows = [r for r in logged(str(run["folder"])) if number(r.get(f"acc/{name}")) is not None]
    hit = next((i for i, r in enumerate(rows) if number(r[f"acc/{name}"]) >= target), None)
    if hit is None:
        return None
    clocks = [(run.get("clock_columns") or {}).get(name)] + [
        column for column in rows[hit] if column and (column.endswith("seconds") or column.startswith("sec/"))]
    clock = next((c for c in clocks if c and number(rows[hit].get(c)) is not None
                  and abs(number(rows[hit][c]) - seconds) < 1e-3), None)
    before = 0.0 if hit == 0 or clock is None else number(rows[hit - 1].get(clock))
    return None if clock is None or before is None else seconds - before


def coarseness(gaps_and_seconds):
    """The largest gap ÷ seconds of (gap, seconds) crossings; infinite if a gap is unknown."""
    return max((math.inf if gap is None else gap / seconds for gap, seconds in gaps_and_seconds if seconds),
               default=0.0)


def time_to_target(group):
    """(fraction, [{method, baseline, seconds, baseline_seconds, ratios, n, coarse}]) over the
    n seeds; a seed that never reached the target adds no seconds and no ratio. `coarse`: the
    largest spacing of the evaluations at a crossing ÷ its seconds, over seeds and both sides."""
    fraction, seen = None, defaultdict(list)
    for run in group["runs"]:
        record = run.get("time_to_target") or {}
        fraction = record.get("fraction", fraction)
        for pair in record.get("pairs", []):
            seen[pair["method"], pair["baseline"]].append((run, pair))
    pairs = []
    for (method, baseline), found in seen.items():
        times = [(pair["seconds"], pair["baseline_seconds"]) for _, pair in found]
        gaps = [(spacing(run, name, pair["target"], seconds), seconds) for run, pair in found
                for name, seconds in ((method, pair["seconds"]), (baseline, pair["baseline_seconds"]))
                if seconds is not None]
        pairs.append({"method": method, "baseline": baseline, "n": len(times), "coarse": coarseness(gaps),
                      "seconds": [mine for mine, _ in times if mine is not None],
                      "baseline_seconds": [theirs for _, theirs in times if theirs is not None],
                      "ratios": [mine / theirs for mine, theirs in times if mine is not None and theirs]})
    return fraction, pairs


def headline_pairs(group):
    """time_to_target(group), keeping the pairs whose method is a headline row of the group."""
    (fraction, pairs), named = time_to_target(group), {row["name"] for row in merged_rows(group) if row["headline"]}
    return fraction, [pair for pair in pairs if pair["method"] in named]


def left_out(pairs):
    """The sentence naming the pairs whose evaluations were too far apart to time them."""
    coarse = [p for p in pairs if p["coarse"] > GRID]
    if not coarse:
        return ""
    worst = max(p["coarse"] for p in coarse)
    how = "not logged" if math.isinf(worst) else f"up to {100 * worst:.0f} % of the seconds to the target"
    return ("Times to target left out, the evaluations around them too far apart for a ratio (" + how +
            ", more than 5 %): " + ", ".join(f"{p['method']} vs {p['baseline']}" for p in coarse) + ".")


# ============================================================================ the first table
def race_cell(data, network, method, factor, seed):
    """The race's run that trained `method` at `factor` (as written, x<factor>) on `seed`."""
    return next((c for c in data.get("cells", {}).values() if c["network"] == network and c["seed"] == seed
                 and method in c["methods"] and f"{c['factor']:g}" == factor), None)


def curve_spacing(cell, method, seconds):
    """How long before the curve point at `seconds` (its crossing) the previous point was."""
    times = [t for t, _ in cell["methods"][method]["curve"]] if cell else []
    hit = next((i for i, t in enumerate(times) if abs(t - seconds) < 1e-3), None)
    return None if hit is None else seconds - (times[hit - 1] if hit else 0.0)


def race_ratio(data, row, baseline, base_factor):
    """The mean over seeds of the row's seconds ÷ the tuned backprop's; where a side's evaluations
    around a crossing were more than GRID of its seconds apart, the range that grid allows."""
    if row["method"] == baseline:
        return "baseline"
    mine, theirs = row["seconds"], row["backprop_seconds"]
    if not mine or None in mine or None in theirs:
        return "-"
    factor = re.search(r"\(x(\S+) of the original\)", row["config"])
    gaps = [(curve_spacing(race_cell(data, row["network"], row["method"], factor and factor[1], seed),
                           row["method"], s),
             curve_spacing(race_cell(data, row["network"], baseline, base_factor, seed), baseline, b))
            for seed, s, b in zip(row["seeds"], mine, theirs)]
    ratio = statistics.fmean(s / b for s, b in zip(mine, theirs))
    if any(g is None for pair in gaps for g in pair):
        return f"{ratio:.2f}x (grid not logged)"
    if coarseness([(g, s) for (g, _), s in zip(gaps, mine)] + [(g, b) for (_, g), b in zip(gaps, theirs)]) <= GRID:
        return f"{ratio:.2f}x"
    low = statistics.fmean((s - gm) / b for (gm, _), s, b in zip(gaps, mine, theirs))
    high = statistics.fmean(s / (b - gb) if b > gb else math.inf for (_, gb), s, b in zip(gaps, mine, theirs))
    return f"{low:.2f}-{high:.2f}x"


def tuned_lr(config):
    """'lr 0.003 (x3 of the original), constant' -> '0.003 (x3)'."""
    found = re.match(r"lr (\S+) \(x(\S+) of the original\)", config)
    return f"{found[1]} (x{float(found[2]):.3g})" if found else config


def reached(seconds, within):
    """Mean ± std seconds to a target over the seeds, or how many seeds reached it."""
    got = [s for s in seconds if s is not None]
    if not got:
        return f"not reached within {within}"
    return fmt(got, "s") + (f" (reached on {len(got)} of {len(seconds)} seeds)" if len(got) < len(seconds) else "")


def headline_block(results, readme_dir, bench_readme):
    """The README's first table, from the race: a row per method at its tuned configuration
    (seconds to each target, ratios to its network's tuned backprop, final accuracy), grouped by
    network; one table per set of targets."""
    path = Path(results, "benchmarks", "race.json")
    if not path.exists():
        return ["(no race yet: python benchmarks/race.py)"]
    data = json.loads(path.read_text())
    rows = [row for row in data.get("results", []) if row["tuned"]]
    tables = defaultdict(list)  # targets: rows of the table
    for network, settings in data["networks"].items():
        mine = [row for row in rows if row["network"] == network]
        if not mine:
            continue
        targets = tuple(settings["targets"])
        baseline, base_factor = mine[0]["backprop"].rsplit(" x", 1)
        by_method = defaultdict(dict)
        for row in mine:
            by_method[row["method"]][row["target"]] = row
        scripts = ", ".join(f"`{s}`" for s in dict.fromkeys(c[0] for c in settings["commands"].values()))
        for i, (method, found) in enumerate(by_method.items()):
            first = next(iter(found.values()))
            tables[targets].append([
                f"**{network}** ({scripts}, runs of {first['within']})" if i == 0 else "", method,
                tuned_lr(first["config"]),
                *(reached(found[t]["seconds"], found[t]["within"]) if t in found else "-" for t in targets),
                *(race_ratio(data, found[t], baseline, base_factor) if t in found else "-" for t in targets),
                fmt([100 * a for a in first["final"]], "%"), ", ".join(map(str, first["seeds"]))])
    lines = []
    for targets, table_rows in tables.items():
        lines += table(["network", "method", "tuned lr", *(f"s to {100 * t:g} %" for t in targets),
                        *(f"÷ its tuned backprop's, {100 * t:g} %" for t in targets), "final accuracy", "seeds"],
                       table_rows) + [""]
    home = Path(results).resolve().parent  # the race writes its figures' paths from here
    figures = ", ".join(f"[{Path(f).stem}]({Path(os.path.relpath(home / f, readme_dir)).as_posix()})"
                        for f in data.get("figures", []))
    bench = Path(os.path.relpath(bench_readme, readme_dir)).as_posix()
    return lines + [
        "Seconds: training seconds (evaluation excluded) until the test accuracy first reached the target, each "
        "method on its own clock, mean ± std over the seeds. Ratio: the mean over seeds of those seconds ÷ "
        "those of the network's tuned backprop (the row marked baseline) on the same seed; where the evaluations "
        f"around a crossing were more than {100 * GRID:g} % of its seconds apart, the range they allow. Every "
        "method, backprop included, took "
        f"the best learning rate of its network's grid on seed 0. {data.get('dataset', 'dataset not recorded')}, "
        f"{data.get('hardware', 'hardware not recorded')}, torch {data.get('torch', 'not recorded')}"
        + (f"; curves: {figures}" if figures else "") + f". The original configurations and the speed-corrected "
        f"ratios: [{bench}]({bench}#the-race). Reproduce: `python benchmarks/race.py --plot` (it resumes from "
        "`results/benchmarks/race.json`)."]


def pair_text(p, fraction):
    """One pair's time to target in a sentence, the baseline named; or why it is left out."""
    if p["coarse"] > GRID:
        return f"{p['method']} vs {p['baseline']}: time to target left out (evaluations too far apart)"
    return (f"{p['method']} vs {p['baseline']}, s to {percent({fraction})} of {p['baseline']}'s final: "
            + " vs ".join(fmt(p[k], "s", "not reached") for k in ("seconds", "baseline_seconds"))
            + (f" = {fmt(p['ratios'], 'x')} {p['baseline']}'s" if p["ratios"] else ""))


def title(group):
    """The line above a group's table: original settings (the defaults) or the command, its
    seeds and seconds, and whether it times a baseline."""
    about = facts(group)
    what = "Original settings (the defaults), " if group["label"] == "defaults" else ""
    alone = "" if time_to_target(group)[1] else "; this command times no baseline"
    return (f"{what}`{group['command']}`: seeds {about['seeds']}, {about['train']} s training in all, "
            f"{about['wall']} s wall (mean){alone}")


def group_table(group, say_left_out=True):
    """The command, its seeds and seconds, then a row per declared name (a column per metric,
    and the original's figure where given), then a row per time-to-target pair whose
    evaluations were fine enough to time it, each ratio with its baseline named."""
    (fraction, pairs), merged = time_to_target(group), merged_rows(group)
    cells = defaultdict(dict)
    for row in merged:
        cells[row["name"]][row["metric"]] = row["text"]
        if "reference" in row:
            cells[row["name"]]["original / paper"] = row["reference"]
    columns = list(dict.fromkeys(row["metric"] for row in merged)) + (
        ["original / paper"] if any("original / paper" in row for row in cells.values()) else [])
    if len(columns) == 1:  # one figure per name: a row of them, not a column
        shown = table(["", *cells], [[columns[0], *(row.get(columns[0], "") for row in cells.values())]])
    else:
        shown = table(["", *columns], [[name, *(row.get(c, "") for c in columns)] for name, row in cells.items()])
    lines = [title(group), "", *shown, ""]
    timed = [p for p in pairs if p["coarse"] <= GRID]
    if timed:
        lines += [*table([f"time to {percent({fraction})} of the baseline's final accuracy", "method's seconds",
                          "baseline's seconds", "÷ baseline's"],
                         [[f"{p['method']} vs {p['baseline']}", fmt(p["seconds"], "s", "not reached")
                           + of(p["seconds"], p["n"]), fmt(p["baseline_seconds"], "s"),
                           f"{fmt(p['ratios'], 'x')} {p['baseline']}'s" if p["ratios"] else "-"] for p in timed]), ""]
    epochs = by_epoch(group, columns=100) if say_left_out else None   # results/README.md: every epoch
    return lines + ([left_out(pairs), ""] if left_out(pairs) and say_left_out else []) + (
        [*epochs, ""] if epochs else [])


def by_epoch(group, columns=10):
    """Test error (%) at the end of each epoch, mean over the seeds, a row per strategy, for a
    group trained for a number of epochs and evaluated at every epoch's end (layerwise_demo's
    --epochs with --eval-every the steps of an epoch); at most `columns` epochs, evenly spaced
    and ending with the last. None for any other group."""
    epochs = json.loads((group["runs"][0]["folder"] / "config.json").read_text()).get("epochs")
    if not epochs:
        return None
    errors = defaultdict(lambda: defaultdict(list))   # strategy -> epoch -> one error per seed
    for run in group["runs"]:
        for row in logged(run["folder"]):
            epoch = number(row.get("epoch"))
            acc = number(row.get(f"acc/{row.get('strategy')}"))
            # within 1 % of a whole epoch: 469 steps of 128 are a hair over an epoch of 60,000
            if acc is not None and epoch and round(epoch) and abs(epoch / round(epoch) - 1) < 0.01:
                errors[row["strategy"]][round(epoch)].append(100 * (1 - acc))
    last = round(epochs)
    shown = sorted({last, *range(last, 0, -max(1, math.ceil(last / columns)))})
    if not errors or any(len(errors[s][e]) != len(group["runs"]) for s in errors for e in shown):
        return None
    return table(["test error (%) after epoch", *map(str, shown)],
                 [[strategy, *(f"{statistics.fmean(by[e]):.2f}" for e in shown)] for strategy, by in errors.items()])


def hardware(groups, shown):
    """The closing line: what ± means, what a time to target is if the shown groups time one, the hardware."""
    timed = any(p["coarse"] <= GRID for _, pairs in map(time_to_target, shown) for p in pairs)
    target = (" Times to target: training seconds until the test accuracy first reached the target, "
              "each method on its own clock." if timed else "")
    return f"Mean ± std over the seeds.{target} Hardware: {'; '.join(sorted({facts(g)['hardware'] for g in groups}))}."


def figures(script, groups, assets):
    """(group, file, source, copy) for each group's declared figures, from its lowest seed's
    folder to assets/<script>_<label>_<file>; main() copies them once every block is found."""
    return [(group, name, group["runs"][0]["folder"] / name, Path(assets) / f"{script}_{group['label']}_{name}")
            for group in groups for name in group["runs"][0]["results"]["figures"]
            if (group["runs"][0]["folder"] / name).exists()]


def script_block(script, groups, found, readme_dir, every):
    """The main group's table; a row per other command with its headline rows and times to
    target (never two commands in a row); the hardware, a link to the file `every` (every
    group's table) and the main group's first figure among `found`."""
    main, link = main_group(groups), lambda path: Path(os.path.relpath(path, readme_dir)).as_posix()
    lines, elsewhere = group_table(main, say_left_out=False), []
    for group in (g for g in groups if g is not main):  # their headline rows and times to target
        fraction, pairs = headline_pairs(group)
        picked = [f"{row['name']} {row['metric']} {row['text']}" for row in merged_rows(group) if row["headline"]]
        picked += [pair_text(p, fraction) for p in pairs]
        if picked:
            elsewhere.append([f"`{group['command']}`", facts(group)["seeds"], "<br>".join(picked)])
    if elsewhere:
        lines += [*table(["other command", "seeds", "its headline figures (mean ± std over its seeds)"],
                         elsewhere), ""]
    lines.append(" ".join(filter(None, [left_out(time_to_target(main)[1]), hardware(groups, [main])]))
                 + (f" Every command's table: [{link(every)}]({link(every)}#{script})." if len(groups) > 1 else ""))
    shown = next(((name, copy) for group, name, _, copy in found if group is main), None)
    return lines + ([f"![{script} {main['label']}: {shown[0]}]({link(shown[1])})"] if shown else [])


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


def benchmark_tables(path, data):
    """One benchmark's tables, as it declared them (or every figure it wrote)."""
    where = path.resolve().relative_to(path.resolve().parents[2])  # from results/'s folder
    lines = [f"**{data.get('benchmark', path.stem)}** ({data.get('hardware', 'hardware not recorded')}, "
             f"torch {data.get('torch', 'not recorded')}; raw: `{where}`)", ""]
    if data.get("benchmark") == "parallel_race":  # rows of per-seed lists and dicts: the README's tables
        from benchmarks import parallel_race_report, parallel_virtual_report  # they import this module's helpers
        return lines + (parallel_race_report.tables(data) if data.get("rows") else []) + \
            parallel_virtual_report.tables(data)
    rows = data.get("rows") or [{"figure": key, "value": value} for key, value in flatten(data)
                                if key.split(".")[0] not in ("benchmark", "hardware", "torch", "targets")]
    for title, entries in (rows if isinstance(rows, dict) else {"": rows}).items():
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


def replace_block(text, name, lines, where):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise cli.UserError(f"{where} has no {begin} ... {end} block; add one where the table goes")
    return pattern.sub(lambda _: "\n".join([begin, *lines, end]), text)


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results"),
                        help="run folders (<script>/<run>/), benchmarks/*.json; its README.md gets every table")
    parser.add_argument("--readme", default=str(ROOT / "README.md"),
                        help="its headline (the race's first table) and results:<script> blocks")
    parser.add_argument("--benchmarks-readme", default=str(ROOT / "benchmarks" / "README.md"), help="its benchmarks block")
    parser.add_argument("--assets", default=str(ROOT / "assets"), help="where the runs' figures are copied")
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
    for script, label in re.findall(r"<!-- by-epoch:([\w-]+)/([\w-]+):begin -->", bench):
        group = next((g for g in groups.get(script, []) if g["label"] == label), None)
        rows = by_epoch(group) if group else None
        bench = replace_block(bench, f"by-epoch:{script}/{label}", rows or [
            f"(no epoch-budget runs logged under results/{script}/{label}-seed<k>/)"], args.benchmarks_readme)
    first = headline_block(args.results, readme_path.resolve().parent, bench_path.resolve())
    readme = replace_block(readme_path.read_text(), "headline", first, args.readme)
    from benchmarks import parallel_race_report, parallel_virtual_report  # they import this module's helpers
    pictures, virtual_pictures = [], []
    # a README without the block is complete until a race exists; then a missing block is an error
    race_json = Path(args.results, "benchmarks", "parallel_race.json")
    if "<!-- parallel_race:begin -->" in readme or race_json.exists():
        race, pictures = parallel_race_report.block(args.results, readme_path.resolve().parent, args.assets)
        readme = replace_block(readme, "parallel_race", race, args.readme)
    if "<!-- parallel_virtual:begin -->" in readme or (race_json.exists() and "virtual" in race_json.read_text()):
        virtual, virtual_pictures = parallel_virtual_report.block(args.results, readme_path.resolve().parent,
                                                                  args.assets, bench_path.resolve())
        readme = replace_block(readme, "parallel_virtual", virtual, args.readme)
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
    parallel_race_report.draw(pictures)
    parallel_virtual_report.draw(virtual_pictures)
    print(f"make_results: {len(groups)} scripts' runs written to {args.readme}, {args.benchmarks_readme}, {every}")


if __name__ == "__main__":
    cli.run_script(main)
