"""The results generator renders what fake run folders and benchmark JSON declare,
and nothing else: every expected figure below is computed here from the inputs."""
import csv
import json
import shutil
import statistics
import subprocess
import sys

import pytest

from benchmarks import make_results
from common import cli
from conftest import ROOT

README = """# toy
<!-- headline:begin -->
stale headline
<!-- headline:end -->
text kept
<!-- results:toy_mach:begin -->
stale table
<!-- results:toy_mach:end -->
"""
BENCH = "# benchmarks\n<!-- benchmarks:begin -->\nstale\n<!-- benchmarks:end -->\nmore text\n"
# seed: (teacher %, student %, train s, student's s to target, teacher's s to target); seed 2 never reached it
SEEDS = {0: (88.1, 86.1, 80.0, 3.0, 1.0), 1: (88.3, 85.9, 82.0, 5.0, 2.0), 2: (87.6, 86.5, 81.0, None, 2.0)}
MAIN_COMMAND = "`python toy_mach.py --dataset fashion-mnist`"
SHORT_COMMAND = "`python toy_mach.py --dataset fashion-mnist --iterations 100`"
WIDE_COMMAND = "`python toy_mach.py --dataset fashion-mnist --width 2`"


def write_metrics(folder, crossings, gaps):
    """metrics.csv with, for each (name, seconds) crossing of the 0.8 target, an evaluation
    below the target `gap` x seconds before it on each {clock column: gap}, and one at it."""
    rows = []
    for name, seconds in crossings:
        if seconds is None:
            rows.append({"iteration": len(rows) + 1, **dict.fromkeys(gaps, 1.0), f"acc/{name}": 0.5})
            continue
        rows.append({"iteration": len(rows) + 1, **{c: seconds * (1 - g) for c, g in gaps.items()},
                     f"acc/{name}": 0.5})
        rows.append({"iteration": len(rows) + 1, **dict.fromkeys(gaps, seconds), f"acc/{name}": 0.85})
    columns = ["iteration", *gaps, *(f"acc/{name}" for name, _ in crossings)]
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def write_run(results, label, seed, teacher, student, train, tta=None, figures=("curves.png", "b.png"),
              extra="", headline=True, gap=0.01):
    """A run folder as Run.finish writes it: config, summary with declared rows, figures, and a
    metrics.csv whose evaluations around each crossing are `gap` x its seconds apart."""
    folder = results / "toy_mach" / f"{label}-seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(
        {"command": f"toy_mach.py --dataset fashion-mnist{extra} --seed {seed} --out {folder}"}))
    summary = {"script": "toy_mach", "dataset": "fashion-mnist", "seed": seed, "device": "cpu",
               "hardware": "test cpu", "train_seconds": train, "wall_seconds": train + 2,
               "status": "completed", "test_accuracy": {"teacher": teacher / 100, "student": student / 100},
               "results": {"baseline": "teacher", "figures": list(figures), "rows": [
                   {"name": "teacher", "metric": "test accuracy", "value": teacher, "unit": "%",
                    "headline": False, "reference": "97.87 % on MNIST (original)"},
                   {"name": "student", "metric": "test accuracy", "value": student, "unit": "%",
                    "headline": headline},
                   {"name": "student", "metric": "own training seconds", "value": train / 2, "unit": "s",
                    "headline": False}]}}
    if tta:
        seconds, base = tta
        summary["time_to_target"] = {"fraction": 0.95, "pairs": [
            {"method": "student", "baseline": "teacher", "target": 0.8, "seconds": seconds,
             "baseline_seconds": base}]}
        write_metrics(folder, [("teacher", base), ("student", seconds)], {"train_seconds": gap})
    (folder / "summary.json").write_text(json.dumps(summary))
    for name in figures:
        (folder / name).write_bytes(f"{label} {seed} {name}".encode())
    (folder / "undeclared.png").write_bytes(b"not declared")
    return folder


@pytest.fixture
def tree(tmp_path):
    """Three seeds of the defaults, evaluated finely around their crossings, sorted between two
    other commands' single runs (each with a time to target: the 100-iteration one on a grid
    too coarse for it; the wide one's student is no headline row), two READMEs."""
    results = tmp_path / "results"
    for seed, (teacher, student, train, seconds, base) in SEEDS.items():
        write_run(results, "defaults", seed, teacher, student, train, tta=(seconds, base))
    write_run(results, "baseline", 0, 50.0, 40.0, 10.0, tta=(8.0, 2.0), extra=" --iterations 100",
              figures=("s.png",), gap=0.5)
    write_run(results, "wide", 0, 60.0, 55.0, 20.0, tta=(None, 2.0), extra=" --width 2", figures=(),
              headline=False)
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "BENCH.md").write_text(BENCH)
    (results / "benchmarks").mkdir()
    return tmp_path


def generate(tree, readme="README.md", bench="BENCH.md"):
    make_results.main(["--results", str(tree / "results"), "--readme", str(tree / readme),
                       "--benchmarks-readme", str(tree / bench), "--assets", str(tree / "assets")])
    return (tree / readme).read_text(), (tree / bench).read_text()


