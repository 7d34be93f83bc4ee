"""The results generator renders what fake run folders and benchmark JSON declare,
and nothing else: every expected figure below is computed here from the inputs."""
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


def write_run(results, label, seed, teacher, student, train, tta=None, figures=("curves.png", "b.png"),
              extra="", headline=True):
    """A run folder as Run.finish writes it: config, summary with declared rows, figures."""
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
    (folder / "summary.json").write_text(json.dumps(summary))
    for name in figures:
        (folder / name).write_bytes(f"{label} {seed} {name}".encode())
    (folder / "undeclared.png").write_bytes(b"not declared")
    return folder


@pytest.fixture
def tree(tmp_path):
    """Three seeds of the defaults, sorted between two other commands' single runs (each with a
    time to target; the wide one's student is no headline row), a script, two READMEs."""
    results = tmp_path / "results"
    for seed, (teacher, student, train, seconds, base) in SEEDS.items():
        write_run(results, "defaults", seed, teacher, student, train, tta=(seconds, base))
    write_run(results, "baseline", 0, 50.0, 40.0, 10.0, tta=(8.0, 2.0), extra=" --iterations 100",
              figures=("s.png",))
    write_run(results, "wide", 0, 60.0, 55.0, 20.0, tta=(None, 2.0), extra=" --width 2", figures=(),
              headline=False)
    (tmp_path / "toy_mach.py").write_text('"""toy_mach.py: a toy idea,\nover two lines.\n\nMore."""\n')
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "BENCH.md").write_text(BENCH)
    (results / "benchmarks").mkdir()
    return tmp_path


def generate(tree, readme="README.md", bench="BENCH.md"):
    make_results.main(["--results", str(tree / "results"), "--readme", str(tree / readme),
                       "--benchmarks-readme", str(tree / bench), "--assets", str(tree / "assets"),
                       "--scripts", str(tree)])
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


def test_headline_row_sums_up_the_main_group(tree):
    text = block(generate(tree)[0], "headline")
    row = line_with(text, "toy_mach.py")
    assert "| a toy idea, over two lines. |" in row  # the docstring's first paragraph, no name
    assert f"student test accuracy {mean_std(column(1), 2, ' %')}" in row  # headline=True
    # the baseline's row of the same metric stands beside it; rows of other metrics do not
    assert f"teacher (baseline) test accuracy {mean_std(column(0), 2, ' %')}" in row
    assert "own training seconds" not in row  # nor the other commands' accuracies
    assert "50.00" not in row and "40.00" not in row and "55.00" not in row
    assert f"| {statistics.fmean(column(2)):.1f} s |" in row
    assert "| 0, 1, 2 | test cpu |" in row
    # time to target: the mean of each seed's ratio (3/1 and 5/2; seed 2 never reached it),
    # not the ratio of the means (4/1.5), then the other commands' pairs whose method is a
    # headline row there: the 100-iteration run's 8/2, not the wide run's (no headline row)
    ratios = [3.0 / 1.0, 5.0 / 2.0]
    assert row.endswith(f"| student: {mean_std(ratios, 2, 'x')} (2 of 3) teacher's<br>student: 4.00x teacher's |")
    assert "not reached" not in row
    assert "95 % of its baseline's final accuracy" in text and "stale" not in text


def test_readme_shows_the_main_groups_table_and_the_others_time_to_target(tree):
    readme = generate(tree)[0]
    text = block(readme, "results:toy_mach")
    trains = column(2)
    assert line_with(text, ": seeds") == (f"{MAIN_COMMAND}: seeds 0, 1, 2, {statistics.fmean(trains):.1f} s "
                                        f"training, {statistics.fmean(t + 2 for t in trains):.1f} s wall (mean)")
    # a row per declared name, a column per metric, then time to target and the original
    assert "|  | test accuracy | own training seconds | s to target | ÷ baseline's | original / paper |" in text
    teacher = line_with(text, "| teacher |")
    assert teacher == (f"| teacher | {mean_std(column(0), 2, ' %')} |  | {mean_std([1.0, 2.0, 2.0], 1, ' s')} |"
                       "  | 97.87 % on MNIST (original) |")
    student = line_starting(text, "| student |")
    assert student == (f"| student | {mean_std(column(1), 2, ' %')} | {mean_std([t / 2 for t in trains], 1, ' s')}"
                       f" | {mean_std([3.0, 5.0], 1, ' s')} (2 of 3) | {mean_std([3.0, 2.5], 2, 'x')} |  |")
    # only the main command's table: the others are in results/README.md
    assert SHORT_COMMAND + ":" not in text and WIDE_COMMAND + ":" not in text
    assert "50.00" not in text and "60.00" not in text
    assert "[results/README.md](results/README.md#toy_mach)" in text
    # ... but their headline rows and those rows' times to target are, in a small table
    assert "The other commands' headline figures:" in text and "| command |  |  | mean ± std |" in text
    assert f"| {SHORT_COMMAND} | student | test accuracy | 40.00 % |" in text
    assert "|  | student vs teacher | s to 95 % of teacher's final | 8.0 s vs 2.0 s = 4.00x |" in text
    assert WIDE_COMMAND not in text  # its student is no headline row: nothing of it to show
    assert text.count("test cpu") == 1  # hardware once, under the tables
    assert "stale" not in readme and "text kept" in readme


def test_results_readme_holds_every_groups_table(tree):
    readme = generate(tree)[0]
    text = (tree / "results" / "README.md").read_text()
    assert text.startswith("# Every logged run, by script\n") and "\n## toy_mach\n" in text
    # every command, in the order of its run folders, each with its own table
    commands = [line.split(":")[0] for line in text.splitlines() if line.startswith("`python")]
    assert commands == [SHORT_COMMAND, MAIN_COMMAND, WIDE_COMMAND]
    assert "| teacher | 50.00 % |  | 2.0 s |  | 97.87 % on MNIST (original) |" in text  # one seed: no ±
    assert "| student | 40.00 % | 5.0 s | 8.0 s | 4.00x |  |" in text
    assert "| student | 55.00 % | 10.0 s | not reached (0 of 1) | - |  |" in text
    # the main command's table is the README's, line for line
    main_table = block(readme, "results:toy_mach").split("\n\nThe other commands")[0].strip()
    assert main_table in text
    assert text.count("Hardware: test cpu.") == 1 and "![" not in text and "stale" not in text


def test_first_group_is_main_without_defaults(tree):
    for folder in (tree / "results" / "toy_mach").glob("defaults-seed*"):
        shutil.rmtree(folder)
    readme = generate(tree)[0]
    text = block(readme, "results:toy_mach")
    assert line_with(text, ": seeds").startswith(f"{SHORT_COMMAND}: seeds 0, 10.0 s training")
    assert "The other commands' headline figures" not in text  # the wide run has no headline row
    assert "(assets/toy_mach_baseline_s.png)" in text
    row = line_with(block(readme, "headline"), "toy_mach.py")
    assert "student test accuracy 40.00 %" in row and "teacher (baseline) test accuracy 50.00 %" in row


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
