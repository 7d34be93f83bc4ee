"""Curves from run folders, drawn with matplotlib on a headless backend.

    python -m common.plots RUN_DIR [RUN_DIR ...] --out compare.png

overlays the test-accuracy curves of several runs (one line per run and
component), against iteration and against training seconds.
"""
import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir):
    """metrics.csv as {column: [float, ...]} (empty cells become NaN)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {c: [float(r[c]) if r[c] not in ("", None) else float("nan") for r in rows]
            for c in columns if _numeric(rows, c)}


def _numeric(rows, column):
    try:
        [float(r[column]) for r in rows if r[column] not in ("", None)]
        return True
    except ValueError:
        return False


def draw(runs, out, title=None):
    """runs: [(label, metrics dict)]. Two panels: accuracy vs iteration and vs seconds."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, metrics in runs:
        for column in metrics:
            if not column.startswith("acc/"):
                continue
            name = f"{label} {column[4:]}".strip()
            by_step.plot(metrics["iteration"], metrics[column], label=name)
            by_time.plot(metrics["train_seconds"], metrics[column], label=name)
    for axis, xlabel in ((by_step, "iteration"), (by_time, "training seconds")):
        axis.set_xlabel(xlabel)
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run(run_dir):
    """curves.png in the run folder."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    title = run_dir.name
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        title = f"{s['script']} on {s['dataset']}, seed {s['seed']}, {s['device']}"
    return draw([("", read_metrics(run_dir))], run_dir / "curves.png", title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.csv")
    parser.add_argument("--out", default="compare.png", help="PNG file to write")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        if not (Path(run) / "metrics.csv").is_file():
            parser.error(f"{run}: no metrics.csv there; pass run folders written by the scripts")
        runs.append((Path(run).name, read_metrics(run)))
    print(draw(runs, args.out))


if __name__ == "__main__":
    main()
