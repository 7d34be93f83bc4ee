"""The results generator turns fixture run folders into the README's tables."""
import json
import statistics

import pytest

from benchmarks import make_results

README = """# x
<!-- results:begin -->
old
<!-- results:end -->
text kept
<!-- benchmarks:begin -->
<!-- benchmarks:end -->
"""


def write_run(folder, seed, teacher, student, seconds, command_extra=""):
    folder.mkdir(parents=True)
    command = f"single_mach.py --dataset fashion-mnist{command_extra} --seed {seed} --out {folder}"
    (folder / "config.json").write_text(json.dumps({"command": command}))
    (folder / "summary.json").write_text(json.dumps({
        "script": "single_mach", "dataset": "fashion-mnist", "seed": seed, "device": "cpu",
        "hardware": "test cpu", "iterations": 100, "train_seconds": seconds,
        "status": "completed", "test_accuracy": {"teacher": teacher, "student": student}}))
    (folder / "metrics.csv").write_text(
        "iteration,epoch,seconds,train_seconds,acc/teacher,acc/student\n"
        f"50,0.1,1.0,{seconds / 2},{teacher - 0.1},{student - 0.1}\n"
        f"100,0.2,2.0,{seconds},{teacher},{student}\n")


def test_tables_match_the_runs(tmp_path):
    results = tmp_path / "results"
    values = [(0, 0.881, 0.861, 80.0), (1, 0.883, 0.859, 82.0), (2, 0.876, 0.865, 81.0)]
    for seed, teacher, student, seconds in values:
        write_run(results / "single_mach" / f"seed{seed}", seed, teacher, student, seconds)
    write_run(results / "single_mach" / "other", 0, 0.5, 0.4, 10.0, " --iterations 100")
    (results / "benchmarks").mkdir()
    (results / "benchmarks" / "data_path.json").write_text(json.dumps(
        {"benchmark": "data_path", "hardware": "test cpu", "torch": "x", "speedup": 42.5}))
    readme = tmp_path / "README.md"
    readme.write_text(README)

    make_results.main(["--results", str(results), "--readme", str(readme),
                       "--assets", str(tmp_path / "assets")])
    text = readme.read_text()

    teachers = [100 * v[1] for v in values]
    expected = f"{statistics.fmean(teachers):.2f} ± {statistics.stdev(teachers):.2f} %"
    row = next(l for l in text.splitlines() if "`python single_mach.py --dataset fashion-mnist`" in l)
    assert "| 0, 1, 2 |" in row and expected in row and "| 81.0 |" in row and "test cpu" in row
    assert "97.87 %" in row  # the original's number stands beside ours
    students = [100 * v[2] for v in values]
    assert f"{statistics.fmean(students):.2f} ± {statistics.stdev(students):.2f} %" in text
    assert "`python single_mach.py --dataset fashion-mnist --iterations 100`" in text
    assert "| 50.00 % |" in text  # the one-seed group has no ± part
    assert "old" not in text and "text kept" in text
    assert "| speedup | 42.5 |" in text
    assert (tmp_path / "assets" / "single_mach_curves.png").stat().st_size > 10_000


def test_missing_markers_is_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    (tmp_path / "results").mkdir()
    with pytest.raises(SystemExit, match="no <!-- results:begin -->"):
        make_results.main(["--results", str(tmp_path / "results"), "--readme", str(readme),
                           "--assets", str(tmp_path)])


def test_strip_command_keeps_everything_but_seed_and_out():
    assert make_results.strip_command("a.py --seed 3 --lr 1 --out x/y --plot") == \
        "python a.py --lr 1 --plot"


def test_time_to_accuracy_rows_match_the_curves(tmp_path):
    """Student reaches 95 % of the teacher's final accuracy later than the teacher: 3 s vs 1 s, 6 s vs 2 s."""
    results = tmp_path / "results"
    for seed, scale in ((0, 1.0), (1, 2.0)):
        folder = results / "single_mach" / f"defaults-seed{seed}"
        write_run(folder, seed, 0.9, 0.88, 3 * scale)
        (folder / "metrics.csv").write_text(
            "iteration,epoch,seconds,train_seconds,acc/teacher,acc/student\n"
            f"0,0,0,0,0.1,0.1\n"
            f"10,0.1,1,{1 * scale},0.86,0.5\n"      # teacher 0.86 >= 0.95 * 0.9 = 0.855
            f"20,0.2,2,{2 * scale},0.88,0.85\n"     # student 0.85 still under
            f"30,0.3,3,{3 * scale},0.9,0.88\n")     # student reaches
    readme = tmp_path / "README.md"
    readme.write_text(README)
    make_results.main(["--results", str(results), "--readme", str(readme),
                       "--assets", str(tmp_path / "assets")])
    row = next(l for l in readme.read_text().splitlines() if "student vs teacher" in l)
    # student 3 s and 6 s, teacher 1 s and 2 s: ratio 3.00 in both seeds
    assert "| 0, 1 |" in row
    assert f"{statistics.fmean([3, 6]):.1f} ± {statistics.stdev([3, 6]):.1f} s" in row
    assert f"{statistics.fmean([1, 2]):.1f} ± {statistics.stdev([1, 2]):.1f} s" in row
    assert "3.00 ± 0.00x" in row and "2 of 2" in row
