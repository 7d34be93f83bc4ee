"""Every figure the scripts draw, with matplotlib on a headless backend.

    python -m common.plots RUN_DIR [RUN_DIR ...] --out compare.png

overlays the test-accuracy curves of several runs (one line per run and
component), against iteration and against training seconds. The scripts
call `plot_run` (curves.png of a run folder), `plot_series` (any lines
against a clock; `series_by` groups logged rows into such lines; `plot_panels`
such lines in panels), `plot_map` (a table of labels, coloured by label),
`plot_images` (a grid of pictures) and `plot_surfaces` (a target function
of two variables beside snapshots of learned ones).
"""
import argparse
import csv
import json
from pathlib import Path

import matplotlib
import torch

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


def _save(fig, out, dpi):
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _label(axis, xlabel, ylabel, legend=True):
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if legend and axis.lines:
        axis.legend(fontsize=8)


def curves(metrics, clocks=None):
    """{name: (iterations, seconds, accuracies)}: each acc/<name> column of a run's metrics
    against its own clock, the column clocks[name] (a run's summary.json "clock_columns"),
    else sec/<name>, else the run's training seconds. Rows where a method was not measured
    are skipped, not drawn as breaks."""
    clocks, lines = clocks or {}, {}
    for column in metrics:
        if column.startswith("acc/"):
            name = column[4:]
            clock = metrics.get(clocks.get(name, f"sec/{name}"), metrics["train_seconds"])
            points = [(i, t, a) for i, t, a in zip(metrics["iteration"], clock, metrics[column])
                      if a == a]
            lines[name] = tuple(map(list, zip(*points))) if points else ([], [], [])
    return lines


def draw(runs, out, title=None):
    """runs: [(label, metrics dict, clocks or None)]. Two panels: accuracy against iteration
    and against each method's own training seconds (`curves`)."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, metrics, clocks in runs:
        for name, (steps, seconds, accuracy) in curves(metrics, clocks).items():
            style = {"label": f"{label} {name}".strip(), "marker": "o" if len(steps) < 30 else None}
            by_step.plot(steps, accuracy, **style)   # a single evaluation shows as its point
            by_time.plot(seconds, accuracy, **style)
    _label(by_step, "iteration", "test accuracy", legend=False)
    _label(by_time, "training seconds (each method's own clock)", "test accuracy")
    if title:
        fig.suptitle(title)
    return _save(fig, out, dpi=120)


def clocks_of(run_dir):
    """The run's {method: clock column}, from its summary.json (None if it has none)."""
    summary = Path(run_dir) / "summary.json"
    return json.loads(summary.read_text()).get("clock_columns") if summary.is_file() else None


def plot_run(run_dir, title=None, clocks=None):
    """curves.png in the run folder; clocks: {method: clock column}, default the summary's."""
    run_dir = Path(run_dir)
    return draw([("", read_metrics(run_dir), clocks or clocks_of(run_dir))], run_dir / "curves.png",
                title or run_dir.name)


def plot_series(out, series, xlabel, ylabel, logy=False, title=None, ylow=None):
    """One line per label: series = {label: (xs, ys)}; ylow: the y axis starts there."""
    fig, axis = plt.subplots(figsize=(8, 5))
    for label, (xs, ys) in series.items():
        if len(xs):
            axis.plot(xs, ys, marker="." if len(xs) < 60 else None, label=label)
    if logy:
        axis.set_yscale("log")
    if ylow is not None:
        axis.set_ylim(bottom=ylow)
    _label(axis, xlabel, ylabel)
    if title:
        axis.set_title(title)
    return _save(fig, out, dpi=120)