def line_with(text, *parts):
    found = [line for line in text.splitlines() if all(part in line for part in parts)]
    assert len(found) == 1, (parts, found)
    return found[0]


def line_starting(text, start):
    found = [line for line in text.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


def mean_std(values, digits, unit):
    """mean ± the sample standard deviation (n - 1), as the tables print it."""
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}{unit}"


def column(index):
    return [values[index] for values in SEEDS.values()]


def block(text, name):
    return text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]


def test_sample_std_over_seeds():
    # the population std would print 0.29 and 0.25 here: the tables use n - 1
    assert mean_std(column(0), 2, " %") == "88.00 ± 0.36 %" and mean_std(column(1), 2, " %") == "86.17 ± 0.31 %"
    assert make_results.fmt(column(0), "%") == "88.00 ± 0.36 %"
    assert make_results.fmt([2.5], "x") == "2.50x" and make_results.fmt([], "s") == "-"


# The race: per network, seeds 0 and 1, seconds to 85 % and 87 % (None: not reached), the
# learning-rate factor of the configuration, and the final accuracies. "bp" is each network's
# tuned backprop; "fast" is also raced at its original factor 1 (not a tuned row: not shown).
RACE = {
    "cnn": {"bp": ("1", {0.85: [10.0, 20.0], 0.87: [20.0, 30.0]}, [0.88, 0.89]),
            "fast": ("3", {0.85: [5.0, 10.0], 0.87: [10.0, 15.0]}, [0.89, 0.90]),
            "never": ("3", {0.85: [None, None], 0.87: [None, None]}, [0.70, 0.72]),
            "half": ("1", {0.85: [4.0, None], 0.87: [None, None]}, [0.80, 0.84])},
    "mlp": {"bp": ("10", {0.85: [1.0, 2.0], 0.87: [3.0, 3.0]}, [0.875, 0.875]),
            "m": ("3", {0.85: [3.0, 8.0], 0.87: [None, 9.0]}, [0.86, 0.87])},
}
RACE_GAP = {("cnn", "fast", 0.87, 1): 0.2}  # the curve point before this crossing: 20 % of it earlier


def write_race(results):
    """race.json as race.py writes it: per network its targets and commands, the runs (cells)
    with their curves, and the rows: every method tuned, and "fast" at its original rate."""
    networks, cells, rows = {}, {}, []
    for network, methods in RACE.items():
        within = "45 s" if network == "cnn" else "1500 steps"
        networks[network] = {"targets": [0.85, 0.87], "commands": {m: [f"{network}.py", m] for m in methods}}
        for method, (factor, seconds, final) in methods.items():
            for seed in (0, 1):
                crossings = [(t, seconds[t][seed]) for t in (0.85, 0.87) if seconds[t][seed] is not None]
                curve = [point for t, s in crossings for point in
                         ([s * (1 - RACE_GAP.get((network, method, t, seed), 0.01)), t - 0.1], [s, t])]
                cells[f"{network}/{method}/x{factor}/seed{seed}"] = {
                    "network": network, "factor": float(factor), "seed": seed,
                    "methods": {method: {"curve": curve or [[1.0, 0.5]]}}}
            for target in (0.85, 0.87):
                rows.append({"network": network, "method": method, "target": target,
                             "config": f"lr 0.003 (x{factor} of the original), constant", "tuned": True,
                             "seeds": [0, 1], "seconds": seconds[target], "within": within,
                             "backprop": f"bp x{methods['bp'][0]}", "backprop_seconds": methods["bp"][1][target],
                             "final": final})
    rows.append(dict(rows[2], tuned=False, seconds=[7.0, 7.0], config="lr 0.001 (x1 of the original), constant"))
    (results / "benchmarks" / "race.json").write_text(json.dumps({
        "benchmark": "race", "hardware": "test cpu", "torch": "9.9", "dataset": "fashion-mnist",
        "networks": networks, "cells": cells, "results": rows, "figures": ["assets/race_cnn.png"]}))


