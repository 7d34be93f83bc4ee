"""The results generator renders what fake run folders and benchmark JSON declare,
and nothing else: every expected figure below is computed here from the inputs."""
import json
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
SEEDS = {0: (88.1, 86.1, 80.0, 3.0, 1.0), 1: (88.3, 85.9, 82.0, 6.0, 2.0), 2: (87.6, 86.5, 81.0, None, 2.0)}


def write_run(results, label, seed, teacher, student, train, tta=None, figures=("curves.png", "b.png"),
              extra=""):
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
                    "headline": True},
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
    """Three seeds of the defaults between two other commands' runs, a script, two READMEs."""
    results = tmp_path / "results"
    for seed, (teacher, student, train, seconds, base) in SEEDS.items():
        write_run(results, "defaults", seed, teacher, student, train, tta=(seconds, base))
    write_run(results, "baseline", 0, 50.0, 40.0, 10.0, extra=" --iterations 100", figures=("s.png",))
    write_run(results, "wide", 0, 60.0, 55.0, 20.0, extra=" --width 2", figures=())
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


def mean_std(values, digits, unit):
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}{unit}"


def block(text, name):
    return text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]


def test_headline_row_sums_up_the_defaults_group(tree):
    text = block(generate(tree)[0], "headline")
    row = line_with(text, "toy_mach.py")
    teachers = [v[0] for v in SEEDS.values()]
    students = [v[1] for v in SEEDS.values()]
    assert "| a toy idea, over two lines. |" in row  # the docstring's first paragraph, no name
    assert f"student test accuracy {mean_std(students, 2, ' %')}" in row  # headline=True
    # the baseline's row of the same metric stands beside it; rows of other metrics do not
    assert f"teacher (baseline) test accuracy {mean_std(teachers, 2, ' %')}" in row
    assert "own training seconds" not in row  # nor the other commands' numbers
    assert "50.00" not in row and "60.00" not in row and "55.00" not in row
    assert f"| {statistics.fmean(v[2] for v in SEEDS.values()):.1f} s |" in row
    assert "| 0, 1, 2 |" in row and "| test cpu |" in row
    # time to target: seed 2 never reached it, so the ratio is over seeds 0 and 1 (3/1 and 6/2)
    assert "student: 3.00 ± 0.00x (2 of 3) teacher's" in row
    assert "95 %" in text and "stale" not in text


def test_script_table_gives_every_declared_row_per_command(tree):
    readme = generate(tree)[0]
    text = block(readme, "results:toy_mach")
    teachers = [v[0] for v in SEEDS.values()]
    first = line_with(text, "`python toy_mach.py --dataset fashion-mnist`", "test accuracy")
    trains = [v[2] for v in SEEDS.values()]
    assert f"| 0, 1, 2 | teacher | test accuracy | {mean_std(teachers, 2, ' %')} |" in first
    assert f"| {statistics.fmean(trains):.1f} | {statistics.fmean(t + 2 for t in trains):.1f} |" in first
    assert first.endswith("| 97.87 % on MNIST (original) |")
    assert f"| student | own training seconds | {mean_std([t / 2 for t in trains], 1, ' s')} |" in text
    short = line_with(text, "`python toy_mach.py --dataset fashion-mnist --iterations 100`")
    assert "| 0 | teacher | test accuracy | 50.00 % | 10.0 | 12.0 |" in short  # one seed: no ±
    assert text.count("test cpu") == 1  # hardware once, under the table
    tta = line_with(text, "student vs teacher")
    assert f"| {mean_std([3.0, 6.0], 1, ' s')} | {mean_std([1.0, 2.0, 2.0], 1, ' s')} |" in tta
    assert "| 3.00 ± 0.00x | 2 of 3 |" in tta
    assert "stale" not in readme and "text kept" in readme


def test_one_figure_shown_the_others_copied(tree):
    text = block(generate(tree)[0], "results:toy_mach")
    assets = tree / "assets"
    assert sorted(p.name for p in assets.iterdir()) == [
        "toy_mach_baseline_s.png", "toy_mach_defaults_b.png", "toy_mach_defaults_curves.png"]
    # the lowest seed's file, not another seed's
    assert (assets / "toy_mach_defaults_curves.png").read_bytes() == b"defaults 0 curves.png"
    assert text.count("![") == 1 and "(assets/toy_mach_defaults_curves.png)" in text


def test_missing_block_is_one_line_and_writes_nothing(tree):
    (tree / "NOHEAD.md").write_text(README.replace("headline:begin", "other:begin"))
    with pytest.raises(cli.UserError, match="has no <!-- headline:begin --> ... <!-- headline:end -->"):
        generate(tree, readme="NOHEAD.md")
    (tree / "NOBENCH.md").write_text("# nothing\n")
    with pytest.raises(cli.UserError, match="NOBENCH.md has no <!-- benchmarks:begin -->"):
        generate(tree, bench="NOBENCH.md")
    assert (tree / "README.md").read_text() == README and not (tree / "assets").exists()
    result = subprocess.run([sys.executable, "benchmarks/make_results.py", "--results",
                             str(tree / "results"), "--readme", str(tree / "NOHEAD.md"),
                             "--benchmarks-readme", str(tree / "BENCH.md")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "make_results.py: error:" in result.stderr


def test_running_twice_gives_the_same_files(tree):
    (tree / "results" / "benchmarks" / "b.json").write_text(json.dumps(
        {"benchmark": "b", "targets": [{"figure": "f", "value": 1.0, "target": ">= 1", "met": True}]}))
    first = generate(tree)
    copies = {p.name: p.read_bytes() for p in (tree / "assets").iterdir()}
    assert generate(tree) == first
    assert {p.name: p.read_bytes() for p in (tree / "assets").iterdir()} == copies


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