def plot_panels(out, panels, xlabel, ylabel, logx=False, logy=False, title=None):
    """plot_series' lines in panels side by side: panels = {panel title: {label: (xs, ys)}};
    a None in ys is a gap (the line is not drawn there)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for axis, (name, series) in zip(axes[0], panels.items()):
        for label, (xs, ys) in series.items():
            ys = [float("nan") if y is None else y for y in ys]
            axis.plot(xs, ys, marker="o", label=label)
        axis.set_xscale("log" if logx else "linear")
        axis.set_yscale("log" if logy else "linear")
        if logx:   # the xs themselves as ticks: K = 2, 4, 8, 16, not powers of ten
            ticks = sorted({x for xs, _ in series.values() for x in xs})
            axis.set_xticks(ticks, [f"{x:g}" for x in ticks])
            axis.minorticks_off()
        axis.set_title(name, fontsize=10)
        _label(axis, xlabel, ylabel)
    if title:
        fig.suptitle(title)
    return _save(fig, out, dpi=110)


def plot_map(out, rows, columns, cells, title=None):
    """A table of labels as a picture: cells[(row, column)] = label (missing: blank); one
    colour per distinct label."""
    labels = sorted(set(cells.values()))
    grid = [[labels.index(cells[r, c]) if (r, c) in cells else float("nan") for c in columns] for r in rows]
    fig, axis = plt.subplots(figsize=(1.3 * len(columns) + 2, 0.6 * len(rows) + 1.5))
    axis.imshow(grid, cmap="tab10", vmin=0, vmax=9, aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            axis.text(j, i, cells.get((r, c), ""), ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    if title:
        axis.set_title(title, fontsize=10)
    return _save(fig, out, dpi=110)


def series_by(rows, key, x, y):
    """Logged rows (dicts) as plot_series' {value of `key`: (xs, ys)}: one line per value."""
    series = {}
    for row in rows:
        if row.get(key) is not None:
            xs, ys = series.setdefault(row[key], ([], []))
            xs.append(row[x])
            ys.append(row[y])
    return series


def series_columns(rows, x, prefix):
    """Every column named prefix + label as plot_series' {label: (xs, ys)}, skipping empty cells."""
    series = {}
    for row in rows:
        for column, value in row.items():
            if column.startswith(prefix) and value is not None and value != "":
                xs, ys = series.setdefault(column[len(prefix):], ([], []))
                xs.append(row[x])
                ys.append(value)
    return series


def plot_images(out, grid, extent=(-1, 1, -1, 1), vmin=-1, vmax=1):
    """A grid of pictures: grid = [[(title, 2-D array), ...], ...], one list per row."""
    columns = max(len(row) for row in grid)
    fig, axes = plt.subplots(len(grid), columns, figsize=(3 * columns, 3 * len(grid)), squeeze=False)
    for axis_row, row in zip(axes, grid):
        for axis, (title, image) in zip(axis_row, row):
            axis.imshow(image, extent=extent, origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
            axis.set_title(title)
        for axis in axis_row:
            axis.set_xticks([])
            axis.set_yticks([])
    return _save(fig, out, dpi=90)


@torch.no_grad()
def plot_surfaces(out, target, snapshots, moments=4, resolution=121):
    """Functions on [-1, 1]^2 as pictures, one row per label: the target beside the label's
    snapshots at `moments` evenly spaced points of its list. snapshots = {label: [(seconds, fn),
    ...]}; target and each fn map (N, 2) points to N values (a function or a module)."""
    ticks = torch.linspace(-1, 1, resolution)
    points = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(-1, 2)

    def picture(fn):
        return fn(points).reshape(resolution, resolution).numpy()

    grid = []
    for label, history in snapshots.items():
        last = len(history) - 1
        picks = sorted({round(i * last / (moments - 1)) for i in range(moments)}) if history else []
        grid.append([("target", picture(target))]
                    + [(f"{label}, {history[i][0]:.1f} s", picture(history[i][1])) for i in picks])
    return plot_images(out, grid)


def draw_race(folder, curves, xlabel, note=""):
    """loss_vs_time.png and accuracy_vs_time.png: each RaceCurve's points against its
    own clock; `note` says what the points were measured on."""
    for column, what, filename, logy in ((1, "test loss", "loss_vs_time.png", True),
                                         (2, "test accuracy", "accuracy_vs_time.png", False)):
        series = {c.name: ([p[0] for p in c.points], [p[column] for p in c.points])
                  for c in curves}
        plot_series(Path(folder) / filename, series, xlabel, f"{what}{note}", logy=logy)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.csv")
    parser.add_argument("--out", default="compare.png", help="PNG file to write")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        if not (Path(run) / "metrics.csv").is_file():
            parser.error(f"{run}: no metrics.csv there; pass run folders written by the scripts")
        runs.append((Path(run).name, read_metrics(run), clocks_of(run)))
    print(draw(runs, args.out))


if __name__ == "__main__":
    main()