def race_row(text, method, network=None):
    """The first table's row of `method` in `network` (the network's rows follow its first)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| **{network or 'cnn'}**"))
    return next(line for line in lines[start:] if line.split(" | ")[1] == method)


def test_first_table_is_the_race_each_method_against_its_networks_tuned_backprop(tree):
    write_race(tree / "results")
    text = block(generate(tree)[0], "headline")
    header = line_starting(text, "| network |")
    assert header == ("| network | method | tuned lr | s to 85 % | s to 87 % | ÷ its tuned backprop's, 85 % "
                      "| ÷ its tuned backprop's, 87 % | final accuracy | seeds |")
    # grouped by network: the network named on its first row, its scripts and its budget
    assert line_starting(text, "| **cnn**").startswith(
        "| **cnn** (`cnn.py`, runs of 45 s) | bp | 0.003 (x1) | ")
    assert line_starting(text, "| **mlp**").startswith("| **mlp** (`mlp.py`, runs of 1500 steps) | bp |")
    assert race_row(text, "fast").startswith("|  | fast | 0.003 (x3) |")
    # the baseline's row, then each method: mean ± std seconds, the mean of the per-seed ratios
    # to its own network's backprop, the final accuracy, the seeds
    bp = race_row(text, "bp")
    assert bp.endswith(f"| {mean_std([10.0, 20.0], 1, ' s')} | {mean_std([20.0, 30.0], 1, ' s')} | baseline "
                       f"| baseline | {mean_std([88.0, 89.0], 2, ' %')} | 0, 1 |")
    fast = race_row(text, "fast").split(" | ")
    assert fast[3:5] == [mean_std([5.0, 10.0], 1, " s"), mean_std([10.0, 15.0], 1, " s")]
    assert fast[5] == f"{statistics.fmean([5 / 10, 10 / 20]):.2f}x"
    # seed 1's 87 % crossing had its previous curve point 20 % of it earlier: the range it allows
    low = statistics.fmean([(10 - 0.01 * 10) / 20, (15 - 0.2 * 15) / 30])
    high = statistics.fmean([10 / (20 - 0.01 * 20), 15 / (30 - 0.01 * 30)])
    assert fast[6] == f"{low:.2f}-{high:.2f}x"
    mlp = race_row(text, "m", "mlp").split(" | ")
    assert mlp[5] == f"{statistics.fmean([3 / 1, 8 / 2]):.2f}x"  # not ÷ cnn's backprop, not 11/3
    assert mlp[4] == "9.0 s (reached on 1 of 2 seeds)" and mlp[6] == "-"
    # never reached: "not reached within" the budget, and no ratio
    assert race_row(text, "never").split(" | ")[3:7] == ["not reached within 45 s"] * 2 + ["-", "-"]
    assert race_row(text, "half").split(" | ")[3:7] == [
        "4.0 s (reached on 1 of 2 seeds)", "not reached within 45 s", "-", "-"]
    # the original configuration's row is not the first table's
    assert "7.0 ± 0.0 s" not in text and text.count("| fast |") == 1
    # the line under it: how it was measured, where the rest is, the command that reproduces it
    note = line_starting(text, "Seconds: training seconds")
    assert "mean ± std over the seeds" in note and "more than 5 % of its seconds apart" in note
    assert "fashion-mnist, test cpu, torch 9.9" in note and "[race_cnn](assets/race_cnn.png)" in note
    assert "[BENCH.md](BENCH.md#the-race)" in note and "`python benchmarks/race.py --plot`" in note


def test_first_table_without_a_race_says_how_to_run_one(tree):
    assert block(generate(tree)[0], "headline").strip() == "(no race yet: python benchmarks/race.py)"


def test_readme_shows_the_main_groups_table_and_the_others_time_to_target(tree):
    readme = generate(tree)[0]
    text = block(readme, "results:toy_mach")
    trains = column(2)
    assert line_with(text, ": seeds") == (
        f"Original settings (the defaults), {MAIN_COMMAND}: seeds 0, 1, 2, {statistics.fmean(trains):.1f} s "
        f"training in all, {statistics.fmean(t + 2 for t in trains):.1f} s wall (mean)")
    # a row per declared name, a column per metric, then the original's figure
    assert "|  | test accuracy | own training seconds | original / paper |" in text
    assert line_with(text, "| teacher |") == (
        f"| teacher | {mean_std(column(0), 2, ' %')} |  | 97.87 % on MNIST (original) |")
    assert line_starting(text, "| student |") == (
        f"| student | {mean_std(column(1), 2, ' %')} | {mean_std([t / 2 for t in trains], 1, ' s')} |  |")
    # a row per time-to-target pair, the baseline named in its ratio: the mean of each seed's
    # ratio (3/1 and 5/2; seed 2 never reached it), not the ratio of the means (4/1.5)
    assert ("| time to 95 % of the baseline's final accuracy | method's seconds | baseline's seconds "
            "| ÷ baseline's |") in text
    assert line_starting(text, "| student vs teacher |") == (
        f"| student vs teacher | {mean_std([3.0, 5.0], 1, ' s')} (2 of 3) | {mean_std([1.0, 2.0, 2.0], 1, ' s')} "
        f"| {mean_std([3.0, 2.5], 2, 'x')} teacher's |")
    assert "left out" not in text.split("| other command |")[0]
    # only the main command's table: the others are in results/README.md
    assert SHORT_COMMAND + ":" not in text and WIDE_COMMAND + ":" not in text
    assert "50.00" not in text.split("| other command |")[0] and "60.00" not in text
    assert "[results/README.md](results/README.md#toy_mach)" in text
    # ... but each other command has its own row: its seeds, its headline rows, its times to
    # target, here left out (its evaluations were half the seconds apart)
    assert "| other command | seeds | its headline figures (mean ± std over its seeds) |" in text
    assert line_starting(text, f"| {SHORT_COMMAND} |") == (
        f"| {SHORT_COMMAND} | 0 | student test accuracy 40.00 %<br>"
        "student vs teacher: time to target left out (evaluations too far apart) |")
    assert WIDE_COMMAND not in text  # its student is no headline row: nothing of it to show
    assert text.count("test cpu") == 1  # hardware once, under the tables
    assert "stale" not in readme and "text kept" in readme


def test_a_time_to_target_on_a_coarse_grid_is_left_out(tree):
    """Evaluations 30 % of the seconds apart give no ratio; the clock is the one summary.json
    names, not another column that reads the same seconds at the crossing."""
    results = tree / "results"
    shutil.rmtree(results / "toy_mach")
    for seed in (0, 1):
        folder = write_run(results, "defaults", seed, 88.0, 86.0, 80.0, tta=(3.0 + seed, 1.0))
        # train_seconds reads the same seconds at the crossing, 1 % after the evaluation before
        write_metrics(folder, [("teacher", 1.0), ("student", 3.0 + seed)], {"train_seconds": 0.01, "sec/own": 0.3})
        summary = json.loads((folder / "summary.json").read_text())
        summary["clock_columns"] = {"teacher": "sec/own", "student": "sec/own"}
        (folder / "summary.json").write_text(json.dumps(summary))
    text = block(generate(tree)[0], "results:toy_mach")
    assert "| student vs teacher |" not in text and "x teacher's" not in text
    assert line_starting(text, "Times to target left out") == (
        "Times to target left out, the evaluations around them too far apart for a ratio (up to 30 % of the "
        "seconds to the target, more than 5 %): student vs teacher. Mean ± std over the seeds. Hardware: test cpu.")
    assert "Times to target:" not in text  # no timed pair: the closing line does not define one


def test_results_readme_holds_every_groups_table(tree):
    readme = generate(tree)[0]
    text = (tree / "results" / "README.md").read_text()
    assert text.startswith("# Every logged run, by script\n") and "\n## toy_mach\n" in text
    # every command, in the order of its run folders, each with its own table
    titles = [line for line in text.splitlines() if ": seeds" in line]
    assert [line[line.index("`"):].split(":")[0] for line in titles] == [SHORT_COMMAND, MAIN_COMMAND, WIDE_COMMAND]
    assert titles[0].startswith(f"{SHORT_COMMAND}: seeds 0, ") and titles[1].startswith("Original settings")
    assert "| teacher | 50.00 % |  | 97.87 % on MNIST (original) |" in text  # one seed: no ±
    assert "| student | 40.00 % | 5.0 s |  |" in text and "| student | 55.00 % | 10.0 s |  |" in text
    # the 100-iteration run's time to target is left out (its evaluations half its seconds apart);
    # the wide run's student never reached it, on a fine grid
    assert ("too far apart for a ratio (up to 50 % of the seconds to the target, more than 5 %): "
            "student vs teacher.") in text
    assert "| student vs teacher | not reached (0 of 1) | 2.0 s | - |" in text
    # the main command's table is the README's, line for line
    main_table = block(readme, "results:toy_mach").split("\n| other command")[0].strip()
    assert main_table in text
    assert text.count("Hardware: test cpu.") == 1 and "![" not in text and "stale" not in text


def test_an_epoch_budget_run_gets_its_error_by_epoch(tree):
    """A command trained for 12 epochs (two seeds, two strategies, one after the other): its
    test error after every epoch, mean over the seeds, in results/README.md, and in a
    by-epoch block at most 10 epochs (every 2nd, ending with the last); an unknown run says so."""
    accuracy = {(seed, name, epoch): 0.5 + 0.03 * epoch + 0.01 * seed + (0.02 if name == "b" else 0)
                for seed in (0, 1) for name in "ab" for epoch in range(1, 13)}
    for seed in (0, 1):
        folder = write_run(tree / "results", "long", seed, 70.0, 60.0, 30.0, extra=" --epochs 12", figures=())
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, epochs=12.0)))
        with open(folder / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["iteration", "epoch", "strategy", "acc/a", "acc/b"])
            writer.writeheader()
            for name in "ab":   # mid-epoch evaluations too; a step count a hair over an epoch drifts
                for epoch in [x / 2 for x in range(1, 25)]:
                    value = accuracy.get((seed, name, epoch), 0.1)
                    writer.writerow({"iteration": int(epoch * 10), "epoch": epoch * 1.002, "strategy": name,
                                     f"acc/{name}": value})
    (tree / "BENCH.md").write_text(BENCH + "<!-- by-epoch:toy_mach/long:begin -->\n<!-- by-epoch:toy_mach/long:end -->\n"
                                   "<!-- by-epoch:toy_mach/none:begin -->\n<!-- by-epoch:toy_mach/none:end -->\n")
    bench = generate(tree)[1]
    error = lambda name, epoch: f"{100 * (1 - statistics.fmean(accuracy[s, name, epoch] for s in (0, 1))):.2f}"
    shown = [2, 4, 6, 8, 10, 12]
    assert block(bench, "by-epoch:toy_mach/long").strip().splitlines() == [
        "| test error (%) after epoch | " + " | ".join(map(str, shown)) + " |", "|" + "---|" * 7,
        *(f"| {name} | " + " | ".join(error(name, e) for e in shown) + " |" for name in "ab")]
    assert "(no epoch-budget runs logged under results/toy_mach/none-seed<k>/)" in block(bench, "by-epoch:toy_mach/none")
    every = (tree / "results" / "README.md").read_text()
    assert "| a | " + " | ".join(error("a", e) for e in range(1, 13)) + " |" in every
    assert every.count("test error (%) after epoch") == 1   # only the epoch-budget command has one


def test_first_group_is_main_without_defaults(tree):
    for folder in (tree / "results" / "toy_mach").glob("defaults-seed*"):
        shutil.rmtree(folder)
    readme = generate(tree)[0]
    text = block(readme, "results:toy_mach")
    # not the defaults: no "original settings" label
    assert line_with(text, ": seeds").startswith(f"{SHORT_COMMAND}: seeds 0, 10.0 s training in all")
    assert "| other command |" not in text  # the wide run has no headline row
    assert "(assets/toy_mach_baseline_s.png)" in text and "Original settings" not in readme


def test_one_figure_shown_the_others_copied(tree):
    text = block(generate(tree)[0], "results:toy_mach")
    assets = tree / "assets"
    assert sorted(p.name for p in assets.iterdir()) == [
        "toy_mach_baseline_s.png", "toy_mach_defaults_b.png", "toy_mach_defaults_curves.png"]
    # the lowest seed's file, not another seed's
    assert (assets / "toy_mach_defaults_curves.png").read_bytes() == b"defaults 0 curves.png"
    assert (assets / "toy_mach_baseline_s.png").read_bytes() == b"baseline 0 s.png"
    assert text.count("![") == 1 and "![toy_mach defaults: curves.png](assets/toy_mach_defaults_curves.png)" in text


def test_missing_block_is_one_line_and_writes_nothing(tree):
    (tree / "NOHEAD.md").write_text(README.replace("headline:begin", "other:begin"))
    with pytest.raises(cli.UserError, match="has no <!-- headline:begin --> ... <!-- headline:end -->"):
        generate(tree, readme="NOHEAD.md")
    (tree / "NOBENCH.md").write_text("# nothing\n")
    with pytest.raises(cli.UserError, match="NOBENCH.md has no <!-- benchmarks:begin -->"):
        generate(tree, bench="NOBENCH.md")
    # a script's block is only found to be missing its end after the headline was made
    (tree / "NOEND.md").write_text(README.replace("<!-- results:toy_mach:end -->", ""))
    with pytest.raises(cli.UserError, match="NOEND.md has no <!-- results:toy_mach:begin -->"):
        generate(tree, readme="NOEND.md")
    assert (tree / "README.md").read_text() == README and (tree / "BENCH.md").read_text() == BENCH
    assert (tree / "NOEND.md").read_text() == README.replace("<!-- results:toy_mach:end -->", "")
    assert not (tree / "assets").exists() and not (tree / "results" / "README.md").exists()
    result = subprocess.run([sys.executable, "benchmarks/make_results.py", "--results",
                             str(tree / "results"), "--readme", str(tree / "NOHEAD.md"),
                             "--benchmarks-readme", str(tree / "BENCH.md"), "--assets", str(tree / "assets")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "make_results.py: error:" in result.stderr and "headline:begin" in result.stderr
    assert not (tree / "assets").exists() and not (tree / "results" / "README.md").exists()


def test_running_twice_gives_the_same_files(tree):
    (tree / "results" / "benchmarks" / "b.json").write_text(json.dumps(
        {"benchmark": "b", "targets": [{"figure": "f", "value": 1.0, "target": ">= 1", "met": True}]}))
    first = generate(tree) + ((tree / "results" / "README.md").read_text(),)
    copies = {p.name: p.read_bytes() for p in (tree / "assets").iterdir()}
    assert generate(tree) + ((tree / "results" / "README.md").read_text(),) == first
    assert {p.name: p.read_bytes() for p in (tree / "assets").iterdir()} == copies
    assert first[0].count("<!-- results:toy_mach:begin -->") == 1 and "| b | f | 1.0 | >= 1 | met |" in first[1]


def test_targets_table_and_each_benchmarks_figures(tree):
    folder = tree / "results" / "benchmarks"
    (folder / "speed.json").write_text(json.dumps({
        "benchmark": "speed", "hardware": "test cpu", "torch": "9.9", "ratio": 12.3456789012,
        "nested": {"a": 1}, "targets": [
            {"figure": "speedup", "value": 12.5, "target": ">= 10x", "met": True},
            {"figure": "share", "value": 0.08, "target": "< 0.05", "met": False},
            {"figure": "gpu time", "value": None, "target": "<= 5 s", "met": None},
            {"figure": "plain ratio", "value": 3.2, "target": None, "met": None}]}))
    (folder / "steps.json").write_text(json.dumps({
        "benchmark": "steps", "rows": {"first": [{"script": "x", "ms": 1.5}],
                                       "second": [{"k": 1, "extra": "y"}, {"k": 2}]}}))
    text = block(generate(tree)[1], "benchmarks")
    assert "| speed | speedup | 12.5 | >= 10x | met |" in text
    assert "| speed | share | 0.08 | < 0.05 | **missed** |" in text
    assert "| speed | gpu time | - | <= 5 s | not measured |" in text
    assert "| speed | plain ratio | 3.2 | - | reported, no target |" in text
    assert "**speed** (test cpu, torch 9.9;" in text and "**steps** (hardware not recorded" in text
    assert "| ratio | 12.35 |" in text and "| nested.a | 1 |" in text  # flattened, no targets
    assert "| targets |" not in text and "| hardware |" not in text
    assert "*first*" in text and "| x | 1.5 |" in text
    assert "| k | extra |" in text and "| 2 |  |" in text  # a table of the rows' columns
    assert "stale" not in text


def test_strip_command_keeps_everything_but_seed_and_out():
    assert make_results.strip_command("a.py --seed 3 --lr 1 --out x/y --plot") == "python a.py --lr 1 --plot"
    assert make_results.strip_command("a.py --seed=3 --out=x") == "python a.py"


def test_the_readmes_are_what_make_results_makes_of_results(tmp_path):
    """No hand edit inside a generated block of README.md or benchmarks/README.md: regenerated
    from a copy of results/, both come out as they are. The README a newcomer reads first stays
    short (at most 530 lines: 450 before the K-devices section's two studies and the BatchNorm
    rows) and opens with the race's table, before any script's block."""
    shutil.copytree(ROOT / "results", tmp_path / "results")
    (tmp_path / "benchmarks").mkdir()
    for name in ("README.md", "benchmarks/README.md"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    make_results.main(["--results", str(tmp_path / "results"), "--readme", str(tmp_path / "README.md"),
                       "--benchmarks-readme", str(tmp_path / "benchmarks" / "README.md"),
                       "--assets", str(tmp_path / "assets")])
    for name in ("README.md", "benchmarks/README.md"):
        assert (tmp_path / name).read_text() == (ROOT / name).read_text(), f"{name}: run benchmarks/make_results.py"
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 530
    assert readme.index("<!-- headline:begin -->") < readme.index("<!-- results:")
    assert "| network | method |" in block(readme, "headline")


# The parallel race: per (method, seed) its seconds to 85 % and 87 % at the tuned factor (None: not
# reached), final accuracy, bubble and peak activations per rank. 1f1b takes backprop's factor
# (x1); dgl's grid on seed 0 picks x3 over x1 (x1 reaches nothing).
PARALLEL = {("backprop", 0): ({"0.85": 20.0, "0.87": 40.0}, 0.870, [0.001], [4.0]),
            ("backprop", 1): ({"0.85": 24.0, "0.87": None}, 0.866, [0.003], [4.0]),
            ("1f1b", 0): ({"0.85": 30.0, "0.87": 50.0}, 0.872, [0.20, 0.22], [2.0, 1.0]),
            ("1f1b", 1): ({"0.85": 34.0, "0.87": 54.0}, 0.874, [0.24, 0.20], [2.5, 1.0]),
            ("dgl", 0): ({"0.85": 10.0, "0.87": None}, 0.860, [0.02, 0.04], [3.0, 1.5]),
            ("dgl", 1): ({"0.85": 12.0, "0.87": None}, 0.862, [0.04, 0.06], [3.0, 1.5])}
PARALLEL_README = README + "<!-- parallel_race:begin -->\nstale race\n<!-- parallel_race:end -->\n"


def write_parallel_race(results):
    """parallel_race.json as parallel_race.py writes it: the cells (the tuning grid on seed 0 and
    the seeds at the tuned factor), and the rows its own summarise() makes of them."""
    from types import SimpleNamespace

    from benchmarks import parallel_race
    args = SimpleNamespace(networks=["mlp"], methods=["backprop", "1f1b", "dgl"], K=[2], microbatches=[2],
                           reference_threads=[1], factors=[1.0, 3.0], seeds=[0, 1], targets=[0.85, 0.87])
    configs = {"backprop": ("mlp", "backprop", 1, None, 1), "1f1b": ("mlp", "1f1b", 2, 2, 1),
               "dgl": ("mlp", "dgl", 2, None, 1)}
    tuned = {"backprop": 1.0, "1f1b": 1.0, "dgl": 3.0}
    cells = {}
    for (method, seed), (seconds, final, bubble, mib) in PARALLEL.items():
        network, _, K, M, threads = config = configs[method]
        runs = [(tuned[method], seconds, final)]
        if seed == 0 and method != "1f1b":  # the grid's other factor: worse
            runs.append((4.0 - tuned[method], dict.fromkeys(seconds) if method == "dgl" else
                         {"0.85": 90.0, "0.87": None}, 0.5))
        for factor, reached, accuracy in runs:
            cells[parallel_race.key(config, factor, seed)] = dict(
                network=network, method=method, K=K, microbatches=M, threads=threads, factor=factor,
                lr=1e-4 * factor, seed=seed, status="completed", steps=600, seconds=reached, final=accuracy,
                steps_per_second=10.0 + seed, bubble=bubble, cpu_seconds_per_step=[0.1] * len(bubble),
                peak_activations=[int(m * 2 ** 20) for m in mib], wall_seconds=99.0, command=f"run {method}",
                curve=[[0.0, 0.1], [5.0 * factor + seed, accuracy]])
    (results / "benchmarks" / "parallel_race.json").write_text(json.dumps({
        "benchmark": "parallel_race", "hardware": "test cpu", "torch": "9.9", "omp_wait_policy": "PASSIVE",
        "settings": {"dataset": "fashion-mnist", "targets": args.targets, "factors": args.factors,
                     "budgets": {"mlp": ["--steps", "600", "--eval-every", "100"]}},
        "cells": cells, "rows": parallel_race.summarise(args, cells)}))


def parallel_column(method, index, scale=1.0):
    return [scale * PARALLEL[method, seed][index] for seed in (0, 1)]


def test_parallel_race_block_shows_each_method_at_its_tuned_rate(tree, monkeypatch):
    write_parallel_race(tree / "results")
    (tree / "PR.md").write_text(PARALLEL_README)
    from common import plots
    drawn, plot_series = [], plots.plot_series
    monkeypatch.setattr(plots, "plot_series", lambda out, series, *a, **k: drawn.append(series)
                        or plot_series(out, series, *a, **k))
    readme, bench = generate(tree, readme="PR.md")
    text = block(readme, "parallel_race")
    assert "stale" not in text
    # the best synchronous method at K = 2 (the only one here) named once, in the header
    head = "mlp, K = 2, 600 steps"
    assert line_starting(text, f"| {head} |").startswith(
        f"| {head} | lr (× the network's) | s to 85 % (÷ best synchronous = 1f1b, M = 2, ÷ backprop on 1 thread) "
        "| s to 87 % (÷ best synchronous = 1f1b, M = 2, ÷ backprop on 1 thread) | final accuracy |")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in text.splitlines() if line.startswith("| "))}
    dgl, sync, bp = (dict(zip(rows[head], rows[m])) for m in ("dgl", "1f1b, M = 2", "backprop, 1 thread"))
    seconds = {m: {t: [PARALLEL[m, s][0][t] for s in (0, 1)] for t in ("0.85", "0.87")} for m in ("dgl", "1f1b")}
    to85, to87 = (f"s to {t} % (÷ best synchronous = 1f1b, M = 2, ÷ backprop on 1 thread)" for t in (85, 87))
    assert dgl["lr (× the network's)"] == "0.0003 (x3)" and sync["lr (× the network's)"] == "0.0001 (x1)"
    # ratios of the means: dgl's ÷ 1f1b's and ÷ backprop's (20 and 24 s)
    to_sync = statistics.fmean(seconds["dgl"]["0.85"]) / statistics.fmean(seconds["1f1b"]["0.85"])
    assert dgl[to85] == f"{mean_std(seconds['dgl']['0.85'], 1, ' s')} ({to_sync:.2f}x, {11 / 22:.2f}x)"
    assert dgl[to87] == "not reached within 600 steps (-, -)"
    assert bp[to87] == "40.0 s (reached on 1 of 2 seeds) (-, -)"
    assert sync[to87] == f"{mean_std(seconds['1f1b']['0.87'], 1, ' s')} (1.00x, -)"
    assert dgl["final accuracy"] == mean_std(parallel_column("dgl", 1, 100), 2, " %")
    assert dgl["bubble per rank"] == "3.00 % / 5.00 %" and sync["peak activations per rank"] == "2.5 MiB / 1.0 MiB"
    assert dgl["steps/s"] == "10.5" and dgl["seeds"] == "0, 1"
    # the figure: seed 0 at the tuned factor, a line per K = 2 method and 1-thread backprop
    assert (tree / "assets" / "parallel_race_k2.png").stat().st_size > 0
    assert ("![test accuracy against training seconds (the slowest rank's clock), mlp, K = 2, seed 0, each method "
            "at its tuned rate](assets/parallel_race_k2.png)") in text
    assert drawn == [{"backprop, 1 thread": ([0.0, 5.0], [0.1, 0.87]), "1f1b, M = 2": ([0.0, 5.0], [0.1, 0.872]),
                      "dgl": ([0.0, 15.0], [0.1, 0.86])}]
    # the findings, from the rows
    assert line_starting(text, "- At 85 %") == (
        "- At 85 %, K = 2: dgl first, 11.0 s (mean of 2 seeds), 0.34x the best synchronous method "
        "(1f1b, M = 2, 32.0 s) and 0.50x one-process backprop on 1 thread (22.0 s).")
    assert line_starting(text, "- At 87 %") == (
        "- At 87 %, K = 2: 1f1b, M = 2 first, 52.0 s (mean of 2 seeds), the best synchronous method. "
        "Not reached within 600 steps: backprop, 1 thread (1 of 2 seeds); dgl.")
    caption = line_starting(text, "Seconds: ")
    assert "fashion-mnist, test cpu, torch 9.9, OMP_WAIT_POLICY=PASSIVE" in caption
    assert "over x1, x3 of the network's rate" in caption and "`python benchmarks/parallel_race.py`" in caption
    # benchmarks/README.md: the same table, not the rows' per-seed lists and commands
    assert line_starting(bench, "| dgl |") == line_starting(text, "| dgl |")
    assert "run dgl" not in bench and "[[" not in bench and '{"0.85"' not in bench


def test_parallel_race_without_its_json(tree):
    # a README without the block: an error once the race has run (nothing written), fine before
    write_parallel_race(tree / "results")
    with pytest.raises(cli.UserError, match="README.md has no <!-- parallel_race:begin -->"):
        generate(tree)
    assert (tree / "README.md").read_text() == README and not (tree / "assets").exists()
    (tree / "results" / "benchmarks" / "parallel_race.json").unlink()
    assert "parallel_race" not in generate(tree)[0]
    (tree / "PR.md").write_text(PARALLEL_README)
    assert block(generate(tree, readme="PR.md")[0], "parallel_race").strip() == (
        "(no parallel race yet: python benchmarks/parallel_race.py)")
    assert not (tree / "assets" / "parallel_race_k2.png").exists()


def virtual_row(method, K, latency, seconds, M=None):
    """A row of parallel_virtual.py's: seed 0's seconds to 85 % and 87 % (None: not reached)."""
    return dict(network="mlp", method=method, K=K, latency_ms=latency, bandwidth_gbit=10.0, backend="virtual",
                lr=1e-4, steps=1200, microbatches=M, seconds_per_step=0.01 * K, bubble=[0.1, 0.2], seeds=[0],
                seconds={t: [s] for t, s in zip(("0.85", "0.87"), seconds)},
                mean_seconds=dict(zip(("0.85", "0.87"), seconds)), final=[0.86], wall_seconds=1.0)


def test_parallel_virtual_block_says_who_is_first_in_each_cell(tree):
    """The virtual study's block: one sentence per K on the K sweep's link, first decoupled
    method against the first synchronous one, from the rows; its figures drawn; its table and
    every cell's sentence in benchmarks/README.md."""
    write_parallel_race(tree / "results")
    path = tree / "results" / "benchmarks" / "parallel_race.json"
    data = json.loads(path.read_text())
    data["virtual"] = dict(settings=dict(grid="test grid", eval_every=100, eval_size=10000, prices="measured",
                                         dataset="fashion-mnist"),
                           rows=[virtual_row("1f1b", 2, 1.0, (30.0, 60.0), 4), virtual_row("dgl", 2, 1.0, (10.0, None)),
                                 virtual_row("ddp", 8, 1.0, (80.0, 160.0)), virtual_row("1f1b", 8, 1.0, (50.0, 100.0), 8),
                                 virtual_row("dgl", 8, 1.0, (12.0, None)), virtual_row("predsim", 8, 1.0, (20.0, 90.0)),
                                 virtual_row("1f1b", 8, 50.0, (70.0, 140.0), 16), virtual_row("dgl", 8, 50.0, (None, None))])
    path.write_text(json.dumps(data))
    (tree / "PR.md").write_text(PARALLEL_README + "<!-- parallel_virtual:begin -->\n<!-- parallel_virtual:end -->\n")
    readme, bench = generate(tree, readme="PR.md")
    text = block(readme, "parallel_virtual")
    assert line_starting(text, "- K = 8, 1 ms") == (
        "- K = 8, 1 ms, 10 Gbit/s: 85 %: dgl in 12.0 s, 1f1b (M = 8) in 50.0 s (0.24x); "
        "87 %: predsim in 90.0 s, 1f1b (M = 8) in 100.0 s (0.90x).")
    assert "- K = 8, 50 ms" not in text  # off the K sweep's link: benchmarks/README.md says it
    assert line_starting(bench, "- K = 8, 50 ms") == (
        "- K = 8, 50 ms, 10 Gbit/s: 85 %: no decoupled method; 1f1b (M = 16) in 70.0 s; "
        "87 %: no decoupled method; 1f1b (M = 16) in 140.0 s.")
    assert line_starting(text, "Every cell's sentence (the latency sweep at K = 8 too)")
    assert line_starting(text, "- K = 2") == "- K = 2, 1 ms, 10 Gbit/s: 85 %: dgl in 10.0 s, 1f1b (M = 4) in 30.0 s " \
        "(0.33x); 87 %: no decoupled method; 1f1b (M = 4) in 60.0 s."
    for name in ("k", "latency", "first85", "first87"):
        assert (tree / "assets" / f"parallel_virtual_{name}.png").stat().st_size > 0
        assert f"(assets/parallel_virtual_{name}.png)" in text
    assert line_starting(bench, "| 8 | 1 ms, 10 Gbit/s | predsim |") == (
        "| 8 | 1 ms, 10 Gbit/s | predsim | 80.0 | 20 % | 20.0 | 90.0 | 1200 | 86.00 | 0 |")
